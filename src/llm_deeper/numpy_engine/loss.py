"""Cross-entropy of next-token prediction.

loss = mean over predicted positions of  logsumexp(z) - z[target]
dloss/dz = (softmax(z) - onehot(target)) / n   (zero where the target is IGNORE)
"""

from __future__ import annotations

import numpy as np

IGNORE = -100  # target value that is not predicted (as PyTorch's ignore_index)


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
    return float(loss), (e / s, t, valid, n, logits.shape)


def cross_entropy_backward(cache, scale: float = 1.0):
    probs, t, valid, n, shape = cache
    d = probs.copy()
    d[np.arange(len(t)), np.where(valid, t, 0)] -= 1.0
    d *= (valid[:, None] * (scale / n)).astype(d.dtype)
    return d.reshape(shape)
