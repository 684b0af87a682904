"""AST -> IR. Reads a spec file and the files it `use`s, resolves parameters (with the
caller's overrides), flattens `extends`, checks every statement against one table of
word schemas, and expands blocks and stages into graph nodes in a canonical order:
input, stem, tokens, position embedding, blocks or stages, final norm, head.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .diagnostics import Sources, Span, SpecError, did_you_mean, suggestion
from .ir import Graph, Op, SpecInfo
from .syntax import Arg, Model, Module, Param, Stmt, Use, parse

# -- word schemas ------------------------------------------------------------------
# Positional slots: "int:key", "num:key", "lit:x", "arrow", "choice:key:a|b",
# "choices:key:a|b" (one or more), "kernels:key" (one or more); a leading "?" makes a slot
# optional. Options are `key value` pairs after the positional slots; flags are bare words.


@dataclass(frozen=True)
class Schema:
    slots: tuple[str, ...] = ()
    options: Mapping[str, str] = field(default_factory=dict)
    flags: frozenset[str] = frozenset()
    body: bool = False
    usage: str = ""


MODEL_WORDS: dict[str, Schema] = {
    "input": Schema(("int:channels", "lit:x", "int:height", "lit:x", "int:width"), usage="input 3 x image x image"),
    "patchify": Schema(("int:patch", "arrow", "int:dim"), {"bias": "bool"}, usage="patchify patch -> 192"),
    "shift-tokenize": Schema(("int:patch", "arrow", "int:dim"), usage="shift-tokenize patch -> 192"),
    "stem": Schema(("choice:kind:conv", "int:patch", "arrow", "int:dim"),
                   {"precision": "choice:fp|binary", "bias": "bool"}, usage="stem conv 4 -> 64 precision fp"),
    "tokens": Schema(("choices:tokens:cls|distill|none",), usage="tokens cls distill"),
    "pos-embed": Schema(("choice:kind:learned|none",), usage="pos-embed learned"),
    "norm": Schema(("choice:kind:layer|batch",), {"eps": "num"}, usage="norm layer eps 1e-6"),
    "drop-path": Schema(("num:rate", "?choice:schedule:linear|constant"), usage="drop-path 0.1 linear"),
    "blocks": Schema(("int:depth",), body=True, usage="blocks 12 { attention heads 3; mlp ratio 4 }"),
    "stage": Schema(("int:dim",), {"depth": "int", "downsample": "choice:pit|merge|spt"}, frozenset({"pos-embed"}),
                    body=True, usage="stage 128 depth 4 downsample merge pos-embed { ... }"),
    "head": Schema(("choice:kind:token|gap|token+distill", "arrow", "int:classes"), usage="head token -> classes"),
    "binarize": Schema(("choices:what:weights|activations|attention|none",
                        "?except", "?choices:exempt:stem|blocks|transitions|head"),
                       usage="binarize weights activations attention except stem head"),
}
BLOCK_WORDS: dict[str, Schema] = {
    "attention": Schema((), {"heads": "int", "head-dim": "int", "qkv-bias": "bool", "reduce": "int"},
                        usage="attention heads 6 head-dim 64 qkv-bias true reduce 1"),
    "lsa": Schema((), {"heads": "int", "head-dim": "int", "qkv-bias": "bool"}, usage="lsa heads 12 head-dim 16"),
    "mlp": Schema((), {"ratio": "num", "hidden": "int"}, usage="mlp ratio 4 | mlp hidden 1536"),
    "pool-branches": Schema(("kernels:kernels",), usage="pool-branches 3x1 1x3 5x1 1x5"),
    "affine-residual": Schema((), {"init": "num"}, usage="affine-residual init 0.1"),
}
BOOLS = {"true": True, "false": False, "yes": True, "no": False}
_TYPE_NAMES = {"int": "an integer", "num": "a number", "bool": "true or false", "str": "a string"}


def _arg_type(arg: Arg) -> str:
    return {"int": "an integer", "float": "a number", "string": "a string", "word": f"the word '{arg.value}'",
            "arrow": "'->'", "kernel": f"the kernel {arg.text()}", "expr": "an expression"}[arg.kind]


class Env:
    """Resolved parameter values and where each came from."""

    def __init__(self, values: dict[str, Any], spans: dict[str, Span | None]) -> None:
        self.values = values
        self.spans = spans

    def value(self, arg: Arg) -> Any:
        if arg.kind in ("int", "float", "string"):
            return arg.value
        if arg.kind == "word":
            if arg.value in BOOLS:
                return BOOLS[arg.value]
            if arg.value not in self.values:
                raise SpecError(f"unknown name '{arg.value}'" + suggestion(arg.value, self.values),
                                arg.span, [f"parameters here: {', '.join(sorted(self.values)) or 'none'}"])
            return self.values[arg.value]
        if arg.kind == "expr":
            op, a, b = arg.value
            x, y = self.value(a), self.value(b)
            for v, part in ((x, a), (y, b)):
                if isinstance(v, (str, bool)) or not isinstance(v, (int, float)):
                    raise SpecError(f"expected a number in this expression, found {v!r}", part.span)
            if op == "+":
                return x + y
            if op == "-":
                return x - y
            if op == "*":
                return x * y
            if y == 0:
                raise SpecError("division by zero", arg.span)
            return x // y if isinstance(x, int) and isinstance(y, int) and x % y == 0 else x / y
        raise SpecError(f"expected a value, found {_arg_type(arg)}", arg.span)


def _typed(env: Env, arg: Arg, kind: str, what: str) -> Any:
    """Evaluate `arg` and check it has type `kind` (int, num, bool, choice:a|b)."""
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split("|")
        if arg.kind != "word" or arg.value not in choices:
            found = arg.value if arg.kind == "word" else arg.text()
            raise SpecError(f"{what} expects one of {', '.join(choices)}, found '{found}'"
                            + (suggestion(str(found), choices) if arg.kind == "word" else ""), arg.span)
        return arg.value
    if arg.kind == "arrow" or arg.kind == "kernel":
        raise SpecError(f"{what} expects {_TYPE_NAMES[kind]}, found {_arg_type(arg)}", arg.span)
    v = env.value(arg)
    ok = {"int": isinstance(v, int) and not isinstance(v, bool),
          "num": isinstance(v, (int, float)) and not isinstance(v, bool),
          "bool": isinstance(v, bool)}[kind]
    if not ok:
        shown = f"'{arg.value}' = {v!r}" if arg.kind == "word" and arg.value not in BOOLS else repr(v)
        raise SpecError(f"{what} expects {_TYPE_NAMES[kind]}, found {shown}", arg.span)
    if kind == "int" and v <= 0:
        raise SpecError(f"{what} expects a positive integer, found {v}", arg.span)
    if kind == "num" and v < 0:
        raise SpecError(f"{what} expects a non-negative number, found {v}", arg.span)
    return float(v) if kind == "num" else v


def match(stmt: Stmt, schema: Schema, env: Env) -> dict[str, Any]:
    """Check a statement's arguments against its schema; return them by key."""
    out: dict[str, Any] = {}
    args = list(stmt.args)
    i = 0
    usage = f"expected `{schema.usage}`"
    for slot in schema.slots:
        optional = slot.startswith("?")
        slot = slot.lstrip("?")
        kind, _, rest = slot.partition(":")
        key, _, choices = rest.partition(":")
        arg = args[i] if i < len(args) else None
        if kind == "except":
            if arg is not None and arg.kind == "word" and arg.value == "except":
                out["except"] = True
                i += 1
            continue
        if kind == "choices" and optional and not out.get("except"):
            continue
        if arg is None:
            if optional:
                continue
            raise SpecError(f"'{stmt.word}' is missing its {key or slot}", stmt.span, [usage])
        if kind == "lit":
            if arg.kind != "word" or arg.value != key:
                raise SpecError(f"expected '{key}' here, found {_arg_type(arg)}", arg.span, [usage])
            i += 1
        elif kind == "arrow":
            if arg.kind != "arrow":
                raise SpecError(f"expected '->' here, found {_arg_type(arg)}", arg.span, [usage])
            i += 1
        elif kind == "choice":
            if optional and not (arg.kind == "word" and arg.value in choices.split("|")):
                continue
            out[key] = _typed(env, arg, f"choice:{choices}", f"'{stmt.word}'")
            i += 1
        elif kind == "choices":
            vals = []
            allowed = choices.split("|")
            while i < len(args) and args[i].kind == "word" and args[i].value != "except":
                vals.append(_typed(env, args[i], f"choice:{choices}", f"'{stmt.word}'"))
                i += 1
            if not vals:
                raise SpecError(f"'{stmt.word}' expects one or more of {', '.join(allowed)}",
                                arg.span if arg else stmt.span, [usage])
            out[key] = tuple(vals)
        elif kind == "kernels":
            vals = []
            while i < len(args) and args[i].kind == "kernel":
                vals.append(args[i].value)
                i += 1
            if not vals:
                raise SpecError(f"'{stmt.word}' expects kernels like 3x1, found {_arg_type(arg)}", arg.span, [usage])
            out[key] = tuple(vals)
        else:
            out[key] = _typed(env, arg, kind, f"'{stmt.word}'")
            i += 1
    while i < len(args):
        arg = args[i]
        name = arg.value if arg.kind == "word" else None
        if name in schema.flags:
            out[name] = True
            i += 1
            continue
        if name in schema.options:
            if i + 1 >= len(args):
                raise SpecError(f"option '{name}' of '{stmt.word}' needs a value", arg.span, [usage])
            out[name] = _typed(env, args[i + 1], schema.options[name], f"'{name}'")
            i += 2
            continue
        known = list(schema.options) + list(schema.flags)
        if name is not None and known:
            raise SpecError(f"'{stmt.word}' has no option '{name}'" + suggestion(name, known), arg.span,
                            [f"options of '{stmt.word}': {', '.join(known)}"])
        raise SpecError(f"unexpected {_arg_type(arg)} after '{stmt.word}'", arg.span, [usage])
    if schema.body and stmt.body is None:
        raise SpecError(f"'{stmt.word}' needs a body in braces", stmt.span, [usage])
    if not schema.body and stmt.body is not None:
        raise SpecError(f"'{stmt.word}' takes no body", stmt.span)
    return out


