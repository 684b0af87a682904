"""AST -> IR. Reads a spec file and the files it `use`s, resolves parameters (with the
caller's overrides), merges `extends` (a child's statement replaces the parent's of the
same kind; a header-less `blocks { ... }` or `stage { ... }` patches every body of the
parent), and lowers the model body in the order written.

A model body holds settings (`norm`, `drop-path`, `binarize`, `init`: model-wide, in any
order) and layers, in order: the op units' model words (input, patch embeddings, tokens,
position embeddings, head, ...), `blocks N { ... }` and `stage D depth N { ... }`. A
block body is a sequence too: each mixer (attention, mlp, ...) is one pre-norm residual
branch, norm -> mixer -> modifiers -> drop-path -> add; modifiers (affine-residual, ...)
apply to every branch of the block; a parallel word (pool-branches) adds a branch beside
the mixer before it; a layer word marked `in_blocks` (T2T's soft split) applies to the
stream where it stands. Inside a body, `index` is the block's position in its statement.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from . import init as initialisation
from .diagnostics import Sources, Span, SpecError, did_you_mean, suggestion
from .ir import Graph, SpecInfo, TensorType
from .lang import BOOLS, Env, Matched, Schema, match
from .ops import WORDS, OpDef, Resolve, Settings, words_of
from .ops.add import Add, AddAttrs
from .ops.downsample import Downsample, downsample_kinds
from .ops.drop_path import DropPath, DropPathAttrs
from .ops.head import Head
from .ops.norm import Norm, NormAttrs
from .ops.slice import Concat, ConcatAttrs, Slice, SliceAttrs
from .syntax import Arg, Model, Module, Param, Stmt, Use, parse

# -- the language's own words ---------------------------------------------------------------
SETTINGS: dict[str, Schema] = {
    "norm": Schema(("choice:kind:layer|batch",), {"eps": "pos"}, usage="norm layer eps 1e-6"),
    "drop-path": Schema(("num:rate", "?choice:schedule:linear|constant"), usage="drop-path 0.1 linear"),
    "binarize": Schema(("choices:what:weights|activations|attention|none",
                        "?except", "?choices:exempt:stem|blocks|transitions|head"),
                       usage="binarize weights activations attention except stem head"),
    "init": Schema(usage=initialisation.USAGE),
}
NORM_EPS = {"layer": 1e-6, "batch": 1e-5}


def structure_schemas() -> dict[str, Schema]:
    kinds = "|".join(downsample_kinds())
    return {
        "blocks": Schema(("int:depth",), {"drop-path": "num"}, body=True,
                         usage="blocks 12 { attention heads 3; mlp ratio 4 }"),
        "stage": Schema(("int:dim",), {"depth": "int", "downsample": f"choice:{kinds}", "drop-path": "num"},
                        frozenset({"pos-embed"}), body=True,
                        usage="stage 128 depth 4 downsample merge pos-embed { ... }"),
    }


STRUCTURES = ("blocks", "stage")
MAX_BLOCKS = 1000  # blocks of one statement (the deepest models in the papers have 48)
BODY_ROLES = ("mixer", "modifier", "parallel")


def body_words() -> dict[str, type[OpDef]]:
    """The words of a block body: mixers, modifiers, parallel branches, and the layers that
    may also stand there (`in_blocks`: applied to the stream where written)."""
    words = {w: op for role in BODY_ROLES for w, op in words_of(role).items()}
    return words | {w: op for w, op in words_of("layer").items() if op.in_blocks}


def is_patch(stmt: Stmt) -> bool:
    """A header-less `blocks { ... }` / `stage [options] { ... }`: an edit of a parent's bodies."""
    if stmt.word not in STRUCTURES:
        return False
    first = stmt.args[0] if stmt.args else None
    schema = structure_schemas()[stmt.word]
    return first is None or (first.kind == "word" and (first.value in schema.options or first.value in schema.flags))


def family(word: str) -> str:
    """Statements of one family replace each other in `extends` (patchify / stem /
    shift-tokenize are all the model's tokenizer; attention / lsa are its attention)."""
    op = WORDS.get(word)
    return (op.family or op.name) if op is not None else word


