"""Tables from benchmark results, in the shape of the papers' comparison tables
(DeiT Table 1, Lee et al. Table 2, BinaryViT Table 3): one row per spec, one top-1 column
per dataset, then the model's size, operations and speed.

    write_report(records, folder) -> report.md, table.csv (the papers' table), runs.csv (every
    figure of every run), and the plots of plots.py.

Size, operations and speed depend on the input size and the classes, so they are taken
from one run of each spec, the first dataset of the suite it ran on, and the table says
which (the `measured on` column).

Records are told apart by configuration (the run's digest), not by (spec, dataset): when a
spec ran in several configurations on a dataset (a suite run again with other overrides,
epochs, seed, recipe or spec text), each gets its own row, labelled with the settings that
differ ("vit (epochs=2)"), and no row mixes figures of different configurations. The seed is
not such a setting: the runs of one configuration with several seeds (`vitgraph bench --seeds
K`) share a row, whose top-1 is their mean +- sample standard deviation.

In the terminal the tables print with aligned columns (text_table); the files hold markdown
(markdown_table).
"""
from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from vitgraph.diagnostics import UserError
from vitgraph.fileio import write_atomic

from .results import RUNS_FILE, latest_ok, read_records

SETTINGS = ("overrides", "recipe", "recipe_overrides", "epochs", "minutes", "max_steps", "subset", "teacher",
            "teacher_weights", "teacher_overrides", "distill", "spec_hash")  # what tells configurations of a
# (spec, dataset) apart; the seed does not: its runs are repeats of one configuration


def load_records(results: Path) -> list[dict[str, Any]]:
    """The records of a results folder (or of a runs.jsonl file)."""
    path = Path(results)
    path = path / RUNS_FILE if path.is_dir() else path
    if not path.is_file():
        raise UserError(f"no benchmark results at '{results}'", hint="run `vitgraph bench` first; it writes "
                        f"results/<suite>/{RUNS_FILE}")
    return list(read_records(path))


def figure(record: Mapping[str, Any], dotted: str) -> Any:
    """A nested value of a record by its dotted path ('counts.ops'); None when absent."""
    value: Any = record
    for key in dotted.split("."):
        if not isinstance(value, Mapping) or value.get(key) is None:
            return None
        value = value[key]
    return value


@dataclass(frozen=True)
class Column:
    """A figure of the table: its header, where it is in a record, and how it prints."""

    header: str
    path: str
    scale: float = 1.0
    digits: int = 2

    def value(self, record: Mapping[str, Any]) -> float | None:
        v = figure(record, self.path)
        return None if v is None else v / self.scale

    def text(self, record: Mapping[str, Any] | None) -> str:
        v = None if record is None else self.value(record)
        return "–" if v is None else f"{v:,.{self.digits}f}"


FIGURES = (
    Column("params (M)", "counts.params", 1e6),
    Column("binary params (M)", "counts.binary_params", 1e6),
    Column("MACs (G)", "counts.macs", 1e9, 3),
    Column("BOPs (G)", "counts.bops", 1e9, 3),
    Column("OPs (G)", "counts.ops", 1e9, 3),
    Column("train img/s", "torch.train_img_s.median", 1, 1),
    Column("infer img/s", "torch.infer_img_s.median", 1, 1),
    Column("CPU latency (ms)", "onnx_cpu.latency_ms.median", 1, 2),
    Column("CPU img/s", "onnx_cpu.throughput_img_s.median", 1, 1),
)
TOP1 = "metrics.top1"


def in_order(records: Iterable[Mapping[str, Any]], key: str) -> list[str]:
    """The distinct values of `key`, in the order the records first show them."""
    return list(dict.fromkeys(r[key] for r in records))


