"""The child processes of the GPU check (benchmarks/gpu_check.py) and how they are run.

- A check worker builds models one after the other (a spec through the torch backend, or
  timm's version of a throughput model), compiles each, runs one bf16 training step (forward,
  cross-entropy, backward, fused AdamW on CUDA) and, for the models the throughput section
  times, one inference forward compared with eager. The step is benchmarks/throughput.py's
  own, at its batch, so the graphs compiled here are the ones that section compiles again,
  and inductor's on-disk caches are warm for it.
- The DDP step runs under torchrun (one process): NCCL on a GPU, gloo on a CPU.

Each child is its own process group, killed at its section's deadline; a worker that dies
(a crash in a compiler, say) costs the job it was on, and a fresh worker takes the rest.

    python -m vitgraph.benchmarks.gpu_workers check SETTINGS.json
    python -m torch.distributed.run --standalone --nproc-per-node 1 -m vitgraph.benchmarks.gpu_workers ddp SETTINGS.json
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import vitgraph
from vitgraph.fileio import write_atomic

ROOT = Path(__file__).resolve().parents[1]
SPECS_DIR = ROOT / "specs"
DDP_SPEC = "vit"
DDP_TOLERANCE = 5e-2  # DDP vs single-process gradients, max |diff| / max |grad| (bf16 kernels may differ in order)


def configure_torch() -> None:
    """The same global settings in every process, so that inductor's caches match across them:
    cuDNN picks its fastest conv (the patch embeddings), and Dynamo may hold every model and
    mode of a process (its default recompile limit is 8 per code object)."""
    import torch

    torch.backends.cudnn.benchmark = True
    config = torch._dynamo.config
    if hasattr(config, "recompile_limit"):
        config.recompile_limit = 64
    else:
        config.cache_size_limit = 64


def failure(e: BaseException) -> dict[str, Any]:
    """A failed result: the error and the end of its traceback (called in an except block)."""
    return {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc().splitlines()[-25:]}


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, default=str)
    write_atomic(path, lambda tmp: tmp.write_text(text))


def _dynamo_stats() -> dict[str, int]:
    """Graphs Dynamo compiled and graph breaks it met since its counters were last cleared."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def _model(job: dict[str, Any]) -> tuple[Any, vitgraph.Graph]:
    """The job's module (seed 0) and the graph of its spec (input size, classes, hash)."""
    import torch

    from .throughput import MODELS

    timm_model = job["impl"] == "timm"
    graph = vitgraph.compile(SPECS_DIR / f"{MODELS[job['model']].spec if timm_model else job['model']}.vg")
    torch.manual_seed(0)
    if timm_model:
        import timm

        return MODELS[job["model"]].timm(timm), graph
    return vitgraph.to_torch(graph), graph


