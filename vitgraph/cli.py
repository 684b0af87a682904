"""The `vitgraph` command. Each subcommand lives in vitgraph/commands/<name>.py with
`add_arguments(parser)` and `run(args) -> int`, imported only when it is invoked so that
`vitgraph check` never loads torch. Errors become one message and an exit status:
2 for a bad spec or flag, 1 for other user errors; never a traceback. Anything else is a bug
in vitgraph: one line asking for a report and exit status 70 (EX_SOFTWARE), with the
traceback only under `vitgraph --debug COMMAND`."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from typing import Sequence

from .diagnostics import SpecError, UserError, render

COMMANDS: dict[str, str] = {
    "check": "check and count specs; exit 2 on the first bad one",
    "show": "print the IR of a spec, or draw it (--format dot|svg|png)",
    "ops": "params, MACs, BOPs and OPs per block or stage and in total",
    "build": "lower a spec to a torch checkpoint or an ONNX model",
    "predict": "run an exported ONNX model on images and print the top-5 classes",
    "train": "train a spec on a dataset with a recipe",
    "eval": "evaluate a checkpoint on a dataset (top-1, top-5)",
    "bench": "run a benchmark suite (default: smoke)",
    "report": "tables and plots from benchmark results",
}


KEY_VALUE_FLAGS = ("--set", "--recipe-set", "--teacher-set")  # each takes one or more KEY=VALUE


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every bad input
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def split_key_values(argv: Sequence[str]) -> list[str]:
    """`--set image=64 patch=8 specs/vit.vg` -> `--set=image=64 --set=patch=8 specs/vit.vg`: a
    KEY=VALUE flag takes the words after it only while they hold '=', so it cannot swallow a
    positional argument that follows it (the flags are declared with action="extend"). A first
    word without '=' that is not a path (`--set image`) is kept as a bad pair, for its message."""
    out: list[str] = []
    flag, taken = None, 0  # the KEY=VALUE flag being read, and how many words it took
    for word in argv:
        pair = not word.startswith("-") and ("=" in word or (not taken and not _looks_like_path(word)))
        if flag and pair:
            out.append(f"{flag}={word}")
            taken += 1
            continue
        if flag and not taken:
            out.append(f"{flag}=")  # nothing to take: parse_overrides reports the empty pair
        flag, taken = (word, 0) if word in KEY_VALUE_FLAGS else (None, 0)
        if flag is None:
            out.append(word)
    if flag and not taken:
        out.append(f"{flag}=")
    return out


def _looks_like_path(word: str) -> bool:
    return "/" in word or word.endswith((".vg", ".pt", ".pth", ".safetensors", ".onnx")) or os.path.exists(word)


def parse_overrides(items: Sequence[str] | None) -> dict[str, str]:
    """`--set image=64 patch=8` -> {"image": "64", "patch": "8"}; values are typed by the spec."""
    out: dict[str, str] = {}
    for item in items or ():
        if not item:
            raise SpecError("expected key=value after the flag, found nothing", where="--set")
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(f"expected key=value, found '{item}'", where=f"--set {item}")
        out[key.strip()] = value.strip()
    return out


def require_files(**given: str | Sequence[str] | None) -> None:
    """Check every input file a command names before any work starts (a missing checkpoint is
    reported now, not after a dataset has loaded): one message listing all that are missing.
    Keywords are the flags without dashes (`teacher_weights=...`); `spec`/`specs`/`images` the
    positional arguments."""
    missing = []
    for name, value in given.items():
        label = name.rstrip("s") if name in ("spec", "specs", "images", "model") else "--" + name.replace("_", "-")
        for path in [value] if isinstance(value, str) else value or ():
            if not os.path.isfile(path):
                missing.append(f"{label} {path}" + (" (a folder)" if os.path.isdir(path) else ""))
    if missing:
        raise UserError("not found: " + ", ".join(missing), hint="check the paths; nothing was started")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="vitgraph", description="Vision-transformer spec compiler and benchmark harness.",
                     epilog="The main job: `vitgraph bench` runs the smoke suite (ViT vs SL-ViT on the shipped "
                            "digits, CPU, a few minutes). `vitgraph COMMAND --help` tells more.")
    parser.add_argument("--version", action="version", version=f"vitgraph {__version__}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an internal error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(f"vitgraph.commands.{name}")
        except ModuleNotFoundError:
            p.set_defaults(_missing=name)
            continue
        module.add_arguments(p)
        p.set_defaults(_module=f"vitgraph.commands.{name}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning; set before any command loads torch. On a
    # CPU shared with other processes, spinning threads made a ViT training step 35x slower
    # (10.2 s vs 0.29 s, 2 threads, load average 7); on an idle machine it costs nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(split_key_values(argv))
    if args.command is None:  # a bare `vitgraph` (or `vitgraph --debug`): what there is to run
        parser.print_help()
        return 0
    if getattr(args, "_missing", None):
        print(f"error: the '{args._missing}' command is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(importlib.import_module(args._module).run(args) or 0)
    except SpecError as e:
        print(render(e, getattr(e, "sources", None)), file=sys.stderr)
        return 2
    except UserError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"hint: {e.hint}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except Exception as e:  # noqa: BLE001 - the last resort: a bug, reported as one line
        return _internal_error(args.command, e, args.debug)


EX_SOFTWARE = 70  # sysexits.h: an internal software error


def _internal_error(command: str, error: Exception, debug: bool) -> int:
    """One line naming the command and asking for a bug report (the traceback with --debug)."""
    if debug:
        traceback.print_exception(error, file=sys.stderr)
    what = f"{type(error).__name__}: {error}".splitlines()[0]
    rerun = "" if debug else "; rerun with `vitgraph --debug ...` for the traceback"
    print(f"internal error in `vitgraph {command}` ({what}); this is a bug in vitgraph, please report it "
          f"with the command you ran{rerun}", file=sys.stderr)
    return EX_SOFTWARE


if __name__ == "__main__":
    sys.exit(main())
