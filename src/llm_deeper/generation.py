"""The generation loop, shared by every engine.

An engine supplies one function, `next_logits(ids, state) -> logits of the next token` (numpy
array), that may keep a KV cache in `state`; this module samples (sampling.py), stops on an end
token or a stop string, and streams text as it comes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from .errors import UserError
from .sampling import SamplingParams, StopStrings, sample_token


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop" (a stop string or end token) or "length"


def stream(next_logits: Callable, tokenizer, prompt_ids: list[int], params: SamplingParams,
           stop_ids=()) -> Iterator[str]:
    """Yields text pieces as they are generated; returns (StopIteration.value) the Generation."""
    if not prompt_ids:
        raise UserError("the prompt is empty after tokenization; give at least one character.")
    ids = list(prompt_ids)
    rng = np.random.default_rng(params.seed)
    stops = StopStrings(params.stop)
    stop_ids = set(stop_ids)
    state: dict = {}
    new: list[int] = []
    finish, hit_stop_string = "length", False
    for _ in range(params.max_tokens):
        tok = sample_token(next_logits(ids, state), params, rng, ids)
        if tok in stop_ids:
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


def run(gen: Iterator[str]) -> Generation:
    """Drain a stream() and return its Generation."""
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value