def check_one(job: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """Build, compile, one bf16 training step and (when job["infer"]) one inference forward."""
    import torch
    from torch._dynamo.utils import counters

    from .throughput import prepare

    device = settings["device"]
    counters.clear()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    module, graph = _model(job)
    mode = "compiled" if job["compile"] else "eager"
    e = prepare(module, job["impl"], mode, job["batch"], graph.image, graph.classes, device, torch.bfloat16, None,
                settings["compile_backend"])
    t0 = time.perf_counter()
    e.module.train(True)
    loss = float(e.train())
    sync(device)
    result: dict[str, Any] = {"mode": mode, "loss": loss, "first_train_step_s": round(time.perf_counter() - t0, 2),
                              "params": e.params, "spec_hash": graph.spec.hash}
    grads = [p.grad for p in e.module.parameters() if p.requires_grad]
    result["params_without_grad"] = sum(1 for g in grads if g is None)
    finite = math.isfinite(loss) and all(bool(torch.isfinite(g).all()) for g in grads if g is not None)
    if job["infer"]:
        e.module.train(False)
        t1 = time.perf_counter()
        out = e.infer()
        sync(device)
        result.update(first_inference_s=round(time.perf_counter() - t1, 2), output_shape=list(out.shape))
        finite = finite and bool(torch.isfinite(out).all())
        if job["compile"]:
            with torch.inference_mode(), torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
                ref = e.module(e.x).float()
            result["max_rel_diff_vs_eager"] = float((out.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-6))
    result.update(_dynamo_stats(), status="ok" if finite else "failed")
    if not finite:
        result["error"] = "non-finite loss, gradient or output"
    if device.startswith("cuda"):
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def _exit_with_parent() -> None:
    """A worker outlives no GPU check: once its parent is gone (killed from outside), it ends its
    process group (itself and its compiler workers) rather than hold the GPU."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True).start()


def check_main(settings_path: Path) -> int:
    """A check worker: its jobs in order, each result written as soon as it is known."""
    import torch

    _exit_with_parent()
    settings = json.loads(settings_path.read_text())
    configure_torch()
    if settings["threads"]:
        torch.set_num_threads(settings["threads"])
    for job in settings["jobs"]:
        try:
            result = check_one(job, settings)
        except Exception as e:  # noqa: BLE001 - any failure of a model is this check's finding
            result = failure(e)
        result.update(impl=job["impl"], model=job["model"], batch=job["batch"])
        write_json(Path(settings["results"]) / f"{job['id']}.json", result)
        print(f"  [specs] {job['id']}: {result['status']} " + (f"({result['error']})" if "error" in result else
              f"(first step {result['first_train_step_s']} s)"), flush=True)
        torch._dynamo.reset()
        if settings["device"].startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


def ddp_main(settings_path: Path) -> int:
    """Under torchrun: ddp_step; rank 0 writes the result."""
    import torch.distributed as dist

    settings = json.loads(settings_path.read_text())
    if "RANK" not in os.environ:
        print("error: the ddp step runs under torchrun (which sets RANK, WORLD_SIZE, LOCAL_RANK)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        result = ddp_step(settings)
    except Exception as e:  # noqa: BLE001 - the failure is the finding
        result = failure(e)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if int(os.environ["RANK"]) == 0:
        write_json(Path(settings["result"]), result)
    return 0 if result["status"] == "ok" else 1


def ddp_step(settings: dict[str, Any]) -> dict[str, Any]:
    """An all-reduce; a bf16 step of the CIFAR ViT wrapped in DistributedDataParallel, whose
    gradients must match a single-process copy's (same batch, same drop-path draws); a fused
    AdamW step on CUDA; then, if asked, a step of torch.compile(DDP(model)), as the training
    loop runs it under torchrun with --compile."""
    import copy

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    cuda = settings["device"].startswith("cuda")
    world, local = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    ones = torch.ones(8, device=device)
    dist.all_reduce(ones)
    graph = vitgraph.compile(SPECS_DIR / f"{DDP_SPEC}.vg")
    torch.manual_seed(0)
    model = vitgraph.to_torch(graph).to(device)
    twin = copy.deepcopy(model)
    ddp = DistributedDataParallel(model, device_ids=[local] if cuda else None)
    x = torch.randn(settings["batch"], *graph.image, device=device)  # (B, C, H, W)
    y = torch.randint(0, graph.classes, (settings["batch"],), device=device)

    def step(net: Any, seed: int) -> float:
        torch.manual_seed(seed)  # the same drop-path draws for both copies
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        return float(loss)

    loss, twin_loss = step(ddp, 1), step(twin, 1)
    pairs = [(p.grad, q.grad) for p, q in zip(model.parameters(), twin.parameters())]
    if any(p is None or q is None for p, q in pairs):
        raise RuntimeError("a parameter got no gradient through DDP or in the single-process copy")
    scale = max(float(q.abs().max()) for _, q in pairs)
    diff = max(float((p - q).abs().max()) for p, q in pairs) / max(scale, 1e-12)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    optimizer.step()
    result: dict[str, Any] = {"backend": dist.get_backend(), "world_size": world, "spec": DDP_SPEC,
                              "batch": settings["batch"], "all_reduce_ok": bool(ones.eq(world).all()), "loss": loss,
                              "single_process_loss": twin_loss, "grad_max_rel_diff": diff, "fused_adamw": cuda}
    if cuda:
        nccl = torch.cuda.nccl.version()
        result["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    if settings["compile"]:
        optimizer.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        result["compiled_loss"] = step(torch.compile(ddp, backend=settings["compile_backend"]), 2)
        result["compiled_step_s"] = round(time.perf_counter() - t0, 1)
        optimizer.step()
    finite = all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)
    problems = ([f"the all-reduce of ones gave {ones.tolist()}"] if not result["all_reduce_ok"] else []) + \
        (["non-finite gradients"] if not finite else []) + \
        ([f"DDP's gradients differ from the single-process copy's by {diff:.3g} (relative)"]
         if diff > DDP_TOLERANCE else [])
    result["status"] = "failed" if problems else "ok"
    if problems:
        result["error"] = "; ".join(problems)
    return result


# -- running children, from the GPU check's process -----------------------------------------------
def tail(path: Path, lines: int = 30) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def launch(argv: list[str], log: Path, env: dict[str, str], deadline: float) -> tuple[int | None, bool]:
    """Run a child in its own process group with its output in `log`; kill the group (the child
    and its compiler workers) at the deadline. Returns (exit status, whether it was killed)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=max(1.0, deadline - time.monotonic())), False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return proc.returncode, True