def setting_slot(stmt: Stmt) -> str:
    if stmt.word == "init" and stmt.args and stmt.args[0].kind == "word" \
            and stmt.args[0].value not in initialisation.POLICIES:
        return f"init {family(stmt.args[0].value)}"
    return stmt.word


# -- loading files -----------------------------------------------------------------
def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


MAX_SPEC_BYTES = 256 * 1024  # the zoo's largest spec is ~2 KB; lark parses ~100 KB/s


def _short(path: object) -> str:
    text = str(path)
    return text if len(text) <= 80 else text[:77] + "..."


def _read_spec(path: Path, span: Span | None = None) -> bytes:
    """A spec file's bytes, at most MAX_SPEC_BYTES; every failure one located message."""
    try:
        if path.is_dir():
            found = sorted(p.name for p in path.glob("*.vg"))[:5]
            raise SpecError(f"'{path}' is a folder, not a spec file", span,
                            [f"specs in it: {', '.join(found)}" if found else "expected a .vg file"])
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"spec '{path}' is {size / 1024:.0f} KiB; spec files are limited to "
                            f"{MAX_SPEC_BYTES // 1024} KiB", span)
        return path.read_bytes()[:MAX_SPEC_BYTES + 1]
    except OSError as e:
        raise SpecError(f"cannot read spec '{_short(path)}': {e.strerror or e}", span) from None


class Loader:
    def __init__(self) -> None:
        self.sources = Sources()
        self.texts: dict[str, str] = {}
        self.params: dict[str, Param] = {}
        self.models: dict[str, Model] = {}
        self._seen: set[Path] = set()

    def load_file(self, path: Path, span: Span | None = None) -> list[str]:
        data, name = _read_spec(path, span), _display(path)
        try:
            text = data.decode("utf-8-sig")  # UTF-8, a byte-order mark allowed
        except UnicodeDecodeError as e:
            self.sources.add(name, data.decode("utf-8", errors="replace"))
            line = data.count(b"\n", 0, e.start) + 1
            col = len(data[data.rfind(b"\n", 0, e.start) + 1:e.start].decode("utf-8", errors="replace")) + 1
            raise SpecError(f"byte 0x{data[e.start]:02x} is not UTF-8", Span(name, line, col, line, col + 1),
                            ["expected a text file in UTF-8"]) from None
        return self.load_text(text, name, path.parent)

    def load_text(self, text: str, name: str, base_dir: Path) -> list[str]:
        self.sources.add(name, text)
        self.texts[name] = text
        module: Module = parse(text, name)
        own_params: dict[str, Param] = {}
        own_models: list[str] = []
        for item in module.items:
            if isinstance(item, Use):
                self._use(item, base_dir)
            elif isinstance(item, Param):
                if item.name in own_params:
                    raise SpecError(f"parameter '{item.name}' is defined twice in this file", item.span,
                                    [f"first defined at {own_params[item.name].span}"])
                own_params[item.name] = item
                self.params[item.name] = item
            else:
                if item.name in self.models and item.name not in own_models:
                    prev = self.models[item.name]
                    if prev.span.file == item.span.file:
                        raise SpecError(f"model '{item.name}' is defined twice", item.name_span,
                                        [f"first defined at {prev.span}"])
                elif item.name in own_models:
                    raise SpecError(f"model '{item.name}' is defined twice", item.name_span,
                                    [f"first defined at {self.models[item.name].span}"])
                self.models[item.name] = item
                own_models.append(item.name)
        return own_models

    def _use(self, use: Use, base_dir: Path) -> None:
        if "\0" in use.path:  # no file system takes it; os would raise ValueError, not OSError
            raise SpecError("a `use` path cannot contain a NUL byte", use.span, ["expected a file name like \"vit.vg\""])
        target = (base_dir / use.path)
        try:
            found = target.exists()
            key = target.resolve()
        except OSError as e:
            raise SpecError(f"cannot read '{_short(use.path)}': {e.strerror or e}", use.span) from None
        if not found:
            here = sorted(p.name for p in base_dir.glob("*.vg")) if base_dir.is_dir() else []
            raise SpecError(f"cannot find '{use.path}'" + suggestion(Path(use.path).name, here), use.span,
                            [f"looked in {_display(base_dir) or '.'}/"])
        if key in self._seen:
            return
        self._seen.add(key)
        if sum(len(t) for t in self.texts.values()) > MAX_SPEC_BYTES:
            raise SpecError(f"the specs `use`d here add up to more than {MAX_SPEC_BYTES // 1024} KiB", use.span)
        self.load_file(target, use.span)


