"""Shared by the lessons: where figures go, and a quick mode for the tests."""

import os
from pathlib import Path

QUICK = bool(os.environ.get("LLM_DEEPER_QUICK"))  # tests set it: fewer steps, same checks
OUT = Path(os.environ.get("LLM_DEEPER_LESSONS_OUT", "runs/lessons"))
OUT.mkdir(parents=True, exist_ok=True)


def check(name: str, ok: bool) -> None:
    print(f"  check: {name}: {'ok' if ok else 'FAILED'}")
    if not ok:
        raise SystemExit(f"lesson check failed: {name}")


# `with Server(*serve_args) as base_url: ...`: `llm-deeper serve` on a free loopback port
from llm_deeper.serve.process import ServerProcess as Server  # noqa: F401 (re-exported for the lessons)


def launch(fn, world: int) -> dict:
    """fn(rank) on `world` forked copies of this process (no second import of torch), joined
    into one gloo process group on a free loopback port, with the environment torchrun sets
    (RANK, WORLD_SIZE, LOCAL_RANK) and one thread each; returns {rank: what fn returned}. A rank
    that fails (a failed check raises SystemExit) exits non-zero, the others are stopped, and the
    lesson stops with the error. The parallelism lessons (lessons/06_parallel/) use it."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.get_context("fork").SimpleQueue()
    try:
        mp.start_processes(_run_rank, (fn, world, port, results), nprocs=world,
                           start_method="fork")
    except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
        raise SystemExit(f"a rank failed, so the lesson fails:\n{exc}") from None
    got = {}
    while not results.empty():
        rank, out = results.get()
        got[rank] = out
    check("every rank finished and reported", sorted(got) == list(range(world)))
    return dict(sorted(got.items()))


def _run_rank(rank, fn, world, port, results):
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))  # as torchrun
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=120))
    try:
        results.put((rank, fn(rank)))
    finally:
        dist.destroy_process_group()
