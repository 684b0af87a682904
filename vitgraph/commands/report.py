"""`vitgraph report RESULTS [-o DIR]`: the papers' table (markdown and CSV), every run's
figures (CSV) and the plots (PNG) from a results folder written by `vitgraph bench`."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..fileio import check_output_folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", metavar="RESULTS", help="a results folder (holding runs.jsonl) or a runs.jsonl file")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write the report (default: the results folder)")
    p.add_argument("--title", help="the report's title (default: the suite's name)")
    p.add_argument("--no-plots", action="store_true", help="tables only")


def run(args: argparse.Namespace) -> int:
    from ..benchmarks.report import load_records, paper_table, text_table, write_report

    results = Path(args.results)
    records = load_records(results)
    folder = Path(args.output) if args.output else (results if results.is_dir() else results.parent)
    check_output_folder(folder)
    suites = ", ".join(dict.fromkeys(str(r.get("suite")) for r in records))
    written = write_report(records, folder, args.title or f"Benchmark results: {suites}", plots=not args.no_plots)
    print(text_table(*paper_table(records)))
    print()
    for path in written.values():
        print(f"wrote {path}")
    return 0
