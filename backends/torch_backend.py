"""The PyTorch backend: a checked vitgraph IR -> a trainable nn.Module.

Submodules sit at the nodes' dotted names, so the state-dict keys are exactly
`vitgraph.param_table(g) | vitgraph.buffer_table(g)`; for the DeiT/ViT specs these are
the keys of the DeiT (Touvron et al. 2020) and timm checkpoints (`cls_token`,
`pos_embed`, `patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, `head_dist.weight`),
which therefore load with strict=True and no mapping.

The forward pass runs the graph's nodes in their stable topological order; the op
modules live in backends/_torch_layers.py (full precision) and backends/_torch_binary.py
(BinaryViT's binarization).
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor, nn

from vitgraph.ir import Graph, Node, Op, TensorType
from vitgraph.ops import input_types

from . import _torch_layers as L
from ._torch_binary import trunc_normal_

Builder = Callable[[Node, list[TensorType]], nn.Module]


def _attention(node: Node, ins: list[TensorType]) -> nn.Module:
    return L.BinaryAttention(node, ins) if node.binary else L.Attention(node, ins)


def _mlp(node: Node, ins: list[TensorType]) -> nn.Module:
    return L.BinaryMlp(node, ins) if node.binary else L.Mlp(node, ins)


def _norm(node: Node, ins: list[TensorType]) -> nn.Module:
    return L.token_norm(node.attr("kind"), ins[0].dim, node.attr("eps"))


def _downsample(node: Node, ins: list[TensorType]) -> nn.Module:
    kinds = {"pit": L.PitDownsample, "spt": L.SptDownsample, "merge": L.MergeDownsample}
    return kinds[node.attr("kind")](node, ins)


# Ops whose state lives in a module at the node's name. TOKENS, POS_EMBED and HEAD keep
# their parameters at names fixed by the DeiT checkpoints (cls_token, pos_embed, head,
# head_dist) and are handled by GraphModule itself; INPUT and ADD have no state.
MODULE_BUILDERS: dict[Op, Builder] = {
    Op.PATCHIFY: L.PatchEmbed,
    Op.SHIFT_TOKENIZE: L.ShiftedPatchTokenize,
    Op.NORM: _norm,
    Op.ATTENTION: _attention,
    Op.MLP: _mlp,
    Op.POOL_BRANCHES: L.PoolBranches,
    Op.AFFINE: lambda node, ins: L.Affine(ins[0].dim, node.attr("init")),
    Op.DROP_PATH: lambda node, ins: L.DropPath(node.attr("rate")),
    Op.DOWNSAMPLE: _downsample,
}
HANDLED_OPS = frozenset(MODULE_BUILDERS) | {Op.INPUT, Op.TOKENS, Op.POS_EMBED, Op.ADD, Op.HEAD}


class Namespace(nn.Module):
    """A container on the dotted path of a node (e.g. `blocks`, `blocks.0`, `stages.1`)."""


def _add(*xs: Tensor) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _add_parameter(owner: nn.Module, attr: str, x: Tensor) -> Tensor:
    return x + getattr(owner, attr)


class GraphModule(nn.Module):
    """The network of one graph. forward(images (B, C, H, W)) -> logits (B, classes); a
    cls+distill head returns (cls_logits, dist_logits) in training mode and their
    average in eval mode (DeiT)."""

    def __init__(self, graph: Graph) -> None:
        super().__init__()
        self.spec_name = graph.name
        self.image = graph.image
        self.classes = graph.classes
        nodes = graph.nodes()
        self._input_id = graph.input.id
        self._output_id = graph.output.id
        self._program: list[tuple[Callable[..., Any], tuple[int, ...], int, tuple[int, ...]]] = []
        last_use = {i: node.id for node in nodes for i in node.inputs}
        for node in nodes:
            if node.op is Op.INPUT:
                continue
            fn = self._build(node, input_types(graph, node))
            free = tuple(i for i in dict.fromkeys(node.inputs) if last_use[i] == node.id)
            self._program.append((fn, node.inputs, node.id, free))

    # -- construction ------------------------------------------------------------------
    def _owner(self, dotted: str) -> tuple[nn.Module, str]:
        """The container that holds the last component of `dotted`, created on demand."""
        *path, leaf = dotted.split(".")
        owner: nn.Module = self
        for part in path:
            child = owner._modules.get(part)
            if child is None:
                child = Namespace()
                owner.add_module(part, child)
            owner = child
        return owner, leaf

    def _build(self, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
        if node.op in MODULE_BUILDERS:
            module = MODULE_BUILDERS[node.op](node, ins)
            owner, leaf = self._owner(node.name)
            owner.add_module(leaf, module)
            return module
        if node.op is Op.ADD:
            return _add
        if node.op is Op.POS_EMBED:
            owner, leaf = self._owner(node.name)
            owner.register_parameter(leaf, nn.Parameter(trunc_normal_(torch.zeros(1, ins[0].tokens, ins[0].dim))))
            return functools.partial(_add_parameter, owner, leaf)
        if node.op is Op.TOKENS:
            self.token_names = tuple(node.attr("tokens"))
            for t in self.token_names:
                self.register_parameter(f"{'dist' if t == 'distill' else t}_token",
                                        nn.Parameter(trunc_normal_(torch.zeros(1, 1, ins[0].dim))))
            return self._prepend_tokens
        if node.op is Op.HEAD:
            self.head_kind, self.prefix = node.attr("kind"), ins[0].prefix
            self.head = L.linear(ins[0].dim, node.attr("classes"))
            if self.head_kind == "token+distill":
                self.head_dist = L.linear(ins[0].dim, node.attr("classes"))
            return self._classify
        raise NotImplementedError(f"torch backend: no lowering for op {node.op.value}")

    # -- the ops with fixed parameter names -------------------------------------------------
    def _prepend_tokens(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        extra = [self.cls_token if t == "cls" else self.dist_token for t in self.token_names]
        return torch.cat([t.expand(b, -1, -1) for t in extra] + [x], dim=1)  # (B, k + N, D)

    def _classify(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        if self.head_kind == "gap":
            return self.head(x[:, self.prefix:].mean(1))
        cls = self.head(x[:, 0])
        if self.head_kind == "token":
            return cls
        dist = self.head_dist(x[:, 1])
        return (cls, dist) if self.training else (cls + dist) / 2

    # -- forward ---------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        values: dict[int, Any] = {self._input_id: images}
        for fn, inputs, out, free in self._program:
            values[out] = fn(*[values[i] for i in inputs])
            for i in free:
                del values[i]
        return values[self._output_id]


def to_torch(graph: Graph) -> GraphModule:
    """Lower a checked graph to a freshly initialised (timm-like init) nn.Module."""
    return GraphModule(graph)
