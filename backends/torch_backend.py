"""The PyTorch backend: a checked vitgraph IR -> a trainable nn.Module.

Submodules sit at the nodes' dotted names, so the state-dict keys are exactly
`vitgraph.param_table(g) | vitgraph.buffer_table(g)`; for the DeiT/ViT specs these are
the keys of the DeiT (Touvron et al. 2020) and timm checkpoints (`cls_token`,
`pos_embed`, `patch_embed.proj.weight`, `blocks.0.attn.qkv.weight`, `head_dist.weight`),
which therefore load with strict=True and no mapping.

Checkpoints: `load_weights` reads vitgraph checkpoints (torch.save files or safetensors with
vitgraph's metadata) and DeiT/timm ones (a dict with a "model" key, or a bare state dict),
resampling position embeddings bicubically over the patch grid when the token grid differs;
`build_command` implements `vitgraph build [SPEC] --backend torch [-o OUT.pt|OUT.safetensors]`.

The forward pass runs the graph's nodes in their stable topological order; each op unit's
lowering is registered in backends/_torch_registry.py's table: the modules live in
backends/_torch_layers.py (full precision) and backends/_torch_binary.py (BinaryViT's
binarization); the ops with checkpoint-fixed names are lowered here.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import vitgraph
from vitgraph import init as initialisation
from vitgraph.diagnostics import UserError
from vitgraph.fileio import write_atomic
from vitgraph.ir import Graph, Node, TensorType
from vitgraph.ops import input_types
from vitgraph.ops.add import Add
from vitgraph.ops.head import Head, dist_name
from vitgraph.ops.input import Input
from vitgraph.ops.pos_embed import PosEmbed
from vitgraph.ops.tokens import TOKEN_KEYS, Tokens

from . import _torch_layers  # noqa: F401 - registers the op modules
from . import _torch_swin  # noqa: F401 - registers Swin's op modules
from . import _torch_cait  # noqa: F401 - registers CaiT's op modules
from . import _torch_t2t  # noqa: F401 - registers T2T's op modules
from ._torch_registry import TORCH_LOWERINGS, lowering_for


class Namespace(nn.Module):
    """A container on the dotted path of a node (e.g. `blocks`, `blocks.0`, `stages.1`);
    `model.blocks[3]` indexes it like timm's nn.Sequential."""

    def __getitem__(self, key: int | str) -> nn.Module:
        return self._modules[str(key)]

    def __len__(self) -> int:
        return len(self._modules)


def _add(*xs: Tensor) -> Tensor:
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def _add_parameter(owner: nn.Module, attr: str, x: Tensor) -> Tensor:
    return x + getattr(owner, attr)


def _add_buffer(owner: nn.Module, attr: str, x: Tensor) -> Tensor:
    return x + getattr(owner, attr).to(x.dtype)


