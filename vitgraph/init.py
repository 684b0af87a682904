"""Initialisation policies: how a model's parameters start, said in its spec.

    init xavier                        # the model's policy
    init tokens normal 1e-6            # one op kind's tensors drawn otherwise

Every parameter of an op unit has either a constant start (norm weights 1, LSA
temperature 1/sqrt(head_dim), RPReLU slope 0.25, ...) or an init role; a policy maps each
role to a distribution. One policy, one place: the torch backend fills its modules with
`initialize` and the ONNX backend's untrained export takes `initial_state`; both draw
through `draw` below.

Policies, as each paper's official code actually runs:
  * `timm` — DeiT (facebookresearch/deit on timm 0.3.2) and timm's Swin, CaiT and T2T-ViT:
    Linear weights trunc_normal(std .02, cut at +-2), biases 0; Conv layers (the patch
    embedding) keep PyTorch's default; position embeddings, class/distillation tokens and
    relative-position tables trunc_normal(.02);
  * `xavier` — "Vision Transformer for Small-Size Datasets" (aanna0701/SPT_LSA_ViT
    models/vit.py, pit.py, cait.py `init_weights`): Linear and Conv weights xavier_normal,
    biases 0; position embeddings, class tokens and talking-heads matrices N(0, 1)
    (torch.randn). Its ViT and CaiT embed patches with nn.Linear over flattened patches,
    whose fan-out is the dim, not dim x p x p as for PiT's Conv2d: `patchify ... fans linear`;
  * `torch-default` — PyTorch's own layer init: weights and biases U(+-1/sqrt(fan_in));
    position embeddings and tables trunc_normal(.02). BinaryViT's official code trains
    from this (its `init_weights` is never applied) with the DeiT-S class token at
    normal(1e-6): `init torch-default; init tokens normal 1e-6`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from .diagnostics import SpecError, suggestion
from .lang import Env, typed
from .syntax import Stmt

if TYPE_CHECKING:
    import torch

    from .ir import Graph
    from .ops import Param

USAGE = "init xavier | init tokens normal 1e-6"
ROLES = ("linear.weight", "linear.bias", "conv.weight", "conv.bias", "embedding", "token", "table", "mix")


@dataclass(frozen=True)
class Rule:
    """One distribution: trunc-normal (std, cut at +-2 like timm's), normal (std),
    xavier-normal, torch-default (U(+-1/sqrt(fan_in))) or zeros."""

    dist: str
    std: float | None = None

    def __str__(self) -> str:
        return self.dist if self.std is None else f"{self.dist}({self.std:g})"


DISTS = {"trunc-normal": True, "normal": True, "xavier-normal": False, "torch-default": False, "zeros": False}
_TRUNC, _ZERO, _TORCH = Rule("trunc-normal", 0.02), Rule("zeros"), Rule("torch-default")
POLICIES: dict[str, dict[str, Rule]] = {
    "timm": {"linear.weight": _TRUNC, "linear.bias": _ZERO, "conv.weight": _TORCH, "conv.bias": _TORCH,
             "embedding": _TRUNC, "token": _TRUNC, "table": _TRUNC, "mix": _TRUNC},
    "xavier": {"linear.weight": Rule("xavier-normal"), "linear.bias": _ZERO, "conv.weight": Rule("xavier-normal"),
               "conv.bias": _ZERO, "embedding": Rule("normal", 1.0), "token": Rule("normal", 1.0), "table": _TRUNC,
               "mix": Rule("normal", 1.0)},
    "torch-default": {"linear.weight": _TORCH, "linear.bias": _TORCH, "conv.weight": _TORCH, "conv.bias": _TORCH,
                      "embedding": _TRUNC, "token": _TRUNC, "table": _TRUNC, "mix": _TORCH},
}
BIAS_ROLES = ("linear.bias", "conv.bias")


@dataclass(frozen=True)
class InitSpec:
    """A model's policy and its per-op-kind exceptions (op name -> a policy or a rule;
    a rule leaves biases to the policy)."""

    policy: str = "timm"
    overrides: tuple[tuple[str, str | Rule], ...] = ()

    def rule(self, op: str, role: str) -> Rule:
        for name, how in self.overrides:
            if name == op:
                if isinstance(how, str):
                    return POLICIES[how][role]
                if role not in BIAS_ROLES:
                    return how
        return POLICIES[self.policy][role]

    def __str__(self) -> str:
        return "; ".join([self.policy] + [f"{op} {how}" for op, how in self.overrides])


def resolve(stmts: list[Stmt], env: Env) -> InitSpec:
    """The `init` statements of a model -> its InitSpec (timm when there are none)."""
    from .ops import WORDS

    policy = "timm"
    overrides: list[tuple[str, str | Rule]] = []
    for s in stmts:
        args = list(s.args)
        if not args or args[0].kind != "word":
            raise SpecError("'init' expects a policy or an op word", s.span,
                            [f"policies: {', '.join(POLICIES)}", f"expected `{USAGE}`"])
        head = args[0].value
        if head in POLICIES:
            if len(args) > 1:
                raise SpecError(f"unexpected {args[1].text()!r} after 'init {head}'", args[1].span, [f"expected `{USAGE}`"])
            policy = head
            continue
        if head not in WORDS:
            raise SpecError(f"'init' expects a policy or an op word, found '{head}'"
                            + suggestion(head, list(POLICIES) + list(WORDS)), args[0].span,
                            [f"policies: {', '.join(POLICIES)}"])
        overrides.append((WORDS[head].name, _rule(s, args[1:], env)))
    return InitSpec(policy, tuple(overrides))


def _rule(s: Stmt, args: list[Any], env: Env) -> str | Rule:
    if not args or args[0].kind != "word" or (args[0].value not in POLICIES and args[0].value not in DISTS):
        found = args[0].text() if args else "nothing"
        raise SpecError(f"'init {s.args[0].value}' expects a policy or a distribution, found {found}",
                        args[0].span if args else s.span,
                        [f"policies: {', '.join(POLICIES)}; distributions: trunc-normal STD, normal STD, "
                         "xavier-normal, torch-default, zeros"])
    name = args[0].value
    wants_std = DISTS.get(name, False)
    if len(args) != 1 + wants_std:
        raise SpecError(f"'{name}' takes {'a standard deviation' if wants_std else 'no value'}",
                        args[-1].span, [f"expected `{USAGE}`"])
    if name in POLICIES:
        return name
    return Rule(name, typed(env, args[1], "num", f"'{name}'") if wants_std else None)


# -- drawing -------------------------------------------------------------------------------------
def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """PyTorch's fan-in and fan-out of a weight: (out, in, *kernel) -> in*k, out*k."""
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def draw(t: "torch.Tensor", param: "Param", rule: Rule, generator: "torch.Generator | None" = None) -> None:
    """Fill `t` in place from `rule` (for the parameter `param`)."""
    import torch

    with torch.no_grad():
        if rule.dist == "zeros":
            t.zero_()
        elif rule.dist == "normal":
            t.normal_(0.0, rule.std, generator=generator)
        elif rule.dist == "trunc-normal":
            t.normal_(0.0, rule.std, generator=generator)
            # timm's trunc_normal_ cuts at a=-2, b=2: redraw what falls outside. Beyond 10
            # standard deviations (std .02: 100) nothing ever does (p < 1e-23), so no pass.
            while 2.0 < 10 * rule.std and bool((bad := t.abs() > 2.0).any()):
                t[bad] = torch.empty(int(bad.sum()), dtype=t.dtype).normal_(0.0, rule.std, generator=generator)
        elif rule.dist == "xavier-normal":
            fan_in, fan_out = _fans(param.shape)
            fan_out = param.fan_out or fan_out
            t.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        elif rule.dist == "torch-default":
            fan_in = param.fan_in if param.fan_in is not None else _fans(param.shape)[0]
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            t.uniform_(-bound, bound, generator=generator)
        else:
            raise ValueError(f"unknown distribution {rule.dist!r}")


