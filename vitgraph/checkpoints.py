"""What a vitgraph checkpoint says about itself, so that `build`, `eval`, `predict` and `train
--weights` need nothing restated.

A checkpoint written by `vitgraph train` (or `vitgraph build`) holds, besides the weights, the
spec: its model, the text of every file it was compiled from, the resolved parameters and their
hash (backends/torch_backend.checkpoint_dict); a training run adds the dataset (name, class
names, mean and std), the recipe, the overrides and a summary (train/loop.py). The safetensors
export carries the same description in its metadata.

    ck = read_checkpoint("runs/vit-digits/best.pt")          # backends/torch_backend.py
    graph = checkpoint_graph(None, ck, "runs/vit-digits/best.pt", {})   # the model it holds

No torch here: the callers read the file; this module compiles and describes.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

from . import compile
from .diagnostics import UserError
from .ir import Graph


def spec_info(ck: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """The spec description of a vitgraph checkpoint (None for DeiT/timm/bare state dicts)."""
    spec = (ck or {}).get("spec")
    return spec if isinstance(spec, Mapping) and isinstance(spec.get("sources"), Mapping) and spec["sources"] \
        else None


def checkpoint_graph(spec: str | None, ck: Mapping[str, Any] | None, where: str | None,
                     overrides: Mapping[str, Any], model: str | None = None,
                     keep: frozenset[str] = frozenset()) -> Graph | None:
    """The graph of a checkpoint's weights, with the user's overrides on top.

    Without SPEC, the spec text stored in the checkpoint is compiled with the stored parameters.
    With SPEC, that file is compiled with the stored parameters it declares as defaults (so a
    16-pixel run builds a 16-pixel model). Parameters named in `keep` are not taken from the
    checkpoint (training on a new dataset keeps its own `classes`). Returns None when the
    checkpoint does not describe its spec and SPEC is given (the caller compiles SPEC as usual);
    raises UserError when neither says what to build."""
    info = spec_info(ck)
    if info is None:
        if spec is None:
            what = f"{where} is not a vitgraph checkpoint (it does not say which spec it holds)" if where \
                else "no spec to build"
            raise UserError(what, hint="name the spec: vitgraph COMMAND SPEC --weights CKPT", status=2)
        return None
    stored = {k: v for k, v in dict(info.get("params") or {}).items() if k not in keep}
    if spec is None:
        with tempfile.TemporaryDirectory(prefix="vitgraph-spec-") as folder:
            path = write_sources(info, Path(folder))
            graph = compile(path, model or info.get("model"), **{**stored, **overrides})
        if graph.spec is not None:  # where the text came from, not the temporary copy (same texts, same hash)
            graph.spec.path = str(info.get("path") or graph.spec.path)
            graph.spec.sources = {str(k): str(v) for k, v in info["sources"].items()}
        return graph
    declared = compile(spec, model).spec.params
    return compile(spec, model, **{**{k: v for k, v in stored.items() if k in declared}, **overrides})


def write_sources(info: Mapping[str, Any], folder: Path) -> Path:
    """Write the spec files stored in a checkpoint under `folder`, keeping their relative layout
    (so `use "vit.vg"` finds its file); returns the path of the main spec."""
    def place(name: str) -> Path:
        return folder / (name.lstrip("/") if name != "<spec>" else "spec.vg")

    for name, text in info["sources"].items():
        target = place(str(name))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(str(text))
    return place(str(info.get("path") or next(iter(info["sources"]))))


def preprocessing(ck: Mapping[str, Any] | None) -> dict[str, Any]:
    """mean, std and class names of the data the checkpoint was trained on ({} if not recorded)."""
    data = (ck or {}).get("dataset")
    if not isinstance(data, Mapping):
        return {}
    found: dict[str, Any] = {k: tuple(data[k]) for k in ("mean", "std") if isinstance(data.get(k), (list, tuple))}
    if isinstance(data.get("class_names"), (list, tuple)):
        found["class_names"] = [str(c) for c in data["class_names"]]
    return found


def trained(ck: Mapping[str, Any] | None) -> bool | None:
    """True for the weights of a training run, False for a vitgraph build from initialised
    weights, None when the checkpoint does not say (DeiT/timm files)."""
    if ck is None:
        return False
    summary = ck.get("summary")
    if isinstance(summary, Mapping):
        return bool(summary.get("trained"))
    return False if spec_info(ck) is not None else None


def describe(ck: Mapping[str, Any] | None) -> str:
    """One line on where the weights come from, for build summaries and model metadata."""
    summary = (ck or {}).get("summary")
    if isinstance(summary, Mapping) and summary.get("trained"):
        top1 = summary.get("top1")
        score = f", test top-1 {top1:.2f}%" if isinstance(top1, (int, float)) else ""
        epochs = summary.get("epochs")
        return (f"trained on {summary.get('dataset')} for {epochs} epoch{'' if epochs == 1 else 's'} "
                f"({summary.get('steps')} steps, recipe {summary.get('recipe')}, seed {summary.get('seed')}){score}")
    if trained(ck) is False:
        return "untrained: the spec's initialisation"
    return "an external checkpoint (not written by vitgraph train)"
