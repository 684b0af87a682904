"""Benchmark suites: which specs run on which datasets, with which overrides, recipe and budget.

A suite is a TOML file (benchmarks/suites/<name>.toml, or any path). Its runs are the
cross product `datasets x specs`, in file order, each with overrides layered from the
general to the particular, the command line last:

    [set]  <  [spec.S].set  <  [dataset.D].set  <  [dataset.D.spec.S].set  <  --set

    description = "..."
    recipe = "small-datasets"             # a recipe of vitgraph/recipes/ (default of every run)
    specs = ["vit", "sl_vit"]             # names in specs/ (or paths to .vg files)
    datasets = ["cifar10", "svhn"]        # names the data layer knows (vitgraph/data)
    seed = 0
    device = "cpu"                        # optional: force a device (default: cuda when present)
    [budget]                              # epochs (whole), optimiser steps and/or minutes per run
    epochs = 100
    max_steps = 2000                      # optional: stop after this many steps (inside an epoch)
    subset = 5000                         # optional: train on a stratified subset of this many images
    [measure]                             # what to time, and how hard (all optional)
    [dataset.svhn]
    set = { image = 32, patch = 4, classes = 10 }
    epochs = 50                           # settings may sit at any layer
    [dataset.svhn.spec.binaryvit]
    set = { image = 160 }

Settings a layer (the top, [spec.S], [dataset.D], [dataset.D.spec.S]) may hold besides `set`:
epochs, minutes, max_steps, subset, recipe, recipe_set (recipe keys, e.g. { batch_size = 256 }), distill
(none|soft|hard|kd), teacher (a spec; without teacher_weights, the weights of the suite's own
run of that spec on the same dataset, which must have finished first), teacher_weights,
teacher_set (the teacher's overrides).

The tables of papers these suites reproduce are described in docs/PAPERS.md: DeiT (Touvron
et al. 2020), ViT for small-size datasets (Lee et al. 2021), BinaryViT (Le & Li 2023).
"""
from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from vitgraph.diagnostics import UserError, suggestion

SUITES_DIR = Path(__file__).parent / "suites"

_SETTINGS = {"epochs", "minutes", "max_steps", "subset", "recipe", "recipe_set", "teacher", "teacher_weights",
             "teacher_set", "distill"}
_BUDGET_KEYS = {"epochs", "minutes", "max_steps", "subset"}
_TOP_KEYS = {"description", "specs", "datasets", "seed", "device", "budget", "measure", "set", "spec",
             "dataset"} | _SETTINGS - _BUDGET_KEYS
_LAYER_KEYS = {"set"} | _SETTINGS  # what a [spec.S] / [dataset.D] / [dataset.D.spec.S] table may hold


@dataclass(frozen=True)
class Measure:
    """How each run is measured after training. Counts are always computed."""

    torch_throughput: bool = True   # torch train/infer img/s on the training device
    onnx_cpu: bool = True           # ONNX export + onnxruntime CPU latency and throughput
    batch: int = 64                 # batch of the throughput measurements
    warmup: int = 3                 # untimed iterations before each timing
    repeats: int = 10               # timed iterations (median and spread reported)

    @staticmethod
    def from_table(table: Mapping[str, Any], where: str) -> "Measure":
        known = set(Measure.__dataclass_fields__)
        _check_keys(table, known, where)
        return Measure(**{k: _typed(v, type(getattr(Measure, k)), f"{where}.{k}") for k, v in table.items()})


@dataclass(frozen=True)
class Run:
    """One (spec, dataset) cell of a suite with everything that determines its result."""

    suite: str
    spec: str                       # the spec's name, e.g. "sl_vit"
    spec_path: str                  # the .vg file it compiles from
    dataset: str
    overrides: Mapping[str, Any]
    recipe: str
    epochs: int | None
    minutes: float | None
    seed: int
    device: str | None
    measure: Measure = field(default_factory=Measure)
    recipe_overrides: Mapping[str, Any] = field(default_factory=dict)  # recipe keys, e.g. batch_size
    teacher: str | None = None          # a spec of the suite (its run on this dataset) or a .vg path
    teacher_weights: str | None = None  # default: the suite's own run of `teacher` on this dataset
    teacher_overrides: Mapping[str, Any] = field(default_factory=dict)
    distill: str | None = None          # none | soft | hard | kd (default: the recipe's)
    max_steps: int | None = None        # optimiser steps in all (inside an epoch if need be)
    subset: int | None = None           # training images: a stratified sample seeded by `seed`

    @property
    def id(self) -> str:
        return f"{self.spec}@{self.dataset}"

    def config(self) -> dict[str, Any]:
        """The settings that define the run's result (not how it is measured). max_steps and subset
        appear only when set, so the digests of runs without them stay what they were."""
        limits = {k: v for k, v in (("max_steps", self.max_steps), ("subset", self.subset)) if v is not None}
        return {"spec": self.spec, "dataset": self.dataset, "overrides": dict(sorted(self.overrides.items())),
                "recipe": self.recipe, "recipe_overrides": dict(sorted(self.recipe_overrides.items())),
                "epochs": self.epochs, "minutes": self.minutes, "seed": self.seed, "teacher": self.teacher,
                "teacher_weights": self.teacher_weights,
                "teacher_overrides": dict(sorted(self.teacher_overrides.items())), "distill": self.distill, **limits}

    def digest(self, spec_hash: str) -> str:
        """Identifies a result: same config and same spec text -> same digest -> skipped on rerun."""
        config = {k: v for k, v in self.config().items() if k != "overrides"}  # the spec hash covers them,
        blob = json.dumps({**config, "spec_hash": spec_hash}, sort_keys=True)  # typed by the spec
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    runs: tuple[Run, ...]

    @property
    def specs(self) -> list[str]:
        return list(dict.fromkeys(r.spec for r in self.runs))

    @property
    def datasets(self) -> list[str]:
        return list(dict.fromkeys(r.dataset for r in self.runs))