def shown_runs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The latest successful record of each configuration, each with its row `label`: the spec's
    name, and the settings that differ when the spec ran in several configurations on a dataset."""
    runs = latest_ok(records)
    cells = {cell: [r for r in runs if (r["spec"], r["dataset"]) == cell]
             for cell in dict.fromkeys((r["spec"], r["dataset"]) for r in runs)}
    varying: dict[str, set[str]] = {}
    for (spec, _), cell in cells.items():
        settings = [_settings(r) for r in cell]
        keys = {k for s in settings for k in s} - {"spec_hash"}  # overrides change the hash too
        varying.setdefault(spec, set()).update(k for k in keys if len({repr(s.get(k)) for s in settings}) > 1)
    for (spec, _), cell in cells.items():
        configurations = {repr(sorted(_settings(r).items())) for r in cell}
        if len({_label(r, sorted(varying[spec])) for r in cell}) < len(configurations):  # the spec text only
            varying[spec].add("spec_hash")
    return [{**r, "label": _label(r, sorted(varying[r["spec"]]))} for r in runs]


def _settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's configuration as flat key = value pairs (spec and recipe overrides by their own names)."""
    flat: dict[str, Any] = {}
    for key in SETTINGS:
        value = record.get(key)
        if isinstance(value, Mapping):
            prefix = "teacher." if key == "teacher_overrides" else ""
            flat.update({f"{prefix}{k}": v for k, v in value.items()})
        elif value is not None:
            flat[key] = str(value)[:8] if key == "spec_hash" else value
    return flat


def _label(record: Mapping[str, Any], keys: list[str]) -> str:
    if not keys:
        return record["spec"]
    settings = _settings(record)
    shown = " ".join(f"{k}={settings.get(k, '-')}" for k in keys)
    return f"{record['spec']} ({shown})"


