"""Autoregressive generation with a KV cache (NumPy engine).

Prefill: one forward pass over the prompt fills every layer's cache with its keys and values.
Decode: each new token is a forward pass over one position that attends to the cache, so a
step costs O(length) instead of O(length^2) for recomputing everything. The logits are the same
either way (tests/test_generate.py), which is the point: the cache is only a speed-up.

When the context is full, the oldest tokens are dropped and the cache is rebuilt from the last
context_length - 1 tokens (what an uncached model does by cropping its input): the policy every
engine shares, generation.cached_next_logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ..generation import Generation, cached_next_logits, run
from ..generation import stream as _stream
from ..sampling import SamplingParams
from .model import GPT, KVCache

__all__ = ["Generation", "generate", "stream", "next_logits_fn", "greedy_batch"]


def next_logits_fn(model: GPT, use_cache: bool = True):
    """next_logits(ids, state) for generation.stream, the cache in `state`."""
    def step(new_ids, cache):
        return model.forward(np.asarray(new_ids)[None], kv_cache=cache)[0][0, -1], cache

    return cached_next_logits(step, model.cfg.context_length,
                              lambda: KVCache(model.cfg, 1, dtype=model.dtype), use_cache)


def stream(model: GPT, tokenizer, prompt: str, params: SamplingParams, use_cache: bool = True,
           eos_id: int | None = None) -> Iterator[str]:
    """Yields text pieces as they are generated (returns the Generation at the end)."""
    return _stream(next_logits_fn(model, use_cache), tokenizer, tokenizer.encode(prompt), params,
                   () if eos_id is None else (eos_id,))


def generate(model: GPT, tokenizer, prompt: str, params: SamplingParams, use_cache: bool = True,
             eos_id: int | None = None) -> Generation:
    return run(stream(model, tokenizer, prompt, params, use_cache, eos_id))


def greedy_batch(model: GPT, prompts: np.ndarray, n_new: int) -> np.ndarray:
    """Greedy continuation of a batch of equal-length prompts with the KV cache: (B, n_new)."""
    B, T0 = prompts.shape
    cache = KVCache(model.cfg, B, dtype=model.dtype)
    logits = model.forward(prompts, kv_cache=cache)[0][:, -1]
    out = np.zeros((B, n_new), dtype=np.int64)
    for i in range(n_new):
        out[:, i] = logits.argmax(-1)
        if i + 1 < n_new:
            logits = model.forward(out[:, i:i + 1], kv_cache=cache)[0][:, -1]
    return out