def resolve_params(loader: Loader, overrides: Mapping[str, Any]) -> Env:
    values: dict[str, Any] = {}
    spans: dict[str, Span | None] = {}
    env = Env(values, spans)
    for name, p in loader.params.items():
        if name in ("index",):
            raise SpecError(f"'{name}' is a name of the language (a block's position in its body); "
                            "choose another parameter name", p.span)
        v = env.value(p.value)
        if p.type is not None:
            want = {"int": int, "float": float, "num": float, "str": str, "bool": bool}.get(p.type)
            if want is None:
                raise SpecError(f"unknown parameter type '{p.type}'" + suggestion(p.type, ["int", "float", "str", "bool"]),
                                p.span)
            if want is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, want) or (want is int and isinstance(v, bool)):
                raise SpecError(f"parameter '{name}' is declared {p.type} but its value is {v!r}", p.value.span)
        values[name] = v
        spans[name] = p.span
    for key, raw in overrides.items():
        where = f"--set {key}={raw}"
        if key not in values:
            raise SpecError(f"override '{key}' names no parameter" + suggestion(key, values),
                            where=where, notes=[f"parameters: {', '.join(sorted(values)) or 'none'}"])
        values[key] = _coerce(key, raw, values[key], where)
        spans[key] = None
    return env


def _coerce(key: str, raw: Any, default: Any, where: str) -> Any:
    kind = type(default)
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    text = str(raw)
    try:
        if kind is bool:
            if text.lower() not in BOOLS:
                raise ValueError
            return BOOLS[text.lower()]
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
        return text
    except ValueError:
        name = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, "a string")
        raise SpecError(f"parameter '{key}' expects {name}, found '{text}'", where=where) from None


# -- extends: merging a child into its parent ------------------------------------------------
def flatten(loader: Loader, name: str, span: Span | None) -> list[Stmt]:
    """The model's statements with its `extends` chain merged, root first."""
    chain: list[str] = []
    model = loader.models.get(name)
    if model is None:
        raise SpecError(f"unknown model '{name}'" + suggestion(name, loader.models), span,
                        [f"models: {', '.join(sorted(loader.models)) or 'none'}"])
    cur: Model | None = model
    lineage: list[Model] = []
    while cur is not None:
        if cur.name in chain:
            cycle = " -> ".join(chain[chain.index(cur.name):] + [cur.name])
            raise SpecError(f"extends cycle: {cycle}", lineage[-1].base_span,
                            ["a model cannot extend itself, directly or through others"])
        chain.append(cur.name)
        lineage.append(cur)
        if cur.base is None:
            break
        if cur.base not in loader.models:
            raise SpecError(f"'{cur.name}' extends unknown model '{cur.base}'" + suggestion(cur.base, loader.models),
                            cur.base_span, ["expected a model defined in this file or in a file it `use`s"])
        cur = loader.models[cur.base]
    merged = list(lineage[-1].body)
    for parent, child in zip(reversed(lineage), list(reversed(lineage))[1:]):
        merged = merge(merged, child, parent.name)
    return merged


def structure_name(stmt: Stmt) -> str:
    return stmt.alias or ("blocks" if stmt.word == "blocks" else "stages")