def available_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def suite_path(name_or_path: str) -> Path:
    """A suite name (`smoke`) or a path to a .toml file."""
    p = Path(name_or_path)
    if p.suffix == ".toml":
        if not p.is_file():
            raise UserError(f"no such suite file '{name_or_path}'")
        return p
    p = SUITES_DIR / f"{name_or_path}.toml"
    if not p.is_file():
        raise UserError(f"no suite named '{name_or_path}'" + suggestion(name_or_path, available_suites()),
                        hint="suites: " + ", ".join(available_suites()), status=2)
    return p


def default_specs_dir() -> Path:
    """specs/ of the working directory if there is one, else the one beside the package."""
    here = Path.cwd() / "specs"
    return here if here.is_dir() else Path(__file__).resolve().parents[1] / "specs"


def load_suite(name_or_path: str, specs_dir: Path | None = None) -> Suite:
    path = suite_path(name_or_path)
    try:
        doc = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: {e}", status=2) from None
    return parse_suite(doc, path.stem, path, specs_dir or default_specs_dir())


def parse_suite(doc: Mapping[str, Any], suite_name: str, path: Path, specs_dir: Path) -> Suite:
    """Validate a suite document and expand it into runs (datasets x specs, in file order)."""
    where = str(path)
    _check_keys(doc, _TOP_KEYS, where)
    for key in ("recipe", "specs", "datasets"):  # recipe: the default of every run
        if key not in doc:
            raise UserError(f"{where}: missing '{key}'", status=2)
    specs = _str_list(doc["specs"], f"{where}: specs")
    datasets = _str_list(doc["datasets"], f"{where}: datasets")
    budget = doc.get("budget", {})
    _check_keys(budget, _BUDGET_KEYS, f"{where}: [budget]")
    names = [Path(s).stem for s in specs]  # [spec.NAME] tables name a spec given as a path by its stem
    spec_tables = _layer_tables(doc.get("spec", {}), names, f"{where}: [spec]")
    data_tables = _layer_tables(doc.get("dataset", {}), datasets, f"{where}: [dataset]", nested="spec",
                                nested_names=names)
    measure = Measure.from_table(doc.get("measure", {}), f"{where}: [measure]")
    runs = []
    for dataset in datasets:  # dataset-major: a missing dataset is met once, results fill per dataset
        for spec, name in zip(specs, names):
            dtab = data_tables.get(dataset, {})
            layers = [doc, spec_tables.get(name, {}), dtab, dtab.get("spec", {}).get(name, {})]
            overrides = {k: v for layer in layers for k, v in layer.get("set", {}).items()}
            setting = {k: v for layer in [doc, budget, *layers[1:]] for k, v in layer.items() if k in _SETTINGS}
            runs.append(Run(
                suite=suite_name, spec=name, spec_path=str(_spec_file(spec, specs_dir)), dataset=dataset,
                overrides=overrides, recipe=str(setting["recipe"]),
                epochs=_opt_whole(setting.get("epochs"), f"{where}: epochs"),
                minutes=_opt_number(setting.get("minutes"), f"{where}: minutes"),
                seed=int(doc.get("seed", 0)), device=doc.get("device"), measure=measure,
                recipe_overrides=_table(setting.get("recipe_set", {}), f"{where}: recipe_set"),
                teacher=setting.get("teacher"), teacher_weights=setting.get("teacher_weights"),
                teacher_overrides=_table(setting.get("teacher_set", {}), f"{where}: teacher_set"),
                distill=setting.get("distill"), max_steps=_opt_whole(setting.get("max_steps"), f"{where}: max_steps"),
                subset=_opt_whole(setting.get("subset"), f"{where}: subset")))
    for r in runs:
        if not (r.epochs or r.minutes or r.max_steps):
            raise UserError(f"{where}: no budget for {r.id}; give [budget] epochs, max_steps or minutes", status=2)
    return Suite(suite_name, path, str(doc.get("description", "")), tuple(runs))


