"""Training recipes: the papers' hyper-parameters as TOML files in vitgraph/recipes/, resolved
into a typed Recipe with command-line overrides.

    recipe = load_recipe("small-datasets", {"lr": "3e-4", "epochs": "5"})
    recipe.lr, recipe.effective_lr, recipe.spec   # spec: parameters the recipe sets on the spec

A recipe file holds flat `key = value` pairs (the fields of Recipe), an optional
`extends = "other"` (the other file's values first, then these), and an optional `[spec]`
table of spec parameters (e.g. drop_path) applied when the spec declares them; `--set` on the
command line wins over them. Every field can be overridden as `key=value`; `spec.NAME=value`
overrides a [spec] entry. A path ending in .toml names a recipe file outside the package.
Every value is checked when the recipe is resolved, before any data is read: a choice must be
one of its words, a number finite and inside its range (RANGES), or one message says which
key, which value and what is allowed.

Files: augreg (base) + none, light1, light2, medium1, medium2, strong1, strong2 (Steiner et al.
2021); deit (Touvron et al. 2020); small-datasets (Lee et al. 2021, SPT/LSA); binaryvit (Le & Li
2023); digits (this project's CPU default for the embedded digits).
"""
from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from ..diagnostics import UserError, suggestion

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"

CHOICES: dict[str, tuple[str, ...]] = {
    "optimizer": ("adamw", "sgd"),
    "schedule": ("cosine", "constant"),
    "loss": ("softmax", "sigmoid"),
    "distill": ("none", "soft", "hard", "kd"),
    "crop": ("pad", "rrc", "none"),
    "randaug_variant": ("augreg", "timm"),
    "autoaugment": ("", "auto", "cifar10", "svhn", "imagenet"),
    "erase_mode": ("pixel", "const"),
}


@dataclass(frozen=True)
class Range:
    """The finite numbers from `low` to `high`, each end included unless marked open."""

    low: float
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self, key: str) -> str:
        """'epochs >= 1', '0 <= momentum < 1', '0 < eval_crop_pct <= 1'."""
        low_op = "<" if self.low_open else "<="
        if self.high == math.inf:
            return f"{key} {'>' if self.low_open else '>='} {self.low:g}"
        return f"{self.low:g} {low_op} {key} {'<' if self.high_open else '<='} {self.high:g}"


AT_LEAST_ONE, POSITIVE, NON_NEGATIVE = Range(1), Range(0, low_open=True), Range(0)
PROBABILITY, BELOW_ONE, FRACTION = Range(0, 1), Range(0, 1, high_open=True), Range(0, 1, low_open=True)
RANGES: dict[str, Range] = {
    "epochs": AT_LEAST_ONE, "batch_size": AT_LEAST_ONE, "repeats": AT_LEAST_ONE,
    "lr": POSITIVE, "lr_base_batch": NON_NEGATIVE, "weight_decay": NON_NEGATIVE, "momentum": BELOW_ONE,
    "grad_clip": NON_NEGATIVE, "warmup_epochs": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE,
    "warmup_lr": NON_NEGATIVE, "min_lr": NON_NEGATIVE, "ema_decay": BELOW_ONE,
    "label_smoothing": BELOW_ONE, "distill_alpha": PROBABILITY, "distill_tau": POSITIVE,
    "crop_padding": NON_NEGATIVE, "rrc_scale_min": FRACTION,
    "randaug_n": NON_NEGATIVE, "randaug_m": NON_NEGATIVE, "randaug_mstd": NON_NEGATIVE,
    "erase_prob": PROBABILITY, "erase_area_max": Range(0.02, 1),  # random erasing's smallest area is 2%
    "erase_ratio": FRACTION,  # aspect ratios from erase_ratio to 1 / erase_ratio
    "mixup_alpha": NON_NEGATIVE, "cutmix_alpha": NON_NEGATIVE, "mix_prob": PROBABILITY, "mix_switch_prob": PROBABILITY,
    "eval_crop_pct": FRACTION,
}


