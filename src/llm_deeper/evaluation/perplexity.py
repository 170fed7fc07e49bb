"""Perplexity with a sliding window.

A model with a context of W tokens cannot score a long text in one pass. Cut it into windows
of W tokens that start every `stride` tokens; in each window, score only the tokens not scored by
the previous one (the last `stride`, or all of the first window), so each token is predicted
once, with up to W - stride tokens of context before it:

    NLL = sum over windows of (mean loss of the window's new tokens x number of new tokens)
          / total number of predicted tokens,          perplexity = exp(NLL)

Weighting by the number of new tokens matters: the last window is usually short, and averaging
window means would over-count it. With stride = W the windows do not overlap and the result
equals scoring the chunks directly (tests/test_evaluation.py); a smaller stride gives each token
more context, so perplexity drops, at W / stride times the cost.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import UserError


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per predicted token (nats)
    tokens: int  # predicted tokens
    windows: int
    window: int
    stride: int


def perplexity(token_logprobs: Callable, ids, window: int, stride: int | None = None,
               progress: bool = False) -> Perplexity:
    """token_logprobs(ids (1-D)) -> log p(ids[t] | ids[:t]) for t = 1..len-1 (len - 1 values).

    Any engine fits behind that function (see `numpy_logprobs`, `torch_logprobs`)."""
    ids = np.asarray(ids, dtype=np.int64)
    stride = stride or window
    if not 0 < stride <= window:
        raise UserError(f"stride must be in 1..window ({window}), got {stride}.")
    if len(ids) < 2:
        raise UserError("perplexity needs at least two tokens.")
    total_nll, total_n, n_windows, prev_end = 0.0, 0, 0, 0
    starts = list(range(0, max(1, len(ids) - 1), stride))
    from ..util.progress import progress_bar

    for begin in progress_bar(starts, desc="perplexity", enabled=progress):
        end = min(begin + window, len(ids))
        new = end - max(prev_end, begin + 1)  # targets not yet scored (position 0 never is)
        if new <= 0:
            continue
        lp = np.asarray(token_logprobs(ids[begin:end]), dtype=np.float64)  # (end - begin - 1,)
        total_nll += -lp[-new:].sum()
        total_n += new
        n_windows += 1
        prev_end = end
        if end == len(ids):
            break
    nll = total_nll / total_n
    return Perplexity(math.exp(nll), nll, total_n, n_windows, window, stride)


def numpy_logprobs(model) -> Callable:
    """log-probabilities of each next token under a NumPy-engine model."""
    def fn(ids):
        logits = model.forward(np.asarray(ids)[None, :-1])[0][0].astype(np.float64)
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        return logp[np.arange(len(ids) - 1), ids[1:]]
    return fn


def torch_logprobs(model) -> Callable:
    """Same for a PyTorch-engine model or an HF causal LM (anything returning logits)."""
    import torch

    @torch.inference_mode()
    def fn(ids):
        x = torch.as_tensor(np.asarray(ids))[None]
        out = model(x[:, :-1])
        logits = out.logits if hasattr(out, "logits") else out[0]
        logp = torch.log_softmax(logits[0].double(), -1)
        return logp[torch.arange(len(ids) - 1), x[0, 1:]].numpy()
    return fn
