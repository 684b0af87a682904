"""A seeded mutation fuzzer for the spec front end (tests/test_fuzz.py runs it).

Each mutant is one of the zoo's specs changed by one random edit: token edits (delete,
duplicate, swap, replace, misspell), line edits (delete, duplicate, move, splice a line of
another spec), numbers (0, negative, huge, 4,400 digits, 1e999, fractions), bytes (invalid
UTF-8, NUL, form feed, vertical tab, file separators, U+0085/U+2028/U+2029, truncation),
nesting (deep braces, deep parentheses, long expression chains), `use` (cycles, missing,
very long paths) and size (a line repeated thousands of times, 300 KB of parameters).

`check(text)` runs `vitgraph check` on it in-process, beside copies of the zoo, and
classifies the outcome: accepted (exit 0), rejected (exit 2 with one located message
whose quoted line is the line it names and whose caret lies on it), or a failure:
crashed (any other exit, or a traceback), slow (over the time limit), misplaced (a quoted
line that is not the named line, or a caret off it).
"""
from __future__ import annotations

import contextlib
import io
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from vitgraph.cli import main
from vitgraph.diagnostics import _visible, _window, split_lines

ROOT = Path(__file__).resolve().parent.parent
TOKEN = re.compile(r'"[^"\n]*"|->|[0-9]+x[0-9]+|[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?|[A-Za-z_][A-Za-z0-9_-]*|\S')
ODD_BYTES = [b"\xff", b"\xc3", b"\x00", b"\x0c", b"\x0b", b"\x1c", b"\x1e", "\u0085".encode(), "\u2028".encode(),
             "\u2029".encode(), b"\r", b"\t", b"\xef\xbb\xbf"]
NUMBERS = ["0", "-1", "-3", "0.5", "1e999", "1e-999", "99999999999999999999", "9" * 4400, "2147483648", "3.0",
           "(1 / 0)", "(0 - 7)", "(2 * 1e300 * 1e300)", "(index % 0)"]


class _Timeout(BaseException):  # not an Exception, so the CLI's last resort does not take it
    pass


@dataclass
class Outcome:
    kind: str      # accepted, rejected, crashed, slow, misplaced
    detail: str
    seconds: float