def merge(parent: list[Stmt], child: Model, parent_name: str) -> list[Stmt]:
    """A child's statements applied to its parent's: settings and layers replace the
    parent's statement of the same kind, in place; structures with a header replace the
    parent's structures of the same name; header-less structures patch them."""
    out = list(parent)
    replaced: set[tuple[str, str]] = set()
    for c in child.body:
        if is_patch(c):
            targets = [i for i, s in enumerate(out) if s.word == c.word and structure_name(s) == structure_name(c)]
            if not targets:
                raise SpecError(f"nothing to patch: '{parent_name}' has no `{c.word}` named '{structure_name(c)}'",
                                c.word_span, [f"a header-less `{c.word} {{ ... }}` edits the bodies of the parent's"])
            for i in targets:
                out[i] = patch(out[i], c)
        elif c.word in STRUCTURES:
            key = (c.word, structure_name(c))
            idx = [i for i, s in enumerate(out) if (s.word, structure_name(s)) == key]
            if key in replaced or not idx:
                at = max(idx) + 1 if idx else next((i for i, s in enumerate(out) if s.word == "head"), len(out))
                out.insert(at, c)
            else:
                replaced.add(key)
                out[idx[0]] = c
                for i in reversed(idx[1:]):
                    del out[i]
        elif c.word in SETTINGS:
            slot = setting_slot(c)
            idx = [i for i, s in enumerate(out) if s.word in SETTINGS and setting_slot(s) == slot]
            if idx:
                out[idx[0]] = c
            else:
                out.append(c)
        else:
            slot = family(c.word)
            idx = [i for i, s in enumerate(out) if s.word not in SETTINGS and s.word not in STRUCTURES
                   and family(s.word) == slot]
            if len(idx) == 1:
                out[idx[0]] = c
            elif not idx:
                raise SpecError(f"'{c.word}' has no counterpart in '{parent_name}' to replace",
                                c.word_span, ["a child model replaces its parent's statements; to add a layer, "
                                              "write the model out in full"])
            else:
                raise SpecError(f"'{parent_name}' has {len(idx)} '{c.word}' statements: which one this replaces "
                                "is ambiguous", c.word_span, ["write the model out in full"])
    return out


def _options(stmt: Stmt, schema: Schema) -> dict[str, list[Arg]]:
    """A statement's `key value` options and bare flags, as raw arguments by name."""
    out: dict[str, list[Arg]] = {}
    args = list(stmt.args)
    i = 0
    while i < len(args):
        a = args[i]
        if a.kind == "word" and a.value in schema.options and i + 1 < len(args):
            out[a.value] = [a, args[i + 1]]
            i += 2
        elif a.kind == "word" and a.value in schema.flags:
            out[a.value] = [a]
            i += 1
        else:
            i += 1
    return out


def _positional(stmt: Stmt, schema: Schema) -> list[Arg]:
    named = {id(a) for opt in _options(stmt, schema).values() for a in opt}
    return [a for a in stmt.args if id(a) not in named]


def _schema(word: str) -> Schema | None:
    op = WORDS.get(word)
    return op.words[word] if op is not None else None


def patch(target: Stmt, edit: Stmt) -> Stmt:
    """Apply a header-less structure statement to one of the parent's: its options replace
    the target's same-named options (each must exist there, or be one the target lacks only
    where no target has it); each body word replaces the word of its family, keeping the
    replaced word's options unless restated, or is added at the end of the body."""
    schema = structure_schemas()[target.word]
    target_opts = _options(target, schema)
    args = _positional(target, schema)
    new_opts = _options(edit, schema)
    merged = {**target_opts, **{k: v for k, v in new_opts.items() if k in target_opts or k in schema.flags}}
    for opt in merged.values():
        args.extend(opt)
    body = list(target.body or ())
    for w in edit.body or ():
        fam = family(w.word)
        same = [i for i, s in enumerate(body) if family(s.word) == fam]
        if not same:
            body.append(w)
            continue
        old = body[same[0]]
        old_schema, new_schema = _schema(old.word), _schema(w.word)
        keep: list[Arg] = []
        if old_schema is not None and new_schema is not None:
            given = set(_options(w, new_schema))
            exclusive = {k for group in new_schema.exclusive if given & set(group) for k in group}
            for name, opt in _options(old, old_schema).items():
                if name not in given and name not in exclusive and (name in new_schema.options or name in new_schema.flags):
                    keep.extend(opt)
        body[same[0]] = replace(w, args=tuple(w.args) + tuple(keep))
    return replace(target, args=tuple(args), body=tuple(body))


