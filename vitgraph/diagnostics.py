"""Source spans, the one error type of the compiler, and the one renderer for it.

Every problem in a spec, from a stray character to a pooling kernel wider than the
token grid, becomes a SpecError that points at a span and says what was observed and
what was expected. `render` turns it into the text the CLI prints:

    specs/bad.vg:7:15: error: heads 5 does not divide dim 192
        blocks 9 { lsa heads 5 head-dim 16 }
                       ^~~~~~~
    note: dim 192 comes from shift-tokenize at specs/bad.vg:5:5
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True)
class Span:
    """A region of one source file: 1-based line and column, end exclusive."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"

    @property
    def short(self) -> str:
        """File name without directories, as the printed IR shows it."""
        return f"{self.file.rsplit('/', 1)[-1]}:{self.line}:{self.column}"


@dataclass
class SpecError(Exception):
    """A problem with a spec or with how it was asked for; the CLI exits 2 on it."""

    message: str
    span: Span | None = None
    notes: list[str] = field(default_factory=list)
    where: str | None = None  # a location that is not a span, e.g. "--set imag=3"

    def __str__(self) -> str:
        return self.message


def split_lines(text: str) -> list[str]:
    """A spec's lines as the parser counts them: split at "\n" only (not at form feeds,
    vertical tabs or Unicode line separators, which str.splitlines also splits at), with a
    trailing "\r" dropped."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def _visible(line: str) -> str:
    """A source line for a terminal: control characters shown as one '?' each, so the
    caret under it keeps its column."""
    return "".join("?" if (ord(c) < 32 and c != "\t") or 0x7f <= ord(c) < 0xa0 or c in "\u2028\u2029" else c
                   for c in line)


SHOWN = 100  # characters of a long source line shown around the caret


def _window(line: str, start: int, width: int) -> tuple[str, int, int]:
    """A long line cut to a window around the span, '...' marking what was cut."""
    if len(line) <= 2 * SHOWN:
        return line, start, width
    left = max(0, start - SHOWN // 2)
    right = min(len(line), left + SHOWN)
    head = "..." if left else ""
    tail = "..." if right < len(line) else ""
    return head + line[left:right] + tail, start - left + len(head), max(1, min(width, right - start))


class Sources:
    """The text of every file read so far, so any span can be shown with its line."""

    def __init__(self) -> None:
        self._text: dict[str, str] = {}

    def add(self, name: str, text: str) -> None:
        self._text[name] = text

    def line(self, name: str, number: int) -> str | None:
        text = self._text.get(name)
        if text is None:
            return None
        lines = split_lines(text)
        return lines[number - 1] if 0 < number <= len(lines) else None


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to a misspelt `word`, or None when nothing is close."""
    found = difflib.get_close_matches(word, sorted(set(choices)), n=1, cutoff=0.6)
    return found[0] if found else None


def suggestion(word: str, choices: Iterable[str]) -> str:
    near = did_you_mean(word, choices)
    return f"; did you mean '{near}'?" if near else ""


def render(err: SpecError, sources: Sources | None = None) -> str:
    """The complete message for one error: location, source line, caret, notes."""
    if err.span is not None:
        head = f"{err.span}: error: {err.message}"
    elif err.where:
        head = f"{err.where}: error: {err.message}"
    else:
        head = f"error: {err.message}"
    out = [head]
    span = err.span
    line = sources.line(span.file, span.line) if (span and sources) else None
    if line is not None:
        start = span.column - 1
        end = span.end_column - 1 if span.end_line == span.line else len(line)
        width = max(1, min(end, len(line) + 1) - start)
        line, start, width = _window(line, start, width)
        out.append("    " + _visible(line))
        out.append("    " + "".join(c if c == "\t" else " " for c in line[:start]) + "^" + "~" * (width - 1))
    out.extend(f"note: {n}" for n in err.notes)
    return "\n".join(out)


class UserError(Exception):
    """A problem with how the tool was used that is not in a spec: a missing dataset, a
    corrupt checkpoint, a bad flag. The CLI prints `error: message` (and a hint) and
    exits 1 (2 for bad flags), without a traceback."""

    def __init__(self, message: str, hint: str | None = None, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.status = status

    def text(self) -> str:
        """What the command line prints: `error: message`, then `hint: ...` when there is one."""
        return f"error: {self.message}" + (f"\nhint: {self.hint}" if self.hint else "")