def child_env(device: str, slots: int) -> dict[str, str]:
    """The children's environment: unbuffered output, NCCL's warnings, the CPU shared out."""
    cpus = os.cpu_count() or 1
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", str(max(2, cpus // max(1, slots))))
    env.setdefault("NCCL_DEBUG", "WARN")  # NCCL says why in the log tail, if it fails
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", str(max(1, cpus // (slots + 1))))
    return env


def run_checks(jobs: list[dict[str, Any]], settings: dict[str, Any], work: Path, slot: int, env: dict[str, str],
               deadline: float) -> dict[str, dict[str, Any]]:
    """Run `jobs` in a worker; when it dies, the job it was on fails (with the log's tail) and a
    fresh worker takes the rest. At the deadline the worker is killed and the rest is not run."""
    results: dict[str, dict[str, Any]] = {}
    pending = list(jobs)
    log = work / f"worker{slot}.log"
    while pending:
        path = work / f"worker{slot}-{len(results)}.json"
        path.write_text(json.dumps({**settings, "jobs": pending}))
        status, killed = launch([sys.executable, "-m", "vitgraph.benchmarks.gpu_workers", "check", str(path)], log,
                                env, deadline)
        for job in pending:
            done = Path(settings["results"]) / f"{job['id']}.json"
            if done.is_file():
                results[job["id"]] = json.loads(done.read_text())
        pending = [j for j in pending if j["id"] not in results]
        if not pending:
            break
        stuck = pending.pop(0)
        why = "killed at the section's deadline" if killed else f"its worker exited with status {status}"
        results[stuck["id"]] = {"status": "failed", "error": why, "log_tail": tail(log)}
        if killed:
            results.update({j["id"]: {"status": "not run", "error": "no time left in the section"} for j in pending})
            break
    for job in jobs:
        results[job["id"]].update(impl=job["impl"], model=job["model"], batch=job["batch"],
                                  mode="compiled" if job["compile"] else "eager")
    return results


def run_ddp(settings: dict[str, Any], work: Path, env: dict[str, str], deadline: float) -> dict[str, Any]:
    """The DDP step through torchrun on one process."""
    path = work / "ddp-settings.json"
    path.write_text(json.dumps(settings))
    log = work / "ddp.log"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "1"]
    status, killed = launch([sys.executable, *launcher, "-m", "vitgraph.benchmarks.gpu_workers", "ddp", str(path)],
                            log, env, deadline)
    result_path = Path(settings["result"])
    if result_path.is_file():
        result = json.loads(result_path.read_text())
    else:
        result = {"status": "failed", "error": "killed at the section's deadline" if killed else
                  f"torchrun exited with status {status} before a result was written"}
    if result["status"] != "ok":
        result["log_tail"] = tail(log)
    result["launcher"] = " ".join(["torchrun", *launcher[2:]])
    return result


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] not in ("check", "ddp"):
        print("usage: python -m vitgraph.benchmarks.gpu_workers {check,ddp} SETTINGS.json (run by gpu_check)",
              file=sys.stderr)
        return 2
    return (check_main if args[0] == "check" else ddp_main)(Path(args[1]))


if __name__ == "__main__":
    sys.exit(main())
