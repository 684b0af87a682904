"""PNG plots of benchmark results, the papers' figures of merit: top-1 against operations
(BinaryViT Fig. 1 plots accuracy against OPs), top-1 against CPU latency, and top-1 per dataset.

matplotlib's object API (Figure, no pyplot), so no display or global backend is needed.
Accuracy axes span 0-100%, so a one-point difference looks like one point; a run repeated
over seeds shows one marker per seed and, in the bars, the mean with the standard deviation.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from vitgraph.fileio import write_atomic

from .report import TOP1, Column, by_seeds, figure, in_order, mean_std

_MARKERS = "osD^vP*X<>"
_CPU_LATENCY = Column("ONNX Runtime CPU latency, batch 1 (ms)", "onnx_cpu.latency_ms.median")
_OPS = Column("OPs = MACs + BOPs/64 (G)", "counts.ops", 1e9)


def _scatter(runs: list[Mapping[str, Any]], x: Column, path: Path, title: str) -> Path | None:
    """Top-1 against one figure, saved as a PNG (None when no run has both figures)."""
    fig = scatter_figure(runs, x, title)
    if fig is None:
        return None
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def scatter_figure(runs: list[Mapping[str, Any]], x: Column, title: str) -> Any:
    """Top-1 against one figure; one marker per dataset, each configuration labelled once (its
    seeds are several markers)."""
    from matplotlib.figure import Figure

    points = [(r, x.value(r), figure(r, TOP1)) for r in runs]
    points = [(r, px, py) for r, px, py in points if px and py is not None]
    if not points:
        return None
    labelled: set[tuple[str, str]] = set()
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.add_subplot()
    for i, dataset in enumerate(in_order([r for r, _, _ in points], "dataset")):
        mine = [(r, px, py) for r, px, py in points if r["dataset"] == dataset]
        ax.scatter([p[1] for p in mine], [p[2] for p in mine], marker=_MARKERS[i % len(_MARKERS)], s=50,
                   label=dataset, zorder=3)
        for r, px, py in mine:
            if (r["label"], r["dataset"]) not in labelled:
                labelled.add((r["label"], r["dataset"]))
                ax.annotate(r["label"], (px, py), textcoords="offset points", xytext=(5, 4), fontsize=8)
    xs = [px for _, px, _ in points]
    log = max(xs) / min(xs) > 10  # models of very different cost (binary vs full precision)
    if log:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel(x.header + (", log scale" if log else ""))
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3, zorder=0)
    ax.legend(title="dataset", fontsize=8)
    ax.margins(x=0.15)
    ax.set_ylim(0, 100)  # the whole scale: a small difference is drawn small
    fig.tight_layout()
    return fig


def _per_dataset(runs: list[Mapping[str, Any]], path: Path) -> Path | None:
    """Grouped bars: one group per dataset, one bar per spec, the top-1 written on each bar."""
    from matplotlib.figure import Figure

    runs = [r for r in runs if figure(r, TOP1) is not None]
    if not runs:
        return None
    specs, datasets = in_order(runs, "label"), in_order(runs, "dataset")
    stats = {k: mean_std([figure(r, TOP1) for r in group]) for k, group in by_seeds(runs).items()}
    by = {k: mean for k, (mean, _) in stats.items()}
    width = 0.8 / len(specs)
    fig = Figure(figsize=(max(6.0, 1.2 * len(datasets) * len(specs) ** 0.5 + 3), 5), dpi=120)
    ax = fig.add_subplot()
    for i, spec in enumerate(specs):
        xs = [d + (i - (len(specs) - 1) / 2) * width for d in range(len(datasets))]
        ys = [by.get((spec, d), 0.0) for d in datasets]
        errors = [stats[(spec, d)][1] or 0.0 if (spec, d) in stats else 0.0 for d in datasets]
        bars = ax.bar(xs, ys, width, yerr=errors if any(errors) else None, capsize=3, label=spec, zorder=3)
        ax.bar_label(bars, labels=[f"{by[(spec, d)]:.1f}" if (spec, d) in by else "" for d in datasets],
                     fontsize=7, padding=2)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("top-1 accuracy per dataset")
    ax.grid(True, axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, ncols=min(4, len(specs)), loc="upper center", bbox_to_anchor=(0.5, -0.07))
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))


def write_plots(runs: list[Mapping[str, Any]], folder: Path) -> dict[str, Path]:
    """accuracy_vs_ops.png, accuracy_vs_cpu_latency.png, accuracy_per_dataset.png (those with data),
    from the runs of report.shown_runs (each names its configuration in `label`)."""
    made = {
        "accuracy_vs_ops.png": _scatter(runs, _OPS, folder / "accuracy_vs_ops.png", "top-1 against operations"),
        "accuracy_vs_cpu_latency.png": _scatter(runs, _CPU_LATENCY, folder / "accuracy_vs_cpu_latency.png",
                                                "top-1 against CPU latency"),
        "accuracy_per_dataset.png": _per_dataset(runs, folder / "accuracy_per_dataset.png"),
    }
    return {name: path for name, path in made.items() if path is not None}