# -- building the graph -------------------------------------------------------------
@dataclass
class Branch:
    """One residual branch of a block: its mixer and the parallel words beside it."""

    mixer: Stmt
    parallel: list[Stmt] = field(default_factory=list)


class Builder:
    def __init__(self, graph: Graph, env: Env) -> None:
        self.g = graph
        self.env = env
        self.counters: dict[str, int] = {}

    # -- the model body --------------------------------------------------------------------
    def build(self, stmts: list[Stmt], model_span: Span) -> None:
        settings = {setting_slot(s): s for s in stmts if s.word in SETTINGS}
        seen: dict[str, Stmt] = {}
        for s in stmts:
            if s.word in SETTINGS:
                slot = setting_slot(s)
                if slot in seen:
                    raise SpecError(f"'{s.word}' is given twice in this model", s.word_span,
                                    [f"first given at {seen[slot].span}"])
                seen[slot] = s
        self.settings = self._settings(settings)
        self.g.init = initialisation.resolve([s for k, s in settings.items() if k.startswith("init")], self.env)
        layers = [s for s in stmts if s.word not in SETTINGS]
        self._check_layout(layers, model_span)
        self.rates = self._drop_path_rates(layers, settings.get("drop-path"))
        x: int | None = None
        for s in layers:
            if s.word in STRUCTURES:
                x = self._structure(s, x)
            else:
                x = self._layer(s, x)

    def _settings(self, found: dict[str, Stmt]) -> Settings:
        norm = match(found["norm"], SETTINGS["norm"], self.env) if "norm" in found else Matched({"kind": "layer"}, {})
        bz = match(found["binarize"], SETTINGS["binarize"], self.env) if "binarize" in found else None
        what = tuple(w for w in (bz["what"] if bz else ()) if w != "none")
        return Settings(norm["kind"], norm.get("eps", NORM_EPS[norm["kind"]]), what,
                        frozenset(bz.get("exempt", ()) if bz else ()),
                        found["binarize"].span if "binarize" in found else None)

    def _check_layout(self, layers: list[Stmt], model_span: Span) -> None:
        model_words = words_of("layer")
        in_body = body_words()
        once: dict[str, Stmt] = {}
        for s in layers:
            if s.word in STRUCTURES:
                if is_patch(s):
                    raise SpecError(f"'{s.word}' without its {'depth' if s.word == 'blocks' else 'dim and depth'} "
                                    "patches a parent's bodies, but this model extends none", s.word_span,
                                    [f"expected `{structure_schemas()[s.word].usage}`"])
                continue
            if s.word not in model_words:
                if s.word in in_body:
                    raise SpecError(f"'{s.word}' belongs inside a blocks or stage body", s.word_span,
                                    [f"expected `blocks N {{ {s.word} ... }}`"])
                known = list(model_words) + list(SETTINGS) + list(STRUCTURES)
                raise SpecError(f"unknown word '{s.word}'" + suggestion(s.word, known), s.word_span,
                                [f"words of a model: {', '.join(known)}"])
            if model_words[s.word].once:
                key = model_words[s.word].name
                if key in once:
                    raise SpecError(f"'{s.word}' is given twice in this model", s.word_span,
                                    [f"first given at {once[key].span}"])
                once[key] = s
        for required in ("input", "head"):
            if not any(s.word == required for s in layers):
                raise SpecError(f"the model has no '{required}' statement", model_span,
                                [f"expected e.g. `{WORDS[required].words[required].usage}`"])
        if layers[0].word != "input":
            raise SpecError(f"'{layers[0].word}' comes before 'input'", layers[0].word_span,
                            ["expected `input C x H x W` as the first layer of the model"])
        if layers[-1].word != "head":
            raise SpecError(f"'{layers[-1].word}' comes after the head", layers[-1].word_span,
                            ["expected the head to be the model's last layer"])
        if not any(s.word in STRUCTURES for s in layers):
            raise SpecError("the model has no blocks or stages", model_span, ["expected `blocks N { ... }`"])

    def _drop_path_rates(self, layers: list[Stmt], stmt: Stmt | None) -> list[float]:
        """The model's drop-path rate of each block that follows the model-wide schedule,
        in order: constant, or rising linearly from 0 to the rate over those blocks."""
        self.dp_span = stmt.span if stmt is not None else None
        dp = match(stmt, SETTINGS["drop-path"], self.env) if stmt is not None else Matched({"rate": 0.0}, {})
        if dp["rate"] >= 1:
            raise SpecError(f"drop-path {dp['rate']:g} would drop every branch: expected a rate in [0, 1)",
                            dp.spans.get("rate", self.dp_span))
        total = 0
        for s in layers:
            if s.word in STRUCTURES:
                a = self._structure_args(s)
                if "drop-path" not in a:
                    total += a.get("depth", 0)
        rate = dp["rate"]
        if dp.get("schedule") == "constant":
            return [rate] * total
        return [rate * i / max(total - 1, 1) for i in range(total)]

    def _type(self, x: int | None) -> list[TensorType]:
        return [] if x is None else [self.g.node(x).out]

    def _resolve(self, op: type[OpDef], stmt: Stmt, args: Matched, ins: list[TensorType]) -> Any:
        return op.resolve(Resolve(stmt, args, ins, self.settings))

    def _layer(self, s: Stmt, x: int | None) -> int:
        op = WORDS[s.word]
        args = match(s, op.words[s.word], self.env)
        attrs = self._resolve(op, s, args, self._type(x))
        if attrs is None:  # `tokens none`, `pos-embed none`
            return x
        group = "head" if op is Head else "stem"
        if op is Head:
            x = self.g.add(Norm, "norm", (x,), NormAttrs(self.settings.norm, self.settings.eps), group, group, s.span)
        return self.g.add(op, s.alias or op.default_name, () if x is None else (x,), attrs, group, group, s.span)

    # -- structures ----------------------------------------------------------------------
    def _next(self, name: str, n: int = 1) -> int:
        k = self.counters.get(name, 0)
        self.counters[name] = k + n
        return k

    def _structure_args(self, s: Stmt) -> Matched:
        args = match(s, structure_schemas()[s.word], self.env)
        if args.get("depth", 0) > MAX_BLOCKS:
            raise SpecError(f"'{s.word}' repeats its body {args['depth']} times; at most {MAX_BLOCKS}",
                            args.spans.get("depth", s.span))
        return args

    def _structure(self, s: Stmt, x: int) -> int:
        args = self._structure_args(s)
        xt = self.g.node(x).out
        if xt.rank != 3:
            raise SpecError(f"'{s.word}' needs tokens, but the image has not been cut into patches yet", s.word_span,
                            ["expected a patch embedding (patchify, shift-tokenize or stem) before it"])
        name = structure_name(s)
        if s.word == "stage":
            if "depth" not in args:
                raise SpecError("'stage' is missing its depth", s.span, [f"expected `{structure_schemas()['stage'].usage}`"])
            si = self._next(name)
            prefix = f"{name}.{si}"
            x = self._transition(s, args, x, prefix, si)
            prefixes = [f"{prefix}.blocks.{b}" for b in range(args["depth"])]
            stage = prefix
        else:
            first = self._next(name, args["depth"])
            prefixes = [f"{name}.{first + b}" for b in range(args["depth"])]
            stage = name
        own = args.get("drop-path")
        if own is not None and own >= 1:
            raise SpecError(f"drop-path {own:g} would drop every branch: expected a rate in [0, 1)", args.spans["drop-path"])
        for b, prefix in enumerate(prefixes):
            rate = own if own is not None else self.rates.pop(0)
            x = self._block(x, prefix, s, self.env.bind(index=b), rate, stage)
        return x

    def _transition(self, s: Stmt, args: Matched, x: int, prefix: str, si: int) -> int:
        """A stage's downsample (and new position embedding) at its start."""
        xt = self.g.node(x).out
        kind = args.get("downsample")
        if kind is None:
            if args["dim"] != xt.dim:
                if si == 0:
                    raise SpecError(f"the first stage has dim {args['dim']} but the stem gives {xt.dim}", s.span,
                                    ["expected the first stage's dim to equal the patch embedding's"])
                raise SpecError(f"stage {si} needs a downsample ({', '.join(downsample_kinds())})", s.span,
                                ["expected e.g. `stage 128 depth 4 downsample merge { ... }`"])
        else:
            op = downsample_kinds()[kind]
            if self.settings.binary("transitions") and op.binarize != "transitions" and self.settings.binarize_span:
                raise SpecError(f"binarize covers the stage transitions, but a '{kind}' downsample has no binary form",
                                self.settings.binarize_span, ["expected `except transitions`, or `downsample merge`"])
            attrs = self._resolve(op, s, Matched({"dim": args["dim"], "kind": kind}, args.spans), [xt])
            group = f"{prefix}.downsample"
            x = self.g.add(op, group, (x,), attrs, group, prefix, s.span)
        if args.get("pos-embed"):
            from .ops.pos_embed import PosEmbed, PosEmbedAttrs

            group = f"{prefix}.downsample" if kind else prefix
            x = self.g.add(PosEmbed, f"{prefix}.pos_embed", (x,), PosEmbedAttrs("learned"), group, prefix, s.span)
        return x

    # -- blocks ----------------------------------------------------------------------------
    def _branches(self, s: Stmt) -> tuple[list[Branch], list[Stmt]]:
        """A block body as its residual branches (in order) and its modifiers."""
        roles = body_words()
        branches: list[Branch] = []
        modifiers: list[Stmt] = []
        first: dict[str, Stmt] = {}
        for b in s.body or ():
            op = roles.get(b.word)
            if op is None:
                message = (f"'{b.word}' belongs at the model level" if b.word in WORDS or b.word in SETTINGS
                           or b.word in STRUCTURES else f"unknown word '{b.word}'" + suggestion(b.word, roles))
                raise SpecError(message, b.word_span, [f"words of a block: {', '.join(roles)}"])
            slot = op.key or op.name
            if slot in first:
                raise SpecError(f"'{b.word}' is given twice in this block", b.word_span, [f"first at {first[slot].span}"])
            first[slot] = b
            if op.role in ("mixer", "layer"):
                branches.append(Branch(b))
            elif op.role == "modifier":
                modifiers.append(b)
            elif not branches or roles[branches[-1].mixer.word].role != "mixer":
                raise SpecError(f"'{b.word}' joins the residual branch of the mixer before it, and there is none",
                                b.word_span, ["expected it after a mixer, e.g. `mlp ratio 4; pool-branches 3x1`"])
            else:
                branches[-1].parallel.append(b)
        if not branches:
            raise SpecError("the block has no residual branch", s.span,
                            ["expected a mixer, e.g. `attention heads 6` or `mlp ratio 4`"])
        return branches, modifiers

    def _block(self, x: int, p: str, s: Stmt, env: Env, rate: float, stage: str) -> int:
        """One block: each mixer a pre-norm residual branch. A mixer whose output holds only
        the leading tokens (class attention) narrows the stream to them for the rest of the
        block; the other tokens rejoin, unchanged, at its end."""
        branches, modifiers = self._branches(s)
        saved, self.env = self.env, env
        rest: int | None = None
        try:
            norm = NormAttrs(self.settings.norm, self.settings.eps)
            for k, br in enumerate(branches, start=1):
                op = WORDS[br.mixer.word]
                if op.role == "layer":  # a layer in the body (T2T's soft split): on the stream, no norm or residual
                    attrs = self._resolve(op, br.mixer, match(br.mixer, op.words[br.mixer.word], env), [self.g.node(x).out])
                    x = self.g.add(op, f"{p}.{op.key}", (x,), attrs, p, stage, br.mixer.span)
                    continue
                h = self.g.add(Norm, f"{p}.norm{k}", (x,), norm, p, stage, br.mixer.span)
                inputs = (h, x) if op.reads_stream else (h,)
                attrs = self._resolve(op, br.mixer, match(br.mixer, op.words[br.mixer.word], env),
                                      [self.g.node(i).out for i in inputs])
                y = self.g.add(op, f"{p}.{op.key}", inputs, attrs, p, stage, br.mixer.span)
                if not op.residual:  # the op carries its own shortcut: its output is the stream
                    x = y
                    continue
                lead = self.g.node(y).out.tokens
                if lead < self.g.node(x).out.tokens:
                    if rest is not None:
                        raise SpecError(f"'{br.mixer.word}' narrows a block that is already narrowed", br.mixer.span)
                    rest = self.g.add(Slice, f"{p}.rest", (x,), SliceAttrs(lead), p, stage, br.mixer.span)
                    x = self.g.add(Slice, f"{p}.lead", (x,), SliceAttrs(0, lead), p, stage, br.mixer.span)
                for m in modifiers:
                    mop = WORDS[m.word]
                    mattrs = self._resolve(mop, m, match(m, mop.words[m.word], env), [self.g.node(y).out])
                    y = self.g.add(mop, f"{p}.{mop.member(k)}", (y,), mattrs, p, stage, m.span)
                if rate > 0:
                    y = self.g.add(DropPath, f"{p}.drop_path{k}", (y,), DropPathAttrs(rate), p, stage, self.dp_span)
                parts = [x, y]
                for par in br.parallel:
                    pop = WORDS[par.word]
                    pattrs = self._resolve(pop, par, match(par, pop.words[par.word], env), [self.g.node(h).out])
                    parts.append(self.g.add(pop, f"{p}.{pop.key}", (h,), pattrs, p, stage, par.span))
                x = self.g.add(Add, f"{p}.add{k}", tuple(parts), AddAttrs(), p, stage, br.mixer.span)
            if rest is not None:
                x = self.g.add(Concat, f"{p}.join", (x, rest), ConcatAttrs(), p, stage, s.span)
        finally:
            self.env = saved
        return x


