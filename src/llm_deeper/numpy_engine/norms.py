"""LayerNorm and RMSNorm, forward and backward, over the last axis.

LayerNorm:  xhat = (x - mean) / sqrt(var + eps),  y = xhat * w + b
    dxhat = dy * w
    dx = (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)) / sqrt(var + eps)
RMSNorm (Zhang & Sennrich 2019, used by Llama): no centring, no bias.
    xhat = x / sqrt(mean(x^2) + eps),  y = xhat * w
    dx = (dxhat - xhat * mean(dxhat * xhat)) / sqrt(mean(x^2) + eps)
"""

from __future__ import annotations

import numpy as np


def layernorm_forward(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat * w
    if b is not None:
        y = y + b
    return y, (xhat, rstd, w)


def layernorm_backward(dy, cache):
    xhat, rstd, w = cache
    lead = tuple(range(dy.ndim - 1))
    dw = (dy * xhat).sum(lead)
    db = dy.sum(lead)
    dxhat = dy * w
    dx = (dxhat - dxhat.mean(-1, keepdims=True)
          - xhat * (dxhat * xhat).mean(-1, keepdims=True)) * rstd
    return dx, dw, db


def rmsnorm_forward(x, w, b, eps):
    rstd = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + eps)
    xhat = x * rstd
    return xhat * w, (xhat, rstd, w)


def rmsnorm_backward(dy, cache):
    xhat, rstd, w = cache
    lead = tuple(range(dy.ndim - 1))
    dw = (dy * xhat).sum(lead)
    dxhat = dy * w
    dx = (dxhat - xhat * (dxhat * xhat).mean(-1, keepdims=True)) * rstd
    return dx, dw, None


NORMS = {"layernorm": (layernorm_forward, layernorm_backward),
         "rmsnorm": (rmsnorm_forward, rmsnorm_backward)}