@dataclass(frozen=True)
class Recipe:
    """Every hyper-parameter of a training run. Field comments give the meaning; the papers'
    values are in the recipe files."""

    name: str = "custom"
    description: str = ""
    # optimisation
    epochs: int = 100
    batch_size: int = 128  # global: split evenly over the processes of a multi-GPU run
    optimizer: str = "adamw"
    lr: float = 1e-3
    lr_base_batch: int = 0  # > 0: the learning rate is lr * batch_size / lr_base_batch (DeiT's rule)
    weight_decay: float = 0.05
    no_decay_1d: bool = True  # no weight decay on biases, norm weights, position embeddings, tokens
    momentum: float = 0.9  # SGD only
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    schedule: str = "cosine"  # per iteration, after a linear warm-up from warmup_lr
    warmup_epochs: float = 0.0
    warmup_steps: int = 0  # > 0 replaces warmup_epochs (AugReg: 10k steps)
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    ema_decay: float = 0.0  # > 0: keep an exponential moving average of the weights (DeiT 0.99996)
    # loss
    loss: str = "softmax"  # softmax cross-entropy or sigmoid (binary) cross-entropy on soft targets
    label_smoothing: float = 0.0
    distill: str = "none"  # DeiT soft / hard through the distill token, or BinaryViT's KD-only loss
    distill_alpha: float = 0.5
    distill_tau: float = 1.0
    # augmentation
    crop: str = "pad"  # random crop with zero padding, random resized crop, or none
    crop_padding: int = 4
    rrc_scale_min: float = 0.08
    flip: bool = True
    randaug_n: int = 0  # RandAugment layers; 0 = off
    randaug_m: float = 0.0
    randaug_mstd: float = 0.0
    randaug_variant: str = "augreg"
    autoaugment: str = ""  # AutoAugment policy; "auto" picks it from the dataset as the SPT code does
    erase_prob: float = 0.0
    erase_mode: str = "pixel"
    erase_area_max: float = 1 / 3
    erase_ratio: float = 0.3
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_prob: float = 1.0  # probability a batch is mixed at all
    mix_switch_prob: float = 0.5  # probability of CutMix rather than Mixup when both are on
    repeats: int = 1  # repeated augmentation: each image appears this many times per epoch
    repeats_truncate: bool = False  # DeiT: the epoch is cut back to about one pass over the data
    eval_crop_pct: float = 1.0  # evaluation: resize to size / crop_pct, centre crop (DeiT 0.875)
    spec: Mapping[str, Any] = field(default_factory=dict)  # spec parameters, when the spec has them

    def effective_lr(self) -> float:
        """The peak learning rate, scaled by the (global) batch size when lr_base_batch is set."""
        if self.lr_base_batch > 0:
            return self.lr * self.batch_size / self.lr_base_batch
        return self.lr

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["spec"] = dict(self.spec)
        return out


FIELDS = {f.name: f for f in fields(Recipe)}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.toml"))


def _read(name: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The raw key/values of a recipe file, with `extends` resolved."""
    path = Path(name) if name.endswith(".toml") else RECIPE_DIR / f"{name}.toml"
    if not path.is_file():
        raise UserError(f"unknown recipe '{name}'{suggestion(name, recipe_names())}",
                        hint=f"recipes: {', '.join(recipe_names())}, or a path to a .toml file", status=2)
    if path.stem in seen:
        raise UserError(f"recipe '{path.stem}' extends itself through {' -> '.join(seen)}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: {e}") from e
    base = raw.pop("extends", None)
    out = _read(base, (*seen, path.stem)) if base else {}
    spec = {**out.get("spec", {}), **raw.pop("spec", {})}
    out.update(raw)
    out["spec"] = spec
    out["name"] = path.stem
    return out


def _coerce(key: str, value: Any, where: str) -> Any:
    """Type a value (from TOML or a `key=value` string) as the field `key` expects."""
    kind = type(FIELDS[key].default)
    if key == "spec":
        raise UserError(f"{where}: set spec parameters as spec.NAME=value", status=2)
    try:
        if kind is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if kind is int:
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, bool) or not float(number).is_integer():
                raise ValueError(value)
            return int(number)
        return kind(value)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {key} expects {kind.__name__}, got {value!r}", status=2) from e


def _parse_scalar(text: str) -> Any:
    """A spec parameter value given on the command line: int, float, bool or text."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def load_recipe(name: str, overrides: Mapping[str, Any] | None = None) -> Recipe:
    """Read recipe `name` (or a .toml path), apply `overrides` {key: value} and check every value."""
    raw = _read(name)
    values: dict[str, Any] = {}
    spec = dict(raw.pop("spec"))
    for key, value in raw.items():
        if key not in FIELDS:
            raise UserError(f"recipe {name}: unknown key '{key}'{suggestion(key, FIELDS)}")
        values[key] = _coerce(key, value, f"recipe {name}")
    for key, value in (overrides or {}).items():
        if key.startswith("spec."):
            spec[key[5:]] = _parse_scalar(value) if isinstance(value, str) else value
            continue
        if key not in FIELDS or key in ("spec", "name"):
            raise UserError(f"unknown recipe key '{key}'{suggestion(key, FIELDS)}",
                            hint="recipe keys: " + ", ".join(k for k in FIELDS if k not in ("spec", "name")),
                            status=2)
        values[key] = _coerce(key, value, f"--recipe-set {key}")
    recipe = Recipe(**values, spec=spec)
    _check(recipe)
    return recipe


def _check(r: Recipe) -> None:
    for key, allowed in CHOICES.items():
        value = getattr(r, key)
        if value not in allowed:
            raise UserError(f"recipe {r.name}: {key} = '{value}'; expected one of "
                            f"{', '.join(repr(a) for a in allowed)}{suggestion(value, allowed)}", status=2)
    for key, allowed in RANGES.items():
        value = getattr(r, key)
        if value not in allowed:
            raise UserError(f"recipe {r.name}: {key} = {value} is out of range; expected {allowed.describe(key)}",
                            status=2)
