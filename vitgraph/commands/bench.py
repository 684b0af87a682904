"""`vitgraph bench [--suite NAME|FILE]`: run a benchmark suite (default: smoke, the embedded
digits on CPU) and print the papers'-shape table; results go to results/<suite>/runs.jsonl,
the report (markdown, CSV, plots) beside it. See benchmarks/harness.py.

Short runs: `--max-steps N` stops each run after N optimiser steps (inside an epoch if need
be; the learning-rate schedule ends there), `--minutes M` fits the steps to M minutes of
measured throughput and stops there on the clock, `--subset N` trains on N images drawn by
class, `--seeds K` repeats every run with K seeds (the report gives mean +- std).
Interrupted? Run the same command again: finished runs are skipped, the one in progress
resumes from its last checkpoint.

Several machines: `--shard i/n` on each, all writing into one (shared) results folder.
Several GPUs per run: launch the command under torchrun, e.g.
    torchrun --standalone --nproc-per-node 8 -m vitgraph.cli bench --suite large
every process trains (DistributedDataParallel, the recipe's batch split over them) and rank 0
alone measures and writes; `--nproc N` does that launch for you.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ..cli import parse_overrides
from ..diagnostics import UserError
from ..fileio import check_output_folder

if TYPE_CHECKING:
    from ..benchmarks.harness import Options, Outcome
    from ..benchmarks.results import ResultStore
    from ..benchmarks.suite import Suite

def _names(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = __doc__.split("\n\n", 1)[1]
    p.add_argument("--suite", default="smoke", help="a suite name in benchmarks/suites or a .toml file (default: smoke)")
    p.add_argument("--specs", type=_names, help="only these specs of the suite (comma-separated)")
    p.add_argument("--datasets", type=_names, help="only these datasets of the suite (comma-separated)")
    p.add_argument("--epochs", type=int, help="train every run this many epochs (replaces the suite's budget)")
    p.add_argument("--minutes", type=float, help="a training budget in minutes per run, honoured inside an epoch "
                                                  "(replaces the suite's budget)")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop every run after N optimiser steps "
                                                              "(replaces the suite's budget)")
    p.add_argument("--subset", type=int, metavar="N", help="train every run on N training images, stratified by "
                                                           "class and seeded (the test split stays whole)")
    p.add_argument("--seeds", type=int, metavar="K", help="repeat every run with K seeds (seed, seed+1, ...); "
                                                          "the table shows mean +- std")
    p.add_argument("--set", action="extend", nargs="+", metavar="KEY=VALUE", help="override spec parameters of every run")
    p.add_argument("--recipe-set", action="extend", nargs="+", metavar="KEY=VALUE", help="override recipe keys of every run")
    p.add_argument("--results", metavar="DIR", help="results folder (default: results/<suite>)")
    p.add_argument("--data-root", metavar="DIR", help="where datasets are (default: $VITGRAPH_DATA)")
    p.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    p.add_argument("--device", help="cpu, cuda, cuda:N (default: the suite's, else cuda when present)")
    p.add_argument("--shard", metavar="I/N", help="run the I-th of N interleaved parts of the suite (1-based)")
    p.add_argument("--nproc", type=int, default=1, help="GPUs per run: relaunch under torchrun with N processes")
    p.add_argument("--force", action="store_true", help="rerun runs that already have results")
    p.add_argument("--list", action="store_true", help="print the runs and whether they are done; train nothing")
    p.add_argument("--specs-dir", metavar="DIR", help="where the suite's specs are (default: ./specs)")
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's, one per core)")
    p.add_argument("--quiet", action="store_true", help="no per-batch progress bars while training")
    p.add_argument("--no-report", action="store_true", help="do not write report.md, CSV and plots at the end")


def run(args: argparse.Namespace) -> int:
    from ..benchmarks import harness
    from ..benchmarks.report import paper_table, text_table, write_report
    from ..benchmarks.results import ResultStore
    from ..benchmarks.suite import load_suite, narrow, parse_shard

    suite = load_suite(args.suite, Path(args.specs_dir) if args.specs_dir else None)
    suite = narrow(suite, args.specs, args.datasets, args.epochs, args.minutes, parse_overrides(args.set),
                   parse_overrides(args.recipe_set), args.max_steps, args.subset, args.seeds)
    store = ResultStore(Path(args.results or Path("results") / suite.name))
    opts = harness.Options(device=args.device, data_root=args.data_root, download=not args.no_download,
                           shard=parse_shard(args.shard) if args.shard else None, force=args.force,
                           progress=not args.quiet, threads=args.threads)
    if args.list:
        return _list(suite, store, opts)
    check_output_folder(store.folder)
    if args.nproc > 1 and "LOCAL_RANK" not in os.environ:
        _check_devices(args.nproc, args.device or _suite_device(suite))
        _relaunch(args.nproc)
    main = harness.main_process()
    log = _log if main else (lambda _: None)
    log(f"suite {suite.name}: {suite.description}")
    try:
        outcome = harness.run_suite(suite, store, opts, log)
    except KeyboardInterrupt:
        if main:
            print(f"\ninterrupted: finished runs are kept in {store.path}; run the same command again to skip them "
                  "and resume the run in progress from its last checkpoint", file=sys.stderr)
        raise
    if not main:
        return 0
    asked = {p.digest for p in outcome.planned}  # the table shows this configuration of the suite
    shown = [r for r in store.records() if r.get("digest") in asked]
    if any(r.get("status") == "ok" for r in shown):
        print()
        print(text_table(*paper_table(shown)))
        if not args.no_report:
            written = write_report(shown, store.folder, f"Benchmark results: {suite.name}")
            print(f"\nreport: {written['report.md']} (with table.csv, runs.csv and plots)")
    return _status(outcome)


def _log(text: str) -> None:
    """Progress to stdout, errors (a missing dataset, a failed run) to stderr."""
    print(text, file=sys.stderr if text.startswith("error") else sys.stdout, flush=True)


def _status(outcome: Outcome) -> int:
    if outcome.missing:
        print(f"missing dataset(s): {', '.join(outcome.missing)} ({len(outcome.left_out)} run(s) left out)",
              file=sys.stderr)
    if outcome.failed:
        print(f"failed: {', '.join(r['run'] for r in outcome.failed)}", file=sys.stderr)
    return 1 if outcome.missing or outcome.failed else 0


def _list(suite: Suite, store: ResultStore, opts: Options) -> int:
    from ..benchmarks.harness import select

    from ..benchmarks.report import text_table

    _, todo, done = select(suite, store, opts)
    rows = []
    for p in sorted([*todo, *done], key=lambda p: suite.runs.index(p.run)):
        r = p.run
        budget = " ".join(x for x in (r.epochs and f"{r.epochs} epochs", r.max_steps and f"{r.max_steps} steps",
                                      r.minutes and f"{r.minutes:g} min") if x)
        rows.append(["done" if p in done else "todo", r.id, str(r.seed), r.recipe, budget,
                     f"{r.subset:,}" if r.subset else "all", " ".join(f"{k}={v}" for k, v in r.overrides.items())])
    print(text_table(["state", "run", "seed", "recipe", "budget", "train images", "overrides"], rows))
    return 0


def _suite_device(suite: Suite) -> str | None:
    """The device the suite's runs ask for, when they agree."""
    devices = {r.device for r in suite.runs}
    return devices.pop() if len(devices) == 1 else None


def _check_devices(nproc: int, device: str | None) -> None:
    """--nproc N trains each run on N GPUs; on the CPU only when asked for (`--device cpu`, gloo)."""
    if device == "cpu":
        return
    import torch

    found = torch.cuda.device_count()
    if found < nproc:
        raise UserError(f"--nproc {nproc} needs {nproc} GPUs, and this machine has {found}",
                        hint="drop --nproc to run on what is here, or add --device cpu to test the multi-process "
                             "path with CPU processes", status=2)


def _relaunch(nproc: int) -> NoReturn:
    """Replace this process by the same command under torchrun with `nproc` processes."""
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        raise UserError("--nproc needs torchrun on PATH (it comes with torch)")
    argv = sys.argv[1:]  # holds "bench" (a bare `vitgraph` has no --nproc)
    if "--nproc" in argv:
        i = argv.index("--nproc")
        argv = argv[:i] + argv[i + 2:]
    argv = [a for a in argv if not a.startswith("--nproc=")]
    command = [torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "vitgraph.cli", *argv]
    print("+ " + " ".join(command), flush=True)
    os.execv(torchrun, command)
