"""Figures of the KV cache: what it saves in time (measured on SmolLM2-135M) and what it costs in
memory for each kind of attention (computed by sizing.py, whose bytes are tested equal to the
caches the engines allocate: tests/test_calc.py). `bench kv-cache` draws the same two pictures
into its --out directory with the same functions (bench/kv_cache.py)."""

from __future__ import annotations

from pathlib import Path

# The drawing lives beside the measurement (bench/kv_cache.py), which `bench kv-cache` runs too;
# re-exported here for the lessons.
from ..bench.kv_cache import DEEPSEEK_V2_LITE, LLAMA3_8B, draw_bytes, draw_times, kv_variants
from . import figure

__all__ = ["DEEPSEEK_V2_LITE", "LLAMA3_8B", "draw_bytes", "draw_times", "kv_variants"]


@figure("kv_cache_time.png", page="docs/generation.md", needs="smollm2",
        what="time per new token against length, with and without the KV cache (SmolLM2, "
             "CPU, one thread, medians and interquartile ranges after warm-up)")
def kv_cache_time(path: Path, quick: bool) -> None:
    """Measured in CPU seconds of this process on one thread: on a machine shared with other
    jobs, wall-clock time would add the time they held the cores (bench kv-cache reports
    wall-clock, with all threads)."""
    import time

    import torch

    from ..bench.kv_cache import measure
    from .smollm2 import smollm2

    model, _ = smollm2()  # the one copy every SmolLM2 figure shares
    cfg = model.cfg
    lengths, tokens, repeats = ((32, 64, 128), 1, 2) if quick else \
        ((128, 256, 512, 1024, 2048), 2, 5)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = measure(model, cfg, lengths, tokens, repeats, warmup=1,
                       min_round=0 if quick else 0.2, log=None if quick else print,
                       clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    draw_times(rows, path, "SmolLM2-135M, float32, CPU, one thread (CPU time of the process)",
               f"{tokens} new token{'s' if tokens > 1 else ''} per round")


@figure("kv_bytes.png", page="docs/torch-engine.md",
        what="KV-cache bytes per token and per sequence for MHA, GQA, MQA (Llama-3-8B) and "
             "MLA (DeepSeek-V2-Lite), from sizing.py")
def kv_bytes(path: Path, quick: bool) -> None:
    draw_bytes(path)