def narrow(suite: Suite, specs: Sequence[str] | None = None, datasets: Sequence[str] | None = None,
           epochs: int | None = None, minutes: float | None = None, overrides: Mapping[str, Any] | None = None,
           recipe_overrides: Mapping[str, Any] | None = None, max_steps: int | None = None,
           subset: int | None = None, seeds: int | None = None) -> Suite:
    """The command line's --specs, --datasets, --epochs, --minutes, --max-steps, --set, --recipe-set,
    --subset and --seeds applied. A budget given there (epochs, minutes, steps) replaces the suite's
    whole budget; --seeds K repeats every run with seeds s, s+1, ..., s+K-1 (s: the suite's seed)."""
    for asked, have, what in ((specs, suite.specs, "spec"), (datasets, suite.datasets, "dataset")):
        for item in asked or ():
            if item not in have:
                raise UserError(f"suite '{suite.name}' has no {what} '{item}'" + suggestion(item, have),
                                hint=f"its {what}s: " + ", ".join(have), status=2)
    for flag, value in (("--epochs", epochs), ("--minutes", minutes), ("--max-steps", max_steps),
                        ("--subset", subset), ("--seeds", seeds)):
        if value is not None and value <= 0:
            raise UserError(f"{flag} {value}: expected a number above 0", status=2)
    runs = [r for r in suite.runs if (not specs or r.spec in specs) and (not datasets or r.dataset in datasets)]
    runs = [replace(r, seed=r.seed + k) for r in runs for k in range(seeds or 1)]
    changed = []
    for r in runs:
        if epochs is not None or minutes is not None or max_steps is not None:  # replaces the suite's budget
            r = replace(r, epochs=epochs, minutes=minutes, max_steps=max_steps)
        if subset is not None:
            r = replace(r, subset=subset)
        if overrides:
            r = replace(r, overrides={**r.overrides, **overrides})
        if recipe_overrides:
            r = replace(r, recipe_overrides={**r.recipe_overrides, **recipe_overrides})
        changed.append(r)
    return replace(suite, runs=tuple(changed))


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4): the second of four shards (1-based)."""
    i, sep, n = text.partition("/")
    try:
        index, count = int(i), int(n)
    except ValueError:
        index, count = 0, 0
    if not sep or count < 1 or not 1 <= index <= count:
        raise UserError(f"--shard expects i/n with 1 <= i <= n, found '{text}'", status=2)
    return index, count


def shard(runs: Iterable[Run], index: int, count: int) -> list[Run]:
    """Round-robin over the suite's run order: deterministic, and the shards partition the runs."""
    return [r for k, r in enumerate(runs) if k % count == index - 1]


# -- validation helpers ---------------------------------------------------------------
def _check_keys(table: Mapping[str, Any], known: set[str], where: str) -> None:
    if not isinstance(table, Mapping):
        raise UserError(f"{where}: expected a table", status=2)
    for key in table:
        if key not in known:
            raise UserError(f"{where}: unknown key '{key}'" + suggestion(key, known), status=2)


def _layer_tables(tables: Mapping[str, Any], names: list[str], where: str, nested: str | None = None,
                  nested_names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """[spec.S] / [dataset.D] tables: each names a listed spec/dataset and holds set/epochs/minutes/recipe."""
    _check_keys(tables, set(names), where)
    out = {}
    for name, table in tables.items():
        _check_keys(table, _LAYER_KEYS | ({nested} if nested else set()), f"{where}.{name}")
        if not isinstance(table.get("set", {}), Mapping):
            raise UserError(f"{where}.{name}.set: expected a table of overrides", status=2)
        if nested and nested in table:
            table = {**table, nested: _layer_tables(table[nested], nested_names or [], f"{where}.{name}.{nested}")}
        out[name] = dict(table)
    return out


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: expected a non-empty list of names", status=2)
    if len(set(value)) != len(value):
        raise UserError(f"{where}: names repeat", status=2)
    return value


def _opt_number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise UserError(f"{where}: expected a positive number, found {value!r}", status=2)
    return float(value)


def _opt_whole(value: Any, where: str) -> int | None:
    number = _opt_number(value, where)
    return None if number is None else _whole(number, where)


def _whole(value: float, where: str) -> int:
    if value != int(value):
        raise UserError(f"{where}: expected a whole number, found {value}", status=2)
    return int(value)


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise UserError(f"{where}: expected a table", status=2)
    return dict(value)


def _typed(value: Any, kind: type, where: str) -> Any:
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise UserError(f"{where}: expected {kind.__name__}, found {value!r}", status=2)
    return value


def _spec_file(spec: str, specs_dir: Path) -> Path:
    if spec.endswith(".vg"):
        return Path(spec)
    path = specs_dir / f"{spec}.vg"
    if not path.is_file():
        raise UserError(f"no spec '{spec}' in {specs_dir}" + suggestion(spec, [p.stem for p in specs_dir.glob("*.vg")]),
                        hint="run from the repository root or pass --specs-dir", status=2)
    return path