# -- entry point -------------------------------------------------------------------
def load(spec: str | Path, model: str | None = None, overrides: Mapping[str, Any] | None = None,
         ) -> tuple[Graph, Sources]:
    """Read and lower a spec (a path, or spec text) into a graph."""
    loader = Loader()
    try:
        return _load(loader, spec, model, overrides or {}), loader.sources
    except SpecError as e:
        e.sources = loader.sources  # type: ignore[attr-defined]
        raise


def _load(loader: Loader, spec: str | Path, model: str | None, overrides: Mapping[str, Any]) -> Graph:
    text_given = isinstance(spec, str) and ("\n" in spec or "{" in spec) and not spec.endswith(".vg")
    if text_given:
        own = loader.load_text(str(spec), "<spec>", Path.cwd())
        path = "<spec>"
    else:
        p = Path(spec)
        try:
            exists = p.exists()
        except OSError as e:
            raise SpecError(f"cannot read spec '{_short(spec)}': {e.strerror or e}") from None
        if not exists:
            near = did_you_mean(p.name, [q.name for q in p.parent.glob("*.vg")]) if p.parent.is_dir() else None
            raise SpecError(f"no such spec file '{spec}'" + (f"; did you mean '{p.parent / near}'?" if near else ""))
        loader._seen.add(p.resolve())
        own = loader.load_file(p)
        path = _display(p)
    env = resolve_params(loader, overrides)
    if model is None:
        if not own:
            raise SpecError("the spec defines no model", Span(path, 1, 1, 1, 1), ["expected `model NAME { ... }`"])
        stem = Path(path).stem
        model = stem if stem in own else own[-1]
    stmts = flatten(loader, model, None)
    root = loader.models[model]
    params = {k: env.values[k] for k in sorted(env.values)}
    digest = hashlib.sha256(json.dumps({"model": model, "params": params,
                                        "sources": sorted(loader.texts.values())}, sort_keys=True,
                                       default=str).encode()).hexdigest()[:16]
    graph = Graph(model, SpecInfo(model, path, dict(loader.texts), params, digest))
    Builder(graph, env).build(stmts, root.name_span)
    return graph