class Fuzzer:
    def __init__(self, workdir: Path, seed: int) -> None:
        self.dir = workdir
        self.rng = random.Random(seed)
        self.specs = {p.name: p.read_text() for p in sorted((ROOT / "specs").glob("*.vg"))}
        for name, text in self.specs.items():
            (self.dir / name).write_text(text)
        self.vocabulary = sorted({t for text in self.specs.values() for t in TOKEN.findall(text)})

    # -- mutations -------------------------------------------------------------------------
    def mutant(self) -> tuple[str, bytes]:
        name = self.rng.choice(sorted(self.specs))
        text = self.specs[name]
        kind = self.rng.choice(["token", "token", "token", "line", "line", "number", "number", "bytes", "nesting",
                                "use", "size"])
        return kind, getattr(self, f"_{kind}")(text)

    def _token(self, text: str) -> bytes:
        spans = [m.span() for m in TOKEN.finditer(text)]
        a, b = self.rng.choice(spans)
        tok = text[a:b]
        how = self.rng.choice(["delete", "duplicate", "replace", "misspell", "swap"])
        if how == "delete":
            new = ""
        elif how == "duplicate":
            new = tok + " " + tok
        elif how == "replace":
            new = self.rng.choice(self.vocabulary)
        elif how == "misspell" and len(tok) > 2:
            i = self.rng.randrange(len(tok) - 1)
            new = tok[:i] + tok[i + 1] + tok[i] + tok[i + 2:]
        else:
            c, d = self.rng.choice(spans)
            if c < a:
                a, b, c, d = c, d, a, b
            if c >= b:
                return (text[:a] + text[c:d] + text[b:c] + text[a:b] + text[d:]).encode()
            new = tok
        return (text[:a] + new + text[b:]).encode()

    def _line(self, text: str) -> bytes:
        lines = text.split("\n")
        i = self.rng.randrange(len(lines))
        how = self.rng.choice(["delete", "duplicate", "move", "splice"])
        if how == "delete":
            del lines[i]
        elif how == "duplicate":
            lines.insert(i, lines[i])
        elif how == "move":
            lines.insert(self.rng.randrange(len(lines)), lines.pop(i))
        else:
            other = self.specs[self.rng.choice(sorted(self.specs))].split("\n")
            lines.insert(i, self.rng.choice(other))
        return "\n".join(lines).encode()

    def _number(self, text: str) -> bytes:
        spans = [m.span() for m in re.finditer(r"(?<![A-Za-z_x0-9.])[0-9]+(\.[0-9]+)?(?![x0-9])", text)]
        if not spans:
            return self._token(text)
        a, b = self.rng.choice(spans)
        return (text[:a] + self.rng.choice(NUMBERS) + text[b:]).encode()

    def _bytes(self, text: str) -> bytes:
        data = text.encode()
        if self.rng.random() < 0.2:
            return data[:self.rng.randrange(len(data))]
        i = self.rng.randrange(len(data) + 1)
        return data[:i] + self.rng.choice(ODD_BYTES) + data[i:]

    def _nesting(self, text: str) -> bytes:
        depth = self.rng.choice([10, 200, 5000])
        how = self.rng.choice(["braces", "parens", "chain", "body"])
        if how == "braces":
            return (text + "\nmodel deep " + "{ blocks 1 " * depth + "}" * depth + "\n").encode()
        if how == "parens":
            return (text + "\nparam deep = " + "(" * depth + "1" + ")" * depth + "\n").encode()
        if how == "chain":
            return (text + "\nparam deep = (" + " + ".join(["1"] * depth) + ")\n").encode()
        return text.replace("{", "{ {", 1).encode()

    def _use(self, text: str) -> bytes:
        how = self.rng.choice(["self", "cycle", "missing", "long", "folder"])
        if how == "self":
            return ('use "mutant.vg"\n' + text).encode()
        if how == "cycle":
            (self.dir / "cycle_a.vg").write_text('use "mutant.vg"\nmodel cyc extends vit { head gap -> 10 }\n')
            return ('use "cycle_a.vg"\n' + text).encode()
        if how == "missing":
            return ('use "nowhere/' + "x" * self.rng.randrange(1, 40) + '.vg"\n' + text).encode()
        if how == "long":
            return ('use "' + "a" * self.rng.choice([300, 5000]) + '.vg"\n' + text).encode()
        (self.dir / "folder.vg").mkdir(exist_ok=True)
        return ('use "folder.vg"\n' + text).encode()

    def _size(self, text: str) -> bytes:
        lines = text.split("\n")
        if self.rng.random() < 0.5:
            i = self.rng.randrange(len(lines))
            lines[i:i + 1] = [lines[i]] * self.rng.choice([1000, 20000])
            return "\n".join(lines).encode()
        return ("\n".join(f"param big{i} = {i}" for i in range(15000)) + "\n" + text).encode()

    # -- running ---------------------------------------------------------------------------
    def check(self, data: bytes, limit: float = 10.0) -> Outcome:
        path = self.dir / "mutant.vg"
        path.write_bytes(data)
        err, out = io.StringIO(), io.StringIO()
        start = time.monotonic()
        old = signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out), _in(self.dir):
                status = main(["check", "mutant.vg"])
        except _Timeout:
            return Outcome("slow", f"over {limit:.0f} s", time.monotonic() - start)
        except BaseException as e:  # noqa: BLE001 - anything escaping main is the failure we look for
            return Outcome("crashed", f"{type(e).__name__}: {e}"[:300], time.monotonic() - start)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        seconds = time.monotonic() - start
        message = err.getvalue()
        if status == 0:
            return Outcome("accepted", "", seconds)
        if status != 2 or "Traceback" in message:
            return Outcome("crashed", f"exit {status}: {message[:300]}", seconds)
        return self._placed(message, seconds)

    def _placed(self, message: str, seconds: float) -> Outcome:
        lines = message.split("\n")
        head = re.match(r"^(.+?):(\d+):(\d+): error: ", lines[0])
        if head is None:
            return Outcome("rejected", lines[0], seconds)
        file, line, col = self.dir / head.group(1), int(head.group(2)), int(head.group(3))
        try:
            source = split_lines(file.read_bytes().decode("utf-8-sig", errors="replace"))
        except OSError:
            return Outcome("rejected", lines[0], seconds)
        if not 0 < line <= len(source):
            return Outcome("misplaced", f"line {line} of a {len(source)}-line file: {lines[0]}", seconds)
        text = source[line - 1]
        shown, caret, _ = _window(text, col - 1, 1)
        if len(lines) < 3 or lines[1] != "    " + _visible(shown):
            return Outcome("misplaced", f"quoted {lines[1:2]} for line {line} {text[:80]!r}", seconds)
        if lines[2].index("^") - 4 != caret or col - 1 > len(text):
            return Outcome("misplaced", f"caret at {lines[2].index('^') - 4}, column {col}: {lines[0]}", seconds)
        return Outcome("rejected", lines[0], seconds)


def _alarm(signum: int, frame: object) -> None:
    raise _Timeout


@contextlib.contextmanager
def _in(folder: Path):  # noqa: ANN202
    import os

    old = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


def run(workdir: Path, seed: int, count: int) -> tuple[dict[str, int], list[tuple[str, bytes, Outcome]]]:
    """`count` mutants from `seed`: outcomes counted by kind, and the failures."""
    fuzzer = Fuzzer(workdir, seed)
    counts: dict[str, int] = {}
    failures = []
    for _ in range(count):
        kind, data = fuzzer.mutant()
        outcome = fuzzer.check(data)
        counts[outcome.kind] = counts.get(outcome.kind, 0) + 1
        if outcome.kind not in ("accepted", "rejected"):
            failures.append((kind, data, outcome))
        for extra in ("cycle_a.vg", "folder.vg"):
            target = workdir / extra
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    return counts, failures
