"""Feed-forward blocks: ReLU, GELU and SwiGLU (the activation's derivative is the backward).

ReLU/GELU:  y = W2 act(W1 x)
    ReLU'(a)  = 1[a > 0]
    GELU (tanh form, GPT-2): g(a) = 0.5 a (1 + tanh(u)),  u = sqrt(2/pi) (a + 0.044715 a^3)
    g'(a) = 0.5 (1 + tanh u) + 0.5 a (1 - tanh^2 u) sqrt(2/pi) (1 + 3 * 0.044715 a^2)
    (computed through sigmoid(2u) = 0.5 (1 + tanh u), which needs one exp and no tanh)
SwiGLU (Shazeer 2020, Llama):  y = W2 (silu(W1 x) * (W3 x)),  silu(a) = a sigmoid(a)
    silu'(a) = s + a s (1 - s),  s = sigmoid(a)
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .linear import LinearCache, dense_backward, dense_forward

SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))


class ActCache(NamedTuple):
    """What an activation's derivative needs."""

    a: np.ndarray  # the pre-activation
    s: np.ndarray | None  # sigmoid(2u) (GELU), sigmoid(a) (SiLU), None (ReLU)


def gelu_forward(a):
    """GELU, tanh form. Uses 0.5 (1 + tanh(u)) = sigmoid(2u): g(a) = a s, s = sigmoid(2u).

    The in-place steps reuse one buffer: on a 2-core CPU this layer is bound by memory traffic,
    not arithmetic, so fewer passes over the (B, T, d_ff) array is what makes it fast.
    """
    u = a * a
    u *= 0.044715
    u += 1.0
    u *= a
    u *= -2.0 * SQRT_2_OVER_PI  # -2u
    np.exp(u, out=u)
    u += 1.0
    s = np.reciprocal(u, out=u)  # sigmoid(2u)
    return a * s, ActCache(a, s)


def gelu_backward(dy, cache):
    """g'(a) = s + 2 sqrt(2/pi) a s (1 - s) (1 + 3 * 0.044715 a^2), since
    d/da sigmoid(2u) = 2 s (1 - s) du/da (the tanh form's 0.5 (1 - tanh^2 u) = 2 s (1 - s))."""
    a, s = cache.a, cache.s
    poly = a * a
    poly *= 3 * 0.044715
    poly += 1.0
    d = 1.0 - s
    d *= s
    d *= a
    d *= 2.0 * SQRT_2_OVER_PI
    d *= poly
    d += s
    d *= dy
    return d


def relu_forward(a):
    return np.maximum(a, 0), ActCache(a, None)


def relu_backward(dy, cache):
    return dy * (cache.a > 0)


def silu_forward(a):
    s = 1.0 / (1.0 + np.exp(-a))
    return a * s, ActCache(a, s)


def silu_backward(dy, cache):
    a, s = cache.a, cache.s
    return dy * (s + a * s * (1.0 - s))


ACT = {"gelu": (gelu_forward, gelu_backward), "relu": (relu_forward, relu_backward),
       "silu": (silu_forward, silu_backward)}


class MLPCache(NamedTuple):
    """y = W2 act(W1 x): what the backward pass needs."""

    activation: str  # "gelu" | "relu"
    w1: LinearCache
    act: ActCache  # of a = W1 x
    w2: LinearCache


class SwiGLUCache(NamedTuple):
    """y = W2 (silu(g) * u), g = W1 x, u = W3 x: what the backward pass needs."""

    w1: LinearCache  # gate
    w3: LinearCache  # up
    silu: ActCache  # of g
    silu_g: np.ndarray  # silu(g)  (B, T, d_ff)
    u: np.ndarray  # (B, T, d_ff)
    w2: LinearCache  # down


def ffn_forward(cfg, x, p: dict, prefix: str, lora: dict | None = None):
    """x: (B, T, d_model) -> (B, T, d_model). prefix: e.g. 'h.0.ffn.'; weights p[prefix + 'w1'],
    'w2', 'w3' (SwiGLU); the activation is cfg.activation."""
    lora = lora or {}
    if cfg.activation == "swiglu":
        g, c1 = dense_forward(p, prefix + "w1", x, lora)  # gate (B, T, d_ff)
        u, c3 = dense_forward(p, prefix + "w3", x, lora)  # up   (B, T, d_ff)
        sg, cs = silu_forward(g)
        y, c2 = dense_forward(p, prefix + "w2", sg * u, lora)  # down (B, T, d_model)
        return y, SwiGLUCache(c1, c3, cs, sg, u, c2)
    a, c1 = dense_forward(p, prefix + "w1", x, lora)  # (B, T, d_ff)
    h, ca = ACT[cfg.activation][0](a)
    y, c2 = dense_forward(p, prefix + "w2", h, lora)
    return y, MLPCache(cfg.activation, c1, ca, c2)


def ffn_backward(dy, cache: MLPCache | SwiGLUCache, grads: dict, frozen=frozenset()):
    """dy: (B, T, d_model) -> dx; writes the weights' gradients into `grads`.
    SwiGLU: dh = dy W2;  dg = silu'(g) (dh * u);  du = dh * silu(g);  dx = dg W1 + du W3."""
    c = cache
    if isinstance(c, SwiGLUCache):
        dh = dense_backward(dy, c.w2, grads, frozen)
        dg = silu_backward(dh * c.u, c.silu)
        return dense_backward(dg, c.w1, grads, frozen) + dense_backward(dh * c.silu_g, c.w3,
                                                                          grads, frozen)
    dh = dense_backward(dy, c.w2, grads, frozen)
    return dense_backward(ACT[c.activation][1](dh, c.act), c.w1, grads, frozen)
