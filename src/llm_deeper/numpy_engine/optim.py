"""AdamW and gradient clipping (the learning-rate schedule is train.lr_at).

AdamW (Loshchilov & Hutter 2019), one step t for parameter p with gradient g:
    m = b1 m + (1 - b1) g,           v = b2 v + (1 - b2) g^2
    p = p - lr * wd * p              (decoupled weight decay, applied to p itself)
    p = p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
Which parameters decay: every matrix (ndim >= 2: embeddings, attention and FFN weights, LoRA
factors); biases and norm gains (ndim 1) do not, since shrinking them toward 0 only hurts.
"""

from __future__ import annotations

import math

import numpy as np


class AdamW:
    def __init__(self, params: dict, names, lr=1e-3, betas=(0.9, 0.99), eps=1e-8,
                 weight_decay=0.1):
        self.params = params
        self.names = list(names)
        self.lr, self.b1, self.b2, self.eps, self.wd = lr, betas[0], betas[1], eps, weight_decay
        self.m = {k: np.zeros_like(params[k]) for k in self.names}
        self.v = {k: np.zeros_like(params[k]) for k in self.names}
        self.t = 0

    def decays(self, name: str) -> bool:
        return self.params[name].ndim >= 2

    def step(self, grads: dict, lr: float | None = None) -> None:
        lr = self.lr if lr is None else lr
        self.t += 1
        b1, b2 = self.b1, self.b2
        c1, c2 = 1.0 - b1 ** self.t, 1.0 - b2 ** self.t
        for k in self.names:
            p, g, m, v = self.params[k], grads[k], self.m[k], self.v[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            v += (1.0 - b2) * (g * g)
            if self.wd and self.decays(k):
                p *= 1.0 - lr * self.wd
            p -= (lr / c1) * m / (np.sqrt(v / c2) + self.eps)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = {f"m.{k}": v for k, v in self.m.items()}
        out.update({f"v.{k}": v for k, v in self.v.items()})
        out["t"] = np.array([self.t], dtype=np.int64)
        return out

    def load_state_dict(self, state: dict) -> None:
        for k in self.names:
            self.m[k][...] = state[f"m.{k}"]
            self.v[k][...] = state[f"v.{k}"]
        self.t = int(state["t"][0])


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients together so their global L2 norm is at most max_norm; returns the
    norm before clipping."""
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if max_norm and total > max_norm:
        s = max_norm / (total + 1e-6)
        for g in grads.values():
            g *= s
    return total
