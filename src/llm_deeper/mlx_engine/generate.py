"""Generation with the MLX engine: the package's one generation loop (generation.py) and sampler
(sampling.py) over this engine's logits, with a KV cache (model.KVCache).

Prefill runs the prompt through once; each later token is a forward pass over one position that
attends to the cache. `np.array(logits)` is where MLX's lazy graph is evaluated.
"""

from __future__ import annotations

from collections.abc import Iterator

import mlx.core as mx
import numpy as np

from ..generation import Generation, cached_next_logits, run
from ..generation import stream as _stream
from ..sampling import SamplingParams
from .model import KVCache, MlxGPT


def next_logits_fn(model: MlxGPT, use_cache: bool = True):
    """next_logits(ids, state) for generation.stream, the cache in `state` (the policy of
    generation.cached_next_logits, which every engine shares)."""
    def step(new_ids, cache):
        # NumPy ids: forward checks them against the vocabulary before MLX sees them
        logits = model(np.asarray(new_ids, dtype=np.int64)[None], cache=cache)[0]
        return np.array(logits[0, -1].astype(mx.float32)), cache

    return cached_next_logits(step, model.cfg.context_length, lambda: KVCache(model.cfg),
                              use_cache)


def stream(model: MlxGPT, tokenizer, prompt: str, params: SamplingParams, use_cache: bool = True,
           eos_id: int | None = None) -> Iterator[str]:
    """Yields text pieces as they are generated (returns the Generation at the end)."""
    return _stream(next_logits_fn(model, use_cache), tokenizer, tokenizer.encode(prompt), params,
                   () if eos_id is None else (eos_id,))


def generate(model: MlxGPT, tokenizer, prompt: str, params: SamplingParams,
             use_cache: bool = True, eos_id: int | None = None) -> Generation:
    return run(stream(model, tokenizer, prompt, params, use_cache, eos_id))