def by_seeds(runs: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """The records of each row and dataset (label, dataset), one per seed (the latest), in order."""
    groups: dict[tuple[str, str], dict[Any, Mapping[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["label"], r["dataset"]), {})[r.get("seed")] = r
    return {key: list(seeds.values()) for key, seeds in groups.items()}


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def top1_text(group: list[Mapping[str, Any]] | None) -> str:
    """One run's top-1, or mean +- std over the seeds of a repeated run."""
    values = [v for v in (figure(r, TOP1) for r in group or ()) if v is not None]
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f} ({len(values)} seeds)"


def paper_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the papers' table from the latest successful record of each configuration
    (its seeds together)."""
    runs = shown_runs(records)
    labels, datasets = in_order(runs, "label"), in_order(runs, "dataset")
    groups = by_seeds(runs)
    figures = [c for c in FIGURES if any(c.value(r) for r in runs)]  # e.g. no BOPs column without binary
    header = ["spec", *[f"{d} top-1" for d in datasets], *[c.header for c in figures], "measured on"]
    rows = []
    for label in labels:
        ref = next(groups[(label, d)][0] for d in datasets if (label, d) in groups)
        top1 = [top1_text(groups.get((label, d))) for d in datasets]
        rows.append([label, *top1, *[c.text(ref) for c in figures], _measured_on(ref)])
    return header, rows


def _measured_on(record: Mapping[str, Any]) -> str:
    image = figure(record, "spec_params.image")
    device = figure(record, "torch.device") or figure(record, "conditions.device")
    return f"{record['dataset']} {image}px, {device}" if image else f"{record['dataset']}, {device}"


RUN_COLUMNS: tuple[tuple[str, Callable[[Mapping[str, Any]], Any]], ...] = (
    ("suite", lambda r: r.get("suite")),
    ("spec", lambda r: r["spec"]),
    ("dataset", lambda r: r["dataset"]),
    ("top1", lambda r: figure(r, "metrics.top1")),
    ("top5", lambda r: figure(r, "metrics.top5")),
    ("epochs", lambda r: figure(r, "metrics.epochs")),
    ("train_seconds", lambda r: figure(r, "metrics.train_seconds")),
    *((c.path, (lambda c: lambda r: figure(r, c.path))(c)) for c in FIGURES),
    ("overrides", lambda r: " ".join(f"{k}={v}" for k, v in sorted((r.get("overrides") or {}).items()))),
    ("recipe", lambda r: r.get("recipe")),
    ("seed", lambda r: r.get("seed")),
    ("spec_hash", lambda r: r.get("spec_hash")),
    ("device", lambda r: figure(r, "conditions.device")),
    ("cpu", lambda r: figure(r, "conditions.cpu")),
    ("gpu", lambda r: figure(r, "conditions.gpu")),
    ("torch_threads", lambda r: figure(r, "conditions.torch_threads")),
    ("git_commit", lambda r: figure(r, "conditions.git_commit")),
    ("finished", lambda r: r.get("finished")),
)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    right = [i > 0 and all(_numeric(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _numeric(text: str) -> bool:
    first = text.split(" ± ")[0]
    return first == "–" or first.replace(",", "").replace(".", "", 1).isdigit()


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """The table for a terminal: columns padded to their widest cell, numbers right-aligned,
    a rule under the header."""
    right = [i > 0 and bool(rows) and all(_numeric(row[i]) for row in rows) for i in range(len(header))]
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def _csv(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


def conditions_text(records: list[dict[str, Any]]) -> str:
    """The distinct conditions the shown figures were measured under, one line each."""
    lines = []
    for r in latest_ok(records):
        c = r.get("conditions", {})
        versions = ", ".join(f"{k} {v}" for k, v in (c.get("versions") or {}).items() if v)
        kind = ", ".join(f"{label} {c[key]}" for key, label in (("cpu_family_model_stepping", "family/model/stepping"),
                                                              ("torch_cpu_capability", "torch kernels")) if c.get(key))
        lines.append(f"- device {c.get('device')}; CPU {c.get('cpu')} ({kind + ', ' if kind else ''}"
                     f"{c.get('cpu_count')} cores, "
                     f"{c.get('torch_threads')} torch threads); GPU {c.get('gpu') or 'none'}; {versions}; "
                     f"git {c.get('git_commit')}")
    loads = [figure(r, "conditions.load_avg_1min") for r in latest_ok(records)]
    loads = [x for x in loads if x is not None]
    if loads:  # other work on the machine slows the timings down
        lines.append(f"- 1-minute load average when the runs finished: {min(loads):.1f} to {max(loads):.1f}")
    return "\n".join(dict.fromkeys(lines))


def render_markdown(records: list[dict[str, Any]], title: str, plots: list[Path]) -> str:
    runs = shown_runs(records)
    header, rows = paper_table(records)
    settings = [(r["label"], r["dataset"], r.get("recipe"), figure(r, "metrics.epochs"), r.get("seed"),
                 " ".join(f"{k}={v}" for k, v in sorted((r.get("overrides") or {}).items())), r.get("spec_hash"),
                 _seconds(figure(r, "metrics.train_seconds")), _seconds(r.get("seconds"))) for r in runs]
    seeds = " Runs repeated over seeds show mean ± sample standard deviation." \
        if any(len(g) > 1 for g in by_seeds(runs).values()) else ""
    parts = [f"# {title}", "",
             "Top-1 accuracy (%) on each dataset's test split; params, operations (OPs = MACs + BOPs/64) and "
             "speed of the run named in `measured on` (torch img/s on the training device, ONNX Runtime "
             f"batch-1 latency and batch throughput on CPU; medians).{seeds}", "",
             markdown_table(header, rows), "", "## Runs", "",
             markdown_table(["spec", "dataset", "recipe", "epochs", "seed", "overrides", "spec hash", "training",
                             "whole run"], [[str(x if x is not None else "–") for x in s] for s in settings]),
             "", "## Conditions", "", conditions_text(records)]
    if plots:
        parts += ["", "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots]]
    return "\n".join(parts) + "\n"


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value / 60:.1f} min" if value >= 60 else f"{value:.0f} s"


def write_report(records: list[dict[str, Any]], folder: Path, title: str = "Benchmark results",
                 plots: bool = True) -> dict[str, Path]:
    """Write report.md, table.csv, runs.csv (and the plots) into `folder`; return what was written."""
    if not latest_ok(records):
        raise UserError("no finished runs to report", hint="the results hold no run with status ok yet")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if plots:
        from .plots import write_plots

        written.update(write_plots(shown_runs(records), folder))
    header, rows = paper_table(records)
    texts = {"table.csv": _csv(header, rows),
             "runs.csv": _csv([name for name, _ in RUN_COLUMNS],
                              ([get(r) for _, get in RUN_COLUMNS] for r in latest_ok(records))),
             "report.md": render_markdown(records, title, list(written.values()))}
    for name, text in texts.items():
        write_atomic(folder / name, lambda tmp, text=text: tmp.write_text(text))
    written.update({"table.csv": folder / "table.csv", "runs.csv": folder / "runs.csv",
                    "report.md": folder / "report.md"})
    return written
