"""Stochastic depth on a residual branch (the model setting `drop-path R linear|constant`
gives each block its rate): per sample, the branch is dropped with probability R in
training and scaled by 1/(1 - R) when kept; the identity at inference."""
from __future__ import annotations

from dataclasses import dataclass

from . import OpDef, register


@dataclass(frozen=True)
class DropPathAttrs:
    rate: float


@register
class DropPath(OpDef):
    """Stochastic depth on a residual branch (identity at inference)."""

    name = "drop-path"
    per_token = True
    Attrs = DropPathAttrs
