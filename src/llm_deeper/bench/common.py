"""Timing helpers shared by the benchmarks."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> dict:
    """Measured fp32 matmul throughput of NumPy (and PyTorch when present): the ceiling that
    MFU is computed against."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    out = {}
    a @ a
    best = min(_time(lambda: a @ a) for _ in range(repeats))
    out["numpy"] = 2 * n ** 3 / best / 1e9
    try:
        import torch

        t = torch.from_numpy(a)
        t @ t
        out["torch"] = 2 * n ** 3 / min(_time(lambda: t @ t) for _ in range(repeats)) / 1e9
    except ImportError:
        pass
    return out


def _time(fn) -> float:
    return timed(fn)[1]


def timed(fn):
    """(fn(), seconds it took)."""
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def alternate(fns: dict, rounds: int, steps_per_round: int) -> dict[str, list[float]]:
    """Run each fn `steps_per_round` times per round, the fns taking turns; returns the
    seconds of every step of each."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            for _ in range(steps_per_round):
                times[k].append(_time(fn))
    return times


def median(xs) -> float:
    return statistics.median(xs)


def json_line(d: dict) -> str:
    return json.dumps(d, sort_keys=False)
