"""Starting from a checkpoint (fine-tuning and transfer, as DeiT does for 384-pixel
fine-tuning and for CIFAR transfer): the weights of a vitgraph, DeiT or timm checkpoint are
loaded by the torch backend's `load_weights` (which resamples position embeddings
bicubically to the new token grid); a classifier whose class count differs is replaced by
the model's freshly initialised head."""
from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from ..backends.torch_backend import extract_state_dict, load_weights, read_checkpoint
from ..ir import Graph

HEAD_KEYS = ("head.weight", "head.bias", "head_dist.weight", "head_dist.bias")


def load_pretrained(model: nn.Module, graph: Graph, source: str | os.PathLike[str] | Mapping[str, Any],
                    where: str | None = None) -> list[str]:
    """Load `source` into `model`; returns notes on what was adapted (resampled, replaced)."""
    where = where or (str(source) if isinstance(source, (str, os.PathLike)) else "checkpoint")
    obj = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    state = extract_state_dict(obj, where)
    own = model.state_dict()
    notes: list[str] = []
    for key in HEAD_KEYS:
        if key in own and key in state and state[key].shape != own[key].shape:
            notes.append(f"replaced {key}: {tuple(state[key].shape)} -> {tuple(own[key].shape)} (new classes)")
            state[key] = own[key]
    return notes + load_weights(model, graph, state, where)
