"""Cross-entropy of next-token prediction.

loss = mean over predicted positions of  logsumexp(z) - z[target]
dloss/dz = (softmax(z) - onehot(target)) / n   (zero where the target is IGNORE)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

IGNORE = -100  # target value that is not predicted (as PyTorch's ignore_index)


class CrossEntropyCache(NamedTuple):
    """What the backward pass needs."""

    probs: np.ndarray  # (N, V) softmax(z), N = B * T
    targets: np.ndarray  # (N,)
    valid: np.ndarray  # (N,) targets != IGNORE
    n: int  # number of valid targets (at least 1): the mean's divisor
    shape: tuple  # the logits' shape (B, T, V)


def cross_entropy_forward(logits: np.ndarray, targets: np.ndarray):
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    t = targets.reshape(-1)
    valid = t != IGNORE
    n = max(int(valid.sum()), 1)
    zmax = z.max(-1, keepdims=True)
    e = np.exp(z - zmax)
    s = e.sum(-1, keepdims=True)
    logp_t = (z[np.arange(len(t)), np.where(valid, t, 0)] - zmax[:, 0] - np.log(s[:, 0]))
    loss = -(logp_t * valid).sum() / n
    return float(loss), CrossEntropyCache(e / s, t, valid, n, logits.shape)


def cross_entropy_backward(cache: CrossEntropyCache, scale: float = 1.0):
    """d(scale * loss)/dz: (B, T, V)."""
    c = cache
    d = c.probs.copy()
    d[np.arange(len(c.targets)), np.where(c.valid, c.targets, 0)] -= 1.0
    d *= (c.valid[:, None] * (scale / c.n)).astype(d.dtype)
    return d.reshape(c.shape)
