"""Shared helpers of the ONNX backend tests: small overrides that make every spec cheap
to compile, export and run on two CPU cores, and randomised weights so that parity tests
exercise every parameter (the contract's init leaves BatchNorm statistics, shifts and
pool-branch scales at values that would hide a wrongly folded or skipped term)."""
from __future__ import annotations

import math

import pytest
import torch

import vitgraph
from spec_helpers import ROOT, small_graph  # noqa: F401 - the ONNX tests import them from here
from spec_helpers import SPECS as ALL_SPECS
from vitgraph.ir import Graph

SPECS = [str(p) for p in ALL_SPECS]
# The specs as test cases: those whose weights alone take minutes to export and check on two
# cores (vit_large: 304M parameters, 1.2 GB as float32) run with -m slow only; their forms
# are the DeiTs', which run by default.
HEAVY_PARAMS = 100_000_000
SPEC_CASES = [pytest.param(p, marks=pytest.mark.slow) if vitgraph.count(vitgraph.compile(p)).total.params > HEAVY_PARAMS
              else p for p in SPECS]

# A small BinaryViT-style pyramid with a binary stem (no spec in specs/ has one):
# binary patchify, reduce 2, pool branches, binary merge, binary attention without reduce.
TINY_BINARY = """
model tiny_binary {
    input 3 x 16 x 16
    norm batch eps 1e-5
    stem conv 4 -> 16 precision binary
    pos-embed learned
    stage 16 depth 1 { attention heads 2 reduce 2; mlp hidden 32; pool-branches 3x1 1x3; affine-residual }
    stage 32 depth 1 downsample merge pos-embed { attention heads 2; mlp hidden 64 }
    head gap -> 10
    binarize weights activations attention except head
}
"""


# Full-precision forms no spec in specs/ has: a conv stem with LayerNorm, LSA with a qkv
# bias, heads x head-dim != dim, pool branches and a merging transition in full precision.
TINY_FP = """
model tiny_fp {
    input 3 x 16 x 16
    norm layer eps 1e-6
    stem conv 4 -> 16 precision fp
    pos-embed learned
    stage 16 depth 1 { lsa heads 2; mlp hidden 32; pool-branches 3x1 1x3; affine-residual }
    stage 32 depth 1 downsample merge pos-embed { attention heads 2 head-dim 8; mlp hidden 48 }
    head gap -> 10
}
"""


def is_binary(graph: Graph) -> bool:
    return any(node.binary for node in graph)


def torch_module(graph: Graph, seed: int = 0) -> torch.nn.Module:
    """vitgraph.to_torch(graph) in eval mode with randomize_'d weights, all drawn from
    `seed` (the same module on every run)."""
    return randomize_(vitgraph.to_torch(graph, generator=torch.Generator().manual_seed(seed)), seed).eval()


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Move every parameter and buffer off its initial value: N(0, 0.1) noise on rank-1
    tensors (norm weights, biases, moves, shifts, slopes, temperatures, affine and
    pool-branch scales, running means), running variances in [0.5, 1.5], alpha in [0.01,
    0.05] (so that round(p / alpha) takes both values), rank >= 2 weights keep their init."""
    gen = torch.Generator().manual_seed(seed)
    for key, value in module.state_dict().items():
        if not value.is_floating_point() or value.dim() >= 2:
            continue
        if key.endswith("running_var"):
            value.copy_(0.5 + torch.rand(value.shape, generator=gen, dtype=value.dtype))
        elif key.endswith(".alpha"):
            value.copy_(0.01 + 0.04 * torch.rand(value.shape, generator=gen, dtype=value.dtype))
        else:
            value.add_(0.1 * torch.randn(value.shape, generator=gen, dtype=value.dtype))
    return module


def relative_error(got, want) -> float:  # noqa: ANN001 - numpy arrays
    """max |got - want| / max |want|: one number for the whole output, insensitive to the
    logits' scale, which a binary network grows by orders of magnitude."""
    import numpy as np

    scale = float(np.abs(want).max())
    assert math.isfinite(scale) and scale > 0
    return float(np.abs(got - want).max()) / scale
