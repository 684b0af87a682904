"""Two processes with the gloo backend on CPU train the tiny spec with DistributedDataParallel
(the code path `torchrun` uses): both ranks end with identical weights, each saw its own shard,
and only rank 0 writes the run folder."""
from __future__ import annotations

import socket

import torch
import torch.multiprocessing as mp
from train_helpers import write_specs

from vitgraph.backends.torch_backend import read_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, spec: str, out: str, dump: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from vitgraph.train import loop

    real_epoch = loop.train_epoch

    def record(step, loader, ctx, *args):
        stats = real_epoch(step, loader, ctx, *args)
        torch.save({"weights": step.raw.state_dict(), "order": loader.order(), "stats": stats},
                   f"{dump}/rank{ctx.rank}.pt")
        return stats

    loop.train_epoch = record
    loop.run(spec, "digits", "digits", epochs=1, out=out, progress=False, device="cpu",
             overrides={"batch_size": "64", "warmup_epochs": "0", "randaug_n": "1", "spec.drop_path": "0.1"})


def test_two_gloo_processes_hold_identical_weights(tmp_path):
    spec, _ = write_specs(tmp_path / "specs")
    out = tmp_path / "run"
    mp.spawn(_worker, args=(2, _free_port(), str(spec), str(out), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    assert not set(r0["order"].tolist()) & set(r1["order"].tolist())  # disjoint shards
    assert len(r0["order"]) == len(r1["order"]) == 1437 // 2
    saved = read_checkpoint(out / "last.pt")["model"]
    assert all(torch.equal(saved[k], r0["weights"][k]) for k in saved)
    assert (out / "metrics.csv").is_file() and not list(tmp_path.glob("run*/.*tmp*"))
