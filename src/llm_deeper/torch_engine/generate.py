"""Generation with the PyTorch engine: a preallocated KV cache, prefill then one token a step.

Prefill runs the model's forward pass over the whole prompt and keeps only the last position's
logits (the others would cost a (T x vocab) product for nothing); each new token then goes
through the fast decode step (decode.py) where the config allows it, else through the forward
pass with the cache."""

from __future__ import annotations

import torch

from ..generation import cached_next_logits
from .context import StepContext
from .decode import DecodeStep
from .model import TorchGPT, forward, make_cache


class LastRow(StepContext):
    """A cached step that wants only the last position's logits (prefill for generation)."""

    def select(self, x):
        return x[:, -1:]


def prefill(model: TorchGPT, ids: torch.Tensor, cache) -> torch.Tensor:
    """Feed ids (B, T) at cache.pos; the last position's logits (B, vocab)."""
    ctx = LastRow(pos0=cache.pos, cache=cache, use_sdpa=model.use_sdpa,
                  mla_absorb=model.mla_absorb)
    return forward(model.param_dict(), model.cfg, ids, ctx=ctx)[0][:, -1]


def decode_fn(model: TorchGPT, fast: bool = True):
    """`step(tokens (B,), cache) -> logits (B, vocab)` for one new token of every sequence:
    DecodeStep when the config allows it (and `fast`), else the forward pass."""
    if fast and DecodeStep.supports(model.cfg) and not model.training:
        return DecodeStep(model)
    return lambda tokens, cache: prefill(model, tokens[:, None], cache)


def next_logits_fn(model: TorchGPT, use_cache: bool = True, fast: bool = True):
    """next_logits(ids, state) for generation.stream, the cache in `state`
    (the policy of generation.cached_next_logits)."""
    p = next(model.parameters())
    decode = decode_fn(model, fast) if use_cache else None

    @torch.inference_mode()
    def step(new_ids, cache):
        x = torch.tensor([new_ids], device=p.device)
        if cache is None:
            logits = model(x)[0][:, -1]
        elif len(new_ids) == 1:
            logits = decode(x[:, 0], cache)
        else:
            logits = prefill(model, x, cache)
        return logits[0].float().cpu().numpy(), cache

    return cached_next_logits(step, model.cfg.context_length,
                              lambda: make_cache(model.cfg, 1, dtype=p.dtype, device=p.device),
                              use_cache)


@torch.inference_mode()
def greedy_batch(model: TorchGPT, prompts: torch.Tensor, n_new: int,
                 fast: bool = True) -> torch.Tensor:
    """Greedy continuation of a batch of equal-length prompts: (B, n_new) token ids."""
    p = next(model.parameters())
    B, T0 = prompts.shape
    cache = make_cache(model.cfg, B, max_len=T0 + n_new, dtype=p.dtype, device=p.device)
    decode = decode_fn(model, fast)
    logits = prefill(model, prompts.to(p.device), cache)
    out = torch.empty(B, n_new, dtype=torch.long, device=p.device)
    for i in range(n_new):
        out[:, i] = logits.argmax(-1)
        if i + 1 < n_new:
            logits = decode(out[:, i], cache)
    return out