def _plan(graph: "Graph") -> Iterator[tuple[str, "Param", Rule | None]]:
    """Every parameter in node order with the rule that draws it (None: a constant start)."""
    from .ops import node_params

    spec: InitSpec = graph.init or InitSpec()
    for node in graph:
        for key, p in node_params(graph, node).items():
            yield key, p, (None if not isinstance(p.init, str) else spec.rule(node.op.name, p.init))


def initialize(tensors: Mapping[str, "torch.Tensor"], graph: "Graph",
               generator: "torch.Generator | None" = None) -> None:
    """Fill a model's parameters and buffers (by state-dict key) as the graph's policy says."""
    from .ops import buffer_specs

    for key, p, rule in _plan(graph):
        if rule is None:
            tensors[key].detach().fill_(float(p.init))
        else:
            draw(tensors[key].detach(), p, rule, generator)
    for key, b in buffer_specs(graph).items():
        tensors[key].detach().fill_(b.fill)


def initial_state(graph: "Graph", seed: int = 0) -> dict[str, "torch.Tensor"]:
    """A fresh state dict for the graph, drawn from its policy with a generator seeded `seed`."""
    import torch

    from .ops import buffer_specs, param_specs

    tensors = {k: torch.empty(p.shape) for k, p in param_specs(graph).items()}
    tensors |= {k: torch.empty(b.shape, dtype=getattr(torch, b.dtype)) for k, b in buffer_specs(graph).items()}
    initialize(tensors, graph, torch.Generator().manual_seed(seed))
    return tensors