class GraphModule(nn.Module):
    """The network of one graph. forward(images (B, C, H, W)) -> logits (B, classes); a
    cls+distill head returns (cls_logits, dist_logits) in training mode and their
    average in eval mode (DeiT).

    Built on the meta device (instant, whatever the size), then materialised on `device`
    and filled: parameters and buffers from the graph's init policy (vitgraph/init.py,
    with `generator`, or torch's global RNG), constants from the op units."""

    def __init__(self, graph: Graph, device: str | torch.device | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        device = torch.get_default_device() if device is None else torch.device(device)
        self.spec_name = graph.name
        self.image = graph.image
        self.classes = graph.classes
        nodes = graph.nodes()
        self._input_id = graph.input.id
        self._output_id = graph.output.id
        self._program: list[tuple[Callable[..., Any], tuple[int, ...], int, tuple[int, ...]]] = []
        last_use = {i: node.id for node in nodes for i in node.inputs}
        with torch.device("meta"):
            for node in nodes:
                fn = self._build(node, input_types(graph, node))
                if node.inputs:
                    free = tuple(i for i in dict.fromkeys(node.inputs) if last_use[i] == node.id)
                    self._program.append((fn, node.inputs, node.id, free))
        if device.type != "meta":
            self.to_empty(device=device)
            initialisation.initialize(self.state_dict(keep_vars=True), graph, generator)
        self._constants(graph, nodes, device)

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

    def place(self, dotted: str, module: nn.Module) -> nn.Module:
        owner, leaf = self._owner(dotted)
        owner.add_module(leaf, module)
        return module

    def parameter_at(self, dotted: str, shape: tuple[int, ...]) -> tuple[nn.Module, str]:
        owner, leaf = self._owner(dotted)
        owner.register_parameter(leaf, nn.Parameter(torch.empty(shape)))
        return owner, leaf

    def _build(self, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
        lowering = TORCH_LOWERINGS.get(node.op)
        if lowering is None:
            raise NotImplementedError(f"torch backend: no lowering for op {node.op.name}")
        return lowering(self, node, ins)

    def _constants(self, graph: Graph, nodes: list[Node], device: str | torch.device) -> None:
        """Each op's constants (masks, index tables) as non-persistent buffers of its module."""
        for node in nodes:
            consts = node.op.constants(node, input_types(graph, node))
            if not consts:
                continue
            owner, leaf = self._owner(node.name)
            module = owner._modules.get(leaf, owner)
            prefix = "" if module is not owner else f"{leaf}_"
            for name, value in consts.items():
                module.register_buffer(prefix + name, torch.as_tensor(value, device=device), persistent=False)

    # -- the ops with fixed parameter names -------------------------------------------------
    def _prepend_tokens(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        extra = [getattr(self, TOKEN_KEYS[t]) for t in self.token_names]
        return torch.cat([t.expand(b, -1, -1) for t in extra] + [x], dim=1)  # (B, k + N, D)


    # -- forward ---------------------------------------------------------------------------
    def forward(self, images: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        values: dict[int, Any] = {self._input_id: images}
        for fn, inputs, out, free in self._program:
            values[out] = fn(*[values[i] for i in inputs])
            for i in free:
                del values[i]
        return values[self._output_id]


@lowering_for(Input)
def _input(gm: GraphModule, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
    return lambda x: x  # never called: the input node is where the program starts


@lowering_for(Add)
def _add_lowering(gm: GraphModule, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
    return _add


@lowering_for(PosEmbed)
def _pos_embed(gm: GraphModule, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
    """A learned embedding is a parameter at the node's name (DeiT's `pos_embed`); a fixed
    table is the op's constant, a buffer of the same name."""
    if node.attrs.kind == "learned":
        owner, leaf = gm.parameter_at(node.name, (1, ins[0].tokens, ins[0].dim))
        return functools.partial(_add_parameter, owner, leaf)
    owner, leaf = gm._owner(node.name)
    return functools.partial(_add_buffer, owner, f"{leaf}_table")


@lowering_for(Tokens)
def _tokens(gm: GraphModule, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
    gm.token_names = tuple(node.attrs.tokens)
    for t in gm.token_names:
        gm.parameter_at(TOKEN_KEYS[t], (1, 1, ins[0].dim))
    return gm._prepend_tokens


def _classify(kind: str, prefix: int, head: nn.Module, head_dist: nn.Module | None,
              x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
    if kind == "gap":
        return head(x[:, prefix:].mean(1))
    cls = head(x[:, 0])
    if head_dist is None:
        return cls
    dist = head_dist(x[:, 1])
    return (cls, dist) if head.training else (cls + dist) / 2


@lowering_for(Head)
def _head_lowering(gm: GraphModule, node: Node, ins: list[TensorType]) -> Callable[..., Any]:
    """The classifier on the cls token, the patch-token average or both DeiT heads."""
    head = gm.place(node.name, nn.Linear(ins[0].dim, node.attrs.classes))
    dist = gm.place(dist_name(node), nn.Linear(ins[0].dim, node.attrs.classes)) \
        if node.attrs.kind == "token+distill" else None
    return functools.partial(_classify, node.attrs.kind, ins[0].prefix, head, dist)


def to_torch(graph: Graph, device: str | torch.device | None = None,
             generator: torch.Generator | None = None) -> GraphModule:
    """Lower a checked graph to a freshly initialised nn.Module (the graph's init policy),
    on `device` (default: torch's default device; on "meta" it is built without memory,
    instantly)."""
    return GraphModule(graph, device, generator)


# -- checkpoints ---------------------------------------------------------------------------
StateDict = Mapping[str, Tensor]


def resample_pos_embed(pos: Tensor, prefix: int, new_grid: tuple[int, int],
                       old_grid: tuple[int, int] | None = None) -> Tensor:
    """(1, prefix + gh*gw, D) -> (1, prefix + gh'*gw', D): the prefix rows (cls, dist)
    are kept; the patch rows are resampled bicubically over the grid (DeiT's fine-tuning
    at a new resolution). `old_grid` defaults to the square grid of the patch rows."""
    n_old = pos.shape[1] - prefix
    if old_grid is None:
        side = math.isqrt(n_old)
        if side * side != n_old:
            raise UserError(f"cannot resample a position embedding of {n_old} patch rows: not a square grid")
        old_grid = (side, side)
    if old_grid[0] * old_grid[1] != n_old:
        raise UserError(f"position embedding has {n_old} patch rows, not a {old_grid[0]}x{old_grid[1]} grid")
    head, patches = pos[:, :prefix], pos[:, prefix:]
    d = pos.shape[-1]
    grid = patches.reshape(1, old_grid[0], old_grid[1], d).permute(0, 3, 1, 2).float()  # (1, D, gh, gw)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    patches = grid.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d).to(pos.dtype)
    return torch.cat([head, patches], dim=1)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """torch.load a checkpoint on the CPU without running arbitrary pickled code (DeiT's
    training checkpoints carry an argparse.Namespace, which is allowed); a .safetensors file
    is read with its vitgraph metadata into the same shape ({"model": state dict, "spec": ...})."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} not found")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any failure to read a user's file is that file's problem, reported as such
        raise UserError(f"cannot read checkpoint {path}: {_load_failure(e, path)}",
                        hint="expected a file written by torch.save (a vitgraph, DeiT or timm checkpoint)") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


SAFETENSORS_KEY = "vitgraph"  # the metadata entry holding the checkpoint's description (JSON)
DESCRIPTION_KEYS = ("spec", "dataset", "recipe", "summary", "overrides", "seed", "vitgraph_version")


def read_safetensors(path: Path) -> dict[str, Any]:
    """A safetensors file as a checkpoint dict: its tensors under "model", and the description
    vitgraph wrote into its metadata (none for other writers' files)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            state = {key: f.get_tensor(key) for key in f.keys()}
            meta = f.metadata() or {}
        description = json.loads(meta.get(SAFETENSORS_KEY, "{}"))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"cannot read checkpoint {path}: {e}",
                        hint="expected a .safetensors file (e.g. written by `vitgraph build -o X.safetensors`)") from None
    return {**{k: v for k, v in description.items() if k in DESCRIPTION_KEYS}, "model": state}


def save_safetensors(ck: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """The weights of a checkpoint dict as safetensors, its description (spec text, parameters,
    dataset, recipe, summary) as JSON in the metadata; written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in ck["model"].items()}
    meta = {SAFETENSORS_KEY: json.dumps({k: ck[k] for k in DESCRIPTION_KEYS if k in ck}, default=str)}
    return write_atomic(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def _load_failure(e: Exception, path: Path) -> str:
    """One line saying why torch.load failed, without torch's advice to unpickle unsafely."""
    text = str(e)
    if "Unsupported global" in text:
        found = re.search(r"GLOBAL (\S+)", text)
        return "it holds Python objects besides tensors" + (f" ({found.group(1)})" if found else "")
    if not zipfile.is_zipfile(path):
        return "not a torch.save archive (corrupt, truncated or another format)"
    return text.strip().splitlines()[0] if text.strip() else type(e).__name__


def extract_state_dict(obj: Mapping[str, Any], where: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict inside a checkpoint: its "model" (vitgraph, DeiT) or "state_dict"
    entry, or the dict itself when all its values are tensors (timm). A DataParallel
    `module.` prefix is dropped."""
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad or not obj:
        raise UserError(f"{where} holds no state dict: expected a 'model' entry or tensors, found "
                        + (", ".join(f"{k!r}" for k in bad[:5]) if bad else "an empty dict"))
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(module: nn.Module, graph: Graph,
                 source: str | os.PathLike[str] | Mapping[str, Any], where: str | None = None) -> list[str]:
    """Load a checkpoint (path, checkpoint dict or state dict) into `module` strictly.
    Position embeddings whose token grid differs are resampled (bicubic, prefix rows
    kept). Raises UserError naming the missing, unexpected or mis-shaped keys. Returns
    notes on what was adapted (for the CLI to print)."""
    where = where or (str(source) if isinstance(source, (str, os.PathLike)) else "checkpoint")
    obj = read_checkpoint(source) if isinstance(source, (str, os.PathLike)) else source
    state = extract_state_dict(obj, where)
    target = module.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        parts = ([f"missing {len(missing)}: {_listing(missing)}"] if missing else []) + \
                ([f"unexpected {len(unexpected)}: {_listing(unexpected)}"] if unexpected else [])
        raise UserError(f"{where} does not fit {graph.name}: " + "; ".join(parts),
                        hint="was the checkpoint written for another spec or --set overrides?")
    notes: list[str] = []
    pos_nodes = {n.name: n for n in graph if n.op is PosEmbed and n.attrs.kind == "learned"}
    mismatched: list[str] = []
    for key, want in target.items():
        got = state[key]
        if got.shape == want.shape:
            continue
        node = pos_nodes.get(key)
        if node is not None and got.dim() == 3 and got.shape[-1] == want.shape[-1]:
            state[key] = resample_pos_embed(got, node.out.prefix, node.out.grid)
            notes.append(f"resampled {key} from {tuple(got.shape)} to {tuple(want.shape)} (bicubic)")
        else:
            mismatched.append(f"{key} {tuple(got.shape)} vs {tuple(want.shape)}")
    if mismatched:
        raise UserError(f"{where} does not fit {graph.name}: shapes differ (checkpoint vs model): "
                        + _listing(mismatched, 6),
                        hint="was the checkpoint written for another spec or --set overrides?")
    module.load_state_dict(state, strict=True)
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else None
    if spec and graph.spec and spec.get("hash") not in (None, graph.spec.hash):
        notes.append(f"the checkpoint was built from {spec.get('name')} (spec hash {spec.get('hash')}), "
                     f"this model's spec hash is {graph.spec.hash}")
    return notes


def checkpoint_dict(module: nn.Module, graph: Graph) -> dict[str, Any]:
    """What `vitgraph build` writes: the weights and the spec they belong to."""
    spec = graph.spec
    info = {"name": graph.name, "model": spec.model if spec else graph.name,
            "path": spec.path if spec else None, "sources": dict(spec.sources) if spec else {},
            "params": dict(spec.params) if spec else {}, "hash": spec.hash if spec else None}
    return {"model": module.state_dict(), "spec": info, "vitgraph_version": vitgraph.__version__}


def save_atomic(obj: Any, path: str | os.PathLike[str]) -> Path:
    """torch.save to a temporary file beside `path`, then rename over it."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:g}"


def build_command(graph: Graph, args: argparse.Namespace) -> int:
    """`vitgraph build [SPEC] --backend torch [-o OUT.pt|OUT.safetensors] [--weights CKPT]`: write
    a checkpoint {"model", "spec"} (plus the dataset, recipe and summary of a trained CKPT) and
    print a summary."""
    from vitgraph.checkpoints import describe

    module = to_torch(graph)
    source = read_checkpoint(args.weights) if args.weights else None
    notes = load_weights(module, graph, source, args.weights) if source is not None else []
    ck = {**{k: source[k] for k in DESCRIPTION_KEYS if source and k in source and k != "spec"},
          **checkpoint_dict(module, graph)}
    target = Path(args.output or f"{graph.name}.pt")
    out = save_safetensors(ck, target) if target.suffix == ".safetensors" else save_atomic(ck, target)
    total = vitgraph.count(graph).total
    c, h, w = graph.image
    lines = [f"built {graph.name} (torch) -> {out}",
             f"  spec     {graph.spec.path if graph.spec else '-'}  hash {graph.spec.hash if graph.spec else '-'}",
             f"  input    {c}x{h}x{w} -> {graph.classes} classes",
             f"  params   {total.params:,} ({_si(total.fp_params)} full precision, {_si(total.binary_params)} binary)",
             f"  MACs     {_si(total.macs)}   BOPs {_si(total.bops)}   OPs {_si(total.ops)}",
             f"  weights  {f'{args.weights}: {describe(source)}' if args.weights else f'initialised ({graph.init}), untrained'}"]
    lines += [f"  note     {n}" for n in notes]
    print("\n".join(lines))
    return 0
