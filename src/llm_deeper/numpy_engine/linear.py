"""Linear layer `y = x @ W.T + b` (W stored (out, in) as in PyTorch), with optional LoRA.

    dx = dy @ W,   dW = dy^T x,   db = sum(dy)

LoRA (Hu et al. 2021) adds a trainable low-rank path beside the frozen W:
    y = x W^T + s * (x A^T) B^T,   A: (r, in), B: (out, r), s = alpha / r
    h = x A^T;   dB = s * dy^T h;   dh = s * dy B;   dA = dh^T x;   dx += dh A
B starts at zero, so training starts from exactly the base model.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..params import bias_name


class LinearCache(NamedTuple):
    """What the backward pass of y = x W^T + b (+ s (x A^T) B^T) needs."""

    x: np.ndarray  # (..., in) the input
    w: np.ndarray  # (out, in)
    has_bias: bool  # whether b exists (then db = sum(dy))
    lora: tuple | None  # (A, B, s) or None
    h: np.ndarray | None  # (..., r) x A^T, the LoRA path's hidden state
    name: str = ""  # the weight's name in the parameter dict (dense_forward), or ""


def linear_forward(x, w, b=None, lora=None, name: str = ""):
    # Flatten the leading axes first: one (B*T, in) x (in, out) GEMM is far faster than NumPy's
    # batched matmul over B separate (T, in) matrices.
    lead = x.shape[:-1]
    y = (x.reshape(-1, x.shape[-1]) @ w.T).reshape(*lead, w.shape[0])
    if b is not None:
        y = y + b
    h = None
    if lora is not None:
        a, bb, scale = lora
        h = x @ a.T  # (..., r)
        y = y + (scale * h) @ bb.T
    return y, LinearCache(x, w, b is not None, lora, h, name)


def linear_backward(dy, cache: LinearCache, need_w: bool = True):
    """Returns dx, dW (None if not needed), db (None without bias), (dA, dB) or None."""
    x, w, lora, h = cache.x, cache.w, cache.lora, cache.h
    d_out, d_in = w.shape
    dy2 = dy.reshape(-1, d_out)
    x2 = x.reshape(-1, d_in)
    dx = (dy2 @ w).reshape(x.shape)
    dw = dy2.T @ x2 if need_w else None
    db = dy2.sum(0) if cache.has_bias else None
    dlora = None
    if lora is not None:
        a, bb, scale = lora
        h2 = h.reshape(-1, a.shape[0])
        dB = scale * (dy2.T @ h2)
        dh = scale * (dy2 @ bb)  # (B*T, r)
        dA = dh.T @ x2
        dx = dx + (dh @ a).reshape(x.shape)
        dlora = (dA, dB)
    return dx, dw, db, dlora


def dense_forward(p: dict, name: str, x, lora: dict):
    """The linear layer whose weight is p[name] (bias and LoRA looked up by name)."""
    return linear_forward(x, p[name], p.get(bias_name(name)), lora.get(name), name)


def dense_backward(dy, cache: LinearCache, grads: dict, frozen=frozenset()):
    """Writes d(weight), d(bias) and LoRA gradients into `grads` under the layer's names;
    returns dx."""
    name = cache.name
    dx, dw, db, dlora = linear_backward(dy, cache, need_w=name not in frozen)
    if dw is not None:
        grads[name] = dw
    if db is not None:
        grads[bias_name(name)] = db
    if dlora is not None:
        grads[name + ".lora_A"], grads[name + ".lora_B"] = dlora
    return dx
