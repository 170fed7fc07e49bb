"""LayerNorm and RMSNorm, forward and backward, over the last axis.

LayerNorm:  xhat = (x - mean) / sqrt(var + eps),  y = xhat * w + b
    dxhat = dy * w
    dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)
    dw = sum over rows of dy * xhat,   db = sum over rows of dy
RMSNorm (Zhang & Sennrich 2019, used by Llama): no centring, no bias.
    xhat = x / sqrt(mean(x^2) + eps),  y = xhat * w
    dx = (dxhat - xhat * mean(dxhat * xhat)) / sqrt(mean(x^2) + eps)

`norm_forward(cfg, x, p, name)` is the model's entry point (the torch engine's `norm`): it picks
the kind from the config and the parameters by name; `norm_backward` writes name.weight/.bias
gradients. The functions below it are the bare math (lessons/02_numpy_gpt/01_backward_by_hand.py).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NormCache(NamedTuple):
    """What a norm's backward needs; llm.c keeps the same (x-hat, rstd, w)."""

    xhat: np.ndarray  # (..., d) the normalised input
    rstd: np.ndarray  # (..., 1) 1 / sqrt(var + eps), or 1 / sqrt(mean(x^2) + eps) for RMSNorm
    w: np.ndarray  # (d,) the gain
    kind: str  # "layernorm" | "rmsnorm"
    has_bias: bool
    name: str = ""  # the parameters' prefix ('h.0.norm1'), or ""


def layernorm_forward(x, w, b, eps, name: str = ""):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat * w
    if b is not None:
        y = y + b
    return y, NormCache(xhat, rstd, w, "layernorm", b is not None, name)


def layernorm_backward(dy, cache: NormCache):
    """Returns dx, dw, db."""
    xhat, rstd, w = cache.xhat, cache.rstd, cache.w
    lead = tuple(range(dy.ndim - 1))
    dw = (dy * xhat).sum(lead)
    db = dy.sum(lead)
    dxhat = dy * w
    dx = (dxhat - dxhat.mean(-1, keepdims=True)
          - xhat * (dxhat * xhat).mean(-1, keepdims=True)) * rstd
    return dx, dw, db


def rmsnorm_forward(x, w, b, eps, name: str = ""):
    """b is ignored (RMSNorm has no bias); the argument keeps the signature of layernorm's."""
    rstd = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    xhat = x * rstd
    return xhat * w, NormCache(xhat, rstd, w, "rmsnorm", False, name)


def rmsnorm_backward(dy, cache: NormCache):
    """Returns dx, dw, None."""
    xhat, rstd, w = cache.xhat, cache.rstd, cache.w
    lead = tuple(range(dy.ndim - 1))
    dw = (dy * xhat).sum(lead)
    dxhat = dy * w
    dx = (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True)) * rstd
    return dx, dw, None


NORMS = {"layernorm": (layernorm_forward, layernorm_backward),
         "rmsnorm": (rmsnorm_forward, rmsnorm_backward)}


def norm_forward(cfg, x, p: dict, name: str, kind: str | None = None):
    """The norm whose gain is p[name + '.weight'] (and bias '.bias' if present). kind: the
    config's norm by default; MLA's q_norm and kv_norm are RMSNorm in every model."""
    kind = kind or cfg.norm
    return NORMS[kind][0](x, p[name + ".weight"], p.get(name + ".bias"), cfg.norm_eps, name)


def norm_backward(dy, cache: NormCache, grads: dict):
    """Writes name.weight (and name.bias) gradients into `grads`; returns dx."""
    dx, dw, db = NORMS[cache.kind][1](dy, cache)
    grads[cache.name + ".weight"] = dw
    if cache.has_bias:
        grads[cache.name + ".bias"] = db
    return dx
