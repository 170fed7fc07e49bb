"""Autoregressive generation with a KV cache.

Prefill: one forward pass over the prompt fills every layer's cache with its keys and values.
Decode: each new token is a forward pass over one position that attends to the cache, so a
step costs O(length) instead of O(length^2) for recomputing everything. The logits are the same
either way (tests/test_generate.py), which is the point: the cache is only a speed-up.

When the context is full, the oldest tokens are dropped and the cache is rebuilt from the last
context_length - 1 tokens (what an uncached model does by cropping its input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import UserError
from ..sampling import SamplingParams, StopStrings, sample_token
from .model import GPT, KVCache


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (a stop string or end token) or "length"


def next_token_logits(model: GPT, ids: list[int], use_cache: bool, state: dict) -> np.ndarray:
    """Logits for the token after `ids`. state keeps the cache between calls."""
    T = model.cfg.context_length
    if not use_cache:
        window = np.asarray(ids[-T:])[None]
        return model.forward(window)[0][0, -1]
    cache: KVCache | None = state.get("cache")
    fed = state.get("fed", 0)
    if cache is None or cache.pos >= T or fed > len(ids):
        cache = KVCache(model.cfg, 1, dtype=model.dtype)
        start = max(0, len(ids) - (T - 1)) if len(ids) >= T else 0
        logits = model.forward(np.asarray(ids[start:])[None], kv_cache=cache)[0]
        state.update(cache=cache, fed=len(ids))
        return logits[0, -1]
    logits = model.forward(np.asarray(ids[fed:])[None], kv_cache=cache)[0]
    state["fed"] = len(ids)
    return logits[0, -1]


def generate(model: GPT, tokenizer, prompt: str, params: SamplingParams, use_cache: bool = True,
             eos_id: int | None = None) -> Generation:
    gen = stream(model, tokenizer, prompt, params, use_cache, eos_id)
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value


def stream(model: GPT, tokenizer, prompt: str, params: SamplingParams, use_cache: bool = True,
           eos_id: int | None = None) -> Iterator[str]:
    """Yields text pieces as they are generated and returns (StopIteration.value) the
    Generation; `generate()` is the non-streaming form."""
    prompt_ids = tokenizer.encode(prompt)
    if not prompt_ids:
        raise UserError("the prompt is empty after tokenization; give at least one character.")
    ids = list(prompt_ids)
    rng = np.random.default_rng(params.seed)
    stops = StopStrings(params.stop)
    state: dict = {}
    new: list[int] = []
    finish, hit_stop_string = "length", False
    for _ in range(params.max_tokens):
        logits = next_token_logits(model, ids, use_cache, state)
        tok = sample_token(logits, params, rng, ids)
        if eos_id is not None and tok == eos_id:
            finish = "stop"
            break
        ids.append(tok)
        new.append(tok)
        piece, stopped = stops.feed(tokenizer.decode(new))
        if piece:
            yield piece
        if stopped:
            finish, hit_stop_string = "stop", True
            break
    text = tokenizer.decode(new)
    if hit_stop_string:
        text = text[:stops.emitted]
    else:
        tail = stops.flush(text)
        if tail:
            yield tail
    return Generation(text=text, token_ids=new, finish_reason=finish)


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
