"""`vitgraph predict MODEL IMAGE... [--top 5]`: classify images on the CPU with onnxruntime.
MODEL is an ONNX model exported by `vitgraph build --backend onnx`, or a vitgraph checkpoint
(a run's best.pt, a .safetensors export), exported in memory exactly as `build` would.
A model whose weights were never trained is run, with a warning that its classes mean nothing.

Each image is decoded to 8-bit RGB as for training (vitgraph/data/formats.py: every mode
Pillow reads, 16-bit and float images included) and preprocessed as the model's metadata
says (backends/onnx_backend.py): resized to the input size (bilinear), scaled to [0, 1],
normalised with the per-channel mean and std; the top classes are printed with their names
and softmax probabilities."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..cli import require_files
from ..diagnostics import UserError

CHECKPOINT_SUFFIXES = (".pt", ".pth", ".safetensors")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model written by `vitgraph build --backend onnx`, or a "
                                                  "vitgraph checkpoint (.pt, .safetensors)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--top", type=int, default=5, help="how many classes to print per image (default 5)")
    p.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads (default: physical cores)")


def open_model(path: str, threads: int | None = None) -> tuple[Any, Any]:
    """(onnxruntime session, Preprocessing) of an exported model; UserError if unusable."""
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, InvalidGraph, InvalidProtobuf

    from ..backends.onnx_backend import make_session, preprocessing

    if not Path(path).is_file():
        raise UserError(f"model {path} not found")
    source: Any = checkpoint_model(path) if Path(path).suffix in CHECKPOINT_SUFFIXES else path
    try:
        session = make_session(source, threads)
    except (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load {path} as an ONNX model: {first}") from None
    try:
        prep = preprocessing(session.get_modelmeta().custom_metadata_map)
    except (KeyError, ValueError) as e:
        raise UserError(f"{path} has no vitgraph preprocessing metadata ({e})",
                        hint="export the model with `vitgraph build SPEC --backend onnx`") from None
    return session, prep


def checkpoint_model(path: str) -> Any:
    """The ONNX model of a vitgraph checkpoint, built as `vitgraph build --weights CKPT --backend
    onnx` builds it (same graph, weights, preprocessing and metadata)."""
    from ..backends.onnx_backend import checkpoint_model as to_model
    from ..backends.torch_backend import read_checkpoint
    from ..checkpoints import checkpoint_graph

    ck = read_checkpoint(path)
    graph = checkpoint_graph(None, ck, path, {})
    return to_model(graph, ck, path)[0]


def untrained_warning(session: Any, path: str) -> str | None:
    """The warning for a model built without trained weights (its metadata says so)."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("trained") != "false":
        return None
    return (f"warning: {path} holds untrained weights (the spec's initialisation): its classes and probabilities "
            "mean nothing; train it with `vitgraph train` and build from the run's best.pt")


def load_image(path: str, prep: Any) -> Any:
    """An image file -> (C, H, W) array, preprocessed as the model expects."""
    import numpy as np
    from PIL import Image

    from ..data.formats import open_rgb

    c, h, w = prep.input_size
    im = open_rgb(Path(path)).convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
    x = np.asarray(im, dtype=np.float64).reshape(h, w, c) / 255.0                 # (H, W, C)
    x = (x - np.asarray(prep.mean)) / np.asarray(prep.std)
    return x.transpose(2, 0, 1).astype(prep.dtype)                                # (C, H, W)


def predict(session: Any, prep: Any, paths: list[str], top: int) -> list[list[tuple[str, float]]]:
    """For each image, its `top` (class name, probability) pairs, most probable first."""
    import numpy as np

    batch = np.stack([load_image(p, prep) for p in paths])                        # (B, C, H, W)
    logits = session.run(None, {session.get_inputs()[0].name: batch})[0].astype(np.float64)  # (B, K)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [[(prep.class_names[k], float(p[k])) for k in row] for p, row in zip(probs, order)]


def run(args: argparse.Namespace) -> int:
    if args.top < 1:
        raise UserError(f"--top {args.top}: expected at least 1")
    require_files(model=args.model, images=args.images)
    session, prep = open_model(args.model, args.threads)
    warning = untrained_warning(session, args.model)
    if warning:
        print(warning, file=sys.stderr)
    results = predict(session, prep, args.images, min(args.top, len(prep.class_names)))
    width = max(len(name) for name in prep.class_names)
    for path, ranked in zip(args.images, results):
        print(path)
        for i, (name, p) in enumerate(ranked, 1):
            print(f"  {i}. {name:<{width}s}  {100 * p:6.2f}%")
    return 0