# -- loading files -----------------------------------------------------------------
@dataclass
class Loaded:
    sources: Sources
    texts: dict[str, str]
    params: dict[str, Param]
    models: dict[str, Model]
    main_models: list[str]


def _display(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Loader:
    def __init__(self) -> None:
        self.sources = Sources()
        self.texts: dict[str, str] = {}
        self.params: dict[str, Param] = {}
        self.models: dict[str, Model] = {}
        self._seen: set[Path] = set()

    def load_file(self, path: Path) -> list[str]:
        try:
            text = path.read_text()
        except OSError as e:
            raise SpecError(f"cannot read spec '{path}': {e.strerror or e}") from None
        return self.load_text(text, _display(path), path.parent)

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
        target = (base_dir / use.path)
        if not target.is_file():
            here = sorted(p.name for p in base_dir.glob("*.vg")) if base_dir.is_dir() else []
            raise SpecError(f"cannot find '{use.path}'" + suggestion(Path(use.path).name, here), use.span,
                            [f"looked in {_display(base_dir) or '.'}/"])
        key = target.resolve()
        if key in self._seen:
            return
        self._seen.add(key)
        self.load_file(target)


def resolve_params(loader: Loader, overrides: Mapping[str, Any]) -> Env:
    values: dict[str, Any] = {}
    spans: dict[str, Span | None] = {}
    env = Env(values, spans)
    for name, p in loader.params.items():
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


STEM_WORDS = ("patchify", "shift-tokenize", "stem")  # a child's patch embedding replaces the parent's


def flatten(loader: Loader, name: str, span: Span | None) -> list[Stmt]:
    """The model's statements with its `extends` chain merged (child words replace parent words;
    any blocks/stage statement in the child replaces all of the parent's)."""
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
    merged: list[Stmt] = []
    for m in reversed(lineage):
        child_words = {s.word for s in m.body}
        structural = bool(child_words & {"blocks", "stage"})
        kept = [s for s in merged if s.word not in child_words and not (structural and s.word in ("blocks", "stage"))]
        if child_words & set(STEM_WORDS):
            kept = [s for s in kept if s.word not in STEM_WORDS]
        merged = kept + list(m.body)
    return merged


# -- building the graph -------------------------------------------------------------
class Builder:
    def __init__(self, graph: Graph, env: Env) -> None:
        self.g = graph
        self.env = env

    def build(self, stmts: list[Stmt], model_span: Span) -> None:
        by_word: dict[str, Stmt] = {}
        structure: list[Stmt] = []
        for s in stmts:
            if s.word not in MODEL_WORDS:
                if s.word in BLOCK_WORDS:
                    raise SpecError(f"'{s.word}' belongs inside a blocks or stage body", s.word_span,
                                    [f"expected `blocks N {{ {s.word} ... }}`"])
                raise SpecError(f"unknown word '{s.word}'" + suggestion(s.word, MODEL_WORDS), s.word_span,
                                [f"words of a model: {', '.join(MODEL_WORDS)}"])
            if s.word in ("blocks", "stage"):
                structure.append(s)
                continue
            if s.word in by_word:
                raise SpecError(f"'{s.word}' is given twice in this model", s.word_span,
                                [f"first given at {by_word[s.word].span}"])
            by_word[s.word] = s
        a = {w: match(s, MODEL_WORDS[w], self.env) for w, s in by_word.items()}
        for required in ("input", "head"):
            if required not in a:
                raise SpecError(f"the model has no '{required}' statement", model_span,
                                [f"expected e.g. `{MODEL_WORDS[required].usage}`"])
        stems = [w for w in ("patchify", "shift-tokenize", "stem") if w in a]
        if len(stems) != 1:
            raise SpecError("the model needs exactly one patch embedding (patchify, shift-tokenize or stem), "
                            f"found {len(stems)}", by_word[stems[1]].word_span if len(stems) > 1 else model_span)
        if not structure:
            raise SpecError("the model has no blocks or stages", model_span, ["expected `blocks N { ... }`"])
        kinds = {s.word for s in structure}
        if len(kinds) > 1:
            raise SpecError("a model has either `blocks` or `stage`s, not both", structure[-1].word_span)
        if kinds == {"blocks"} and len(structure) > 1:
            raise SpecError("'blocks' is given twice in this model", structure[1].word_span,
                            ["use stages for several groups of blocks"])

        norm = a.get("norm", {"kind": "layer"})
        self.norm_kind = norm["kind"]
        self.eps = norm.get("eps", 1e-6 if self.norm_kind == "layer" else 1e-5)
        bz = a.get("binarize", {"what": ("none",)})
        what = tuple(w for w in bz["what"] if w != "none")
        exempt = set(bz.get("exempt", ()))
        self.block_binary = () if "blocks" in exempt else what
        self.transition_binary = () if "transitions" in exempt else what
        self.binarize_span = by_word["binarize"].span if "binarize" in by_word else None

        x = self.g.add(Op.INPUT, "input", (), a["input"], "stem", by_word["input"].span)
        stem_word = stems[0]
        sa, sspan = a[stem_word], by_word[stem_word].span
        if stem_word == "patchify":
            x = self.g.add(Op.PATCHIFY, "patch_embed", (x,), {"patch": sa["patch"], "dim": sa["dim"],
                           "bias": sa.get("bias", True), "norm": "none", "binary": ()}, "stem", sspan)
        elif stem_word == "shift-tokenize":
            x = self.g.add(Op.SHIFT_TOKENIZE, "patch_embed", (x,), {"patch": sa["patch"], "dim": sa["dim"],
                           "eps": 1e-5}, "stem", sspan)
        else:
            binary = ("weights", "activations") if sa.get("precision", "fp") == "binary" else ()
            x = self.g.add(Op.PATCHIFY, "patch_embed", (x,), {"patch": sa["patch"], "dim": sa["dim"],
                           "bias": sa.get("bias", True), "norm": self.norm_kind, "eps": self.eps,
                           "binary": binary}, "stem", sspan)
        toks = tuple(t for t in a.get("tokens", {"tokens": ()})["tokens"] if t != "none")
        if toks:
            if toks not in (("cls",), ("cls", "distill")):
                raise SpecError(f"tokens {' '.join(toks)}: expected `tokens cls` or `tokens cls distill`",
                                by_word["tokens"].span)
            x = self.g.add(Op.TOKENS, "tokens", (x,), {"tokens": toks}, "stem", by_word["tokens"].span)
        self.pos = a.get("pos-embed", {"kind": "none"})["kind"] == "learned"
        if self.pos:
            x = self.g.add(Op.POS_EMBED, "pos_embed", (x,), {}, "stem", by_word["pos-embed"].span)

        dp = a.get("drop-path", {"rate": 0.0})
        self.dp_span = by_word["drop-path"].span if "drop-path" in by_word else None
        plan = self._plan(structure, sa["dim"])
        total = sum(len(st["blocks"]) for st in plan)
        rates = [dp["rate"] if dp.get("schedule") == "constant" else
                 (dp["rate"] * i / max(total - 1, 1)) for i in range(total)]
        k = 0
        for si, st in enumerate(plan):
            if st["downsample"] is not None:
                x = self._downsample(x, si, st)
            for bi, body in enumerate(st["blocks"]):
                prefix = f"blocks.{bi}" if st["flat"] else f"stages.{si}.blocks.{bi}"
                x = self._block(x, prefix, body, rates[k], st["span"])
                k += 1
        x = self.g.add(Op.NORM, "norm", (x,), {"kind": self.norm_kind, "eps": self.eps}, "head", by_word["head"].span)
        self.g.add(Op.HEAD, "head", (x,), {"kind": a["head"]["kind"], "classes": a["head"]["classes"]}, "head",
                   by_word["head"].span)

    def _plan(self, structure: list[Stmt], stem_dim: int) -> list[dict[str, Any]]:
        plan = []
        prev_dim = stem_dim
        for si, s in enumerate(structure):
            if s.word == "blocks":
                a = match(s, MODEL_WORDS["blocks"], self.env)
                plan.append({"flat": True, "blocks": [self._body(s)] * a["depth"], "downsample": None, "span": s.span})
                continue
            a = match(s, MODEL_WORDS["stage"], self.env)
            if "depth" not in a:
                raise SpecError("'stage' is missing its depth", s.span, [f"expected `{MODEL_WORDS['stage'].usage}`"])
            if si == 0:
                if "downsample" in a:
                    raise SpecError("the first stage cannot downsample; the stem sets its grid", s.span)
                if a["dim"] != stem_dim:
                    raise SpecError(f"the first stage has dim {a['dim']} but the stem gives {stem_dim}", s.span,
                                    ["expected the first stage's dim to equal the patch embedding's"])
            elif "downsample" not in a:
                raise SpecError(f"stage {si} needs a downsample (pit, merge or spt)", s.span,
                                ["expected e.g. `stage 128 depth 4 downsample merge { ... }`"])
            plan.append({"flat": False, "blocks": [self._body(s)] * a["depth"], "downsample": a.get("downsample"),
                         "dim": a["dim"], "prev": prev_dim, "pos": a.get("pos-embed", False), "span": s.span})
            prev_dim = a["dim"]
        return plan

    def _body(self, s: Stmt) -> dict[str, Any]:
        found: dict[str, Any] = {}
        spans: dict[str, Span] = {}
        for b in s.body or ():
            if b.word not in BLOCK_WORDS:
                message = (f"'{b.word}' belongs at the model level" if b.word in MODEL_WORDS
                           else f"unknown word '{b.word}'" + suggestion(b.word, BLOCK_WORDS))
                raise SpecError(message, b.word_span,
                                [f"words of a block: {', '.join(BLOCK_WORDS)}"])
            key = "attention" if b.word in ("attention", "lsa") else b.word
            if key in found:
                raise SpecError(f"'{b.word}' is given twice in this block", b.word_span, [f"first at {spans[key]}"])
            found[key] = (b.word, match(b, BLOCK_WORDS[b.word], self.env), b)
            spans[key] = b.span
        for need in ("attention", "mlp"):
            if need not in found:
                raise SpecError(f"the block has no '{need}'", s.span, [f"expected `{BLOCK_WORDS[need].usage}`"])
        word, at, st = found["attention"]
        if "heads" not in at:
            raise SpecError(f"'{word}' is missing its heads", st.span, [f"expected `{BLOCK_WORDS[word].usage}`"])
        _, ma, mst = found["mlp"]
        if ("ratio" in ma) == ("hidden" in ma):
            raise SpecError("'mlp' takes exactly one of ratio or hidden", mst.span, [f"expected `{BLOCK_WORDS['mlp'].usage}`"])
        return found

    def _block(self, x: int, p: str, body: dict[str, Any], rate: float, span: Span) -> int:
        g = self.g
        word, at, ast = body["attention"]
        dim = self._dim(x)
        _, ma, mst = body["mlp"]
        hidden = ma["hidden"] if "hidden" in ma else round(ma["ratio"] * dim)
        norm = {"kind": self.norm_kind, "eps": self.eps}
        h = g.add(Op.NORM, f"{p}.norm1", (x,), norm, p, ast.span)
        attn = g.add(Op.ATTENTION, f"{p}.attn", (h,), {
            "heads": at["heads"], "head_dim": at.get("head-dim"),
            # BinaryViT's q, k, v (and K/V reduction) have no bias (official QuantizeLinear, bias=False)
            "qkv_bias": at.get("qkv-bias", not self.block_binary),
            "lsa": word == "lsa", "reduce": at.get("reduce", 1), "binary": self.block_binary}, p, ast.span)
        affine = body.get("affine-residual")
        if affine:
            attn = g.add(Op.AFFINE, f"{p}.affine1", (attn,), {"init": affine[1].get("init", 0.1)}, p, affine[2].span)
        if rate > 0:
            attn = g.add(Op.DROP_PATH, f"{p}.drop_path1", (attn,), {"rate": rate}, p, self.dp_span)
        x = g.add(Op.ADD, f"{p}.add1", (x, attn), {}, p, ast.span)
        h2 = g.add(Op.NORM, f"{p}.norm2", (x,), norm, p, mst.span)
        m = g.add(Op.MLP, f"{p}.mlp", (h2,), {"hidden": hidden, "binary": self.block_binary}, p, mst.span)
        if affine:
            m = g.add(Op.AFFINE, f"{p}.affine2", (m,), {"init": affine[1].get("init", 0.1)}, p, affine[2].span)
        if rate > 0:
            m = g.add(Op.DROP_PATH, f"{p}.drop_path2", (m,), {"rate": rate}, p, self.dp_span)
        branches = [x, m]
        pool = body.get("pool-branches")
        if pool:
            branches.append(g.add(Op.POOL_BRANCHES, f"{p}.pool", (h2,), {"kernels": pool[1]["kernels"]}, p,
                                  pool[2].span))
        return g.add(Op.ADD, f"{p}.add2", tuple(branches), {}, p, mst.span)

    def _dim(self, x: int) -> int:
        """The channel width flowing out of node x, read from the op attributes upstream."""
        node = self.g.node(x)
        while node.attr("dim") is None:
            node = self.g.node(node.inputs[0])
        return node.attr("dim")

    def _downsample(self, x: int, si: int, st: dict[str, Any]) -> int:
        kind = st["downsample"]
        group = f"stages.{si}.downsample"
        binary = self.transition_binary if kind == "merge" else ()
        if kind != "merge" and self.transition_binary and self.binarize_span is not None:
            raise SpecError(f"binarize covers the stage transitions, but a '{kind}' downsample has no binary form",
                            self.binarize_span, ["expected `except transitions`, or `downsample merge`"])
        x = self.g.add(Op.DOWNSAMPLE, f"stages.{si}.downsample", (x,),
                       {"kind": kind, "dim": st["dim"], "binary": binary}, group, st["span"])
        if st["pos"]:
            x = self.g.add(Op.POS_EMBED, f"stages.{si}.pos_embed", (x,), {}, group, st["span"])
        return x


# -- entry point -------------------------------------------------------------------
def load(spec: str | Path, model: str | None = None, overrides: Mapping[str, Any] | None = None,
         ) -> tuple[Graph, Sources]:
    """Read and lower a spec (a path, or spec text) into an unchecked graph."""
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
        if not p.is_file():
            near = did_you_mean(p.name, [q.name for q in p.parent.glob("*.vg")]) if p.parent.is_dir() else None
            raise SpecError(f"no such spec file '{spec}'" + (f"; did you mean '{p.parent / near}'?" if near else ""))
        loader._seen.add(p.resolve())
        own = loader.load_file(p)
        path = _display(p)
    env = resolve_params(loader, overrides)
    if model is None:
        if not own:
            raise SpecError("the spec defines no model", None, ["expected `model NAME { ... }`"], where=path)
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
