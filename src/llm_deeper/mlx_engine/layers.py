"""The decoder's layers in MLX, one function each, the NumPy engine's math line for line.

Every function takes `p`, the flat name -> array mapping of params.py (`h.0.attn.wq`, ...), and
builds a lazy graph: nothing is computed until `mx.eval` (or `.item()`, `np.array(...)`) asks
for a result. There is no backward here: `mx.value_and_grad` differentiates these functions, as
autograd does in the PyTorch engine.

    linear      y = x W^T + b                      (W stored (out, in), as in PyTorch)
    LayerNorm   (x - mean) / sqrt(var + eps) * w + b;   RMSNorm  x / sqrt(mean(x^2) + eps) * w
    GELU        a * sigmoid(2u), u = sqrt(2/pi) (a + 0.044715 a^3)   (the tanh form, GPT-2)
    SwiGLU      W2 (silu(W1 x) * W3 x)
    attention   softmax(Q K^T / sqrt(d_h) + mask) V, grouped K/V heads (MHA, GQA, MQA)
"""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np

from ..params import bias_name

IGNORE = -100  # a target that is not predicted (numpy_engine/loss.py)


def linear(p: dict, name: str, x):
    """y = x W^T (+ b) with W = p[name] and b = p[bias_name(name)] when the config has biases."""
    y = x @ p[name].T
    b = p.get(bias_name(name))
    return y if b is None else y + b


def norm(cfg, x, p: dict, name: str):
    """The config's norm, gain p[name + '.weight'] (and bias '.bias' if present)."""
    eps = cfg.norm_eps
    if cfg.norm == "rmsnorm":
        return x * mx.rsqrt(mx.mean(x * x, axis=-1, keepdims=True) + eps) * p[name + ".weight"]
    xc = x - mx.mean(x, axis=-1, keepdims=True)
    y = xc * mx.rsqrt(mx.mean(xc * xc, axis=-1, keepdims=True) + eps) * p[name + ".weight"]
    b = p.get(name + ".bias")
    return y if b is None else y + b


def gelu(a):
    """GELU, tanh form: 0.5 a (1 + tanh u) = a sigmoid(2u)."""
    return a * mx.sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (a + 0.044715 * a * a * a))


def ffn(cfg, x, p: dict, prefix: str):
    """The block's MLP: W2 act(W1 x), or SwiGLU's W2 (silu(W1 x) * W3 x)."""
    if cfg.activation == "swiglu":
        g = linear(p, prefix + "w1", x)
        return linear(p, prefix + "w2", g * mx.sigmoid(g) * linear(p, prefix + "w3", x))
    a = linear(p, prefix + "w1", x)
    h = gelu(a) if cfg.activation == "gelu" else mx.maximum(a, 0.0)
    return linear(p, prefix + "w2", h)


def dropout(x, p_drop: float, key):
    """Inverted dropout with an explicit key (None: off). MLX's random numbers are functions of
    a key, so the same key gives the same mask: that is how a resumed run repeats its masks."""
    if key is None or p_drop <= 0.0:
        return x
    keep = mx.random.bernoulli(1.0 - p_drop, x.shape, key=key)
    return mx.where(keep, x / (1.0 - p_drop), 0.0)


# --- positions ------------------------------------------------------------------------------

def sinusoidal_table(n_pos: int, d: int):
    """PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(...), computed in float64 and rounded
    once, as the other engines do."""
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    inv = 10000.0 ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    pe = np.zeros((n_pos, d))
    pe[:, 0::2] = np.sin(pos * inv)
    pe[:, 1::2] = np.cos(pos * inv)
    return mx.array(pe.astype(np.float32))


def rope_cos_sin(pos0: int, T: int, dim: int, theta: float):
    """cos, sin of the angles p * theta^(-2i/dim) for p = pos0..pos0+T-1: (T, dim // 2), the
    angles in float32 as the other engines (and HF transformers) compute them."""
    inv = 1.0 / (np.float32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim)))
    ang = np.arange(pos0, pos0 + T).astype(np.float32)[:, None] * inv.astype(np.float32)[None]
    return mx.array(np.cos(ang)), mx.array(np.sin(ang))


def apply_rope(x, cos, sin, pairing: str = "half"):
    """x: (..., T, d). half: feature i turns with i + d/2; interleaved: 2i with 2i + 1."""
    if pairing == "half":
        h = x.shape[-1] // 2
        x1, x2 = x[..., :h], x[..., h:]
        return mx.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return mx.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(x.shape)


_BIAS: dict = {}


def score_bias(cfg, T: int, S: int, pos0: int):
    """The additive mask, shaped to broadcast over (B, KV, G, T, S): 0 where query pos0 + t may
    see key s (s <= pos0 + t), -inf after; with ALiBi also -m_h (i - j), m_h = 2^(-8h/H).
    Cached (MLX arrays are immutable, so sharing one is safe)."""
    key = (T, S, pos0, cfg.position == "alibi" and (cfg.n_head, cfg.n_kv_head))
    if key not in _BIAS:
        if len(_BIAS) > 256:
            _BIAS.clear()
        _BIAS[key] = _make_bias(cfg, T, S, pos0)
    return _BIAS[key]


def _make_bias(cfg, T: int, S: int, pos0: int):
    dist = (pos0 + np.arange(T))[:, None] - np.arange(S)[None, :]  # (T, S): i - j
    if cfg.position != "alibi":
        return mx.array(np.where(dist < 0, -np.inf, 0.0).astype(np.float32))
    H, KV = cfg.n_head, cfg.n_kv_head
    slopes = np.array([2.0 ** (-8.0 * (h + 1) / H) for h in range(H)], np.float32)
    bias = -slopes.astype(np.float64)[:, None, None] * dist
    bias = np.where(dist < 0, -np.inf, bias).astype(np.float32)
    return mx.array(bias.reshape(KV, H // KV, T, S))


# --- attention --------------------------------------------------------------------------------

def attention(cfg, x, p: dict, prefix: str, *, rope=None, cache=None, layer: int = 0,
              pos0: int = 0, key=None):
    """Causal self-attention with n_kv_head key/value heads, each serving G = n_head / n_kv_head
    query heads (queries viewed (B, KV, G, T, d_h), keys broadcast over G, never copied).
    x: (B, T, d_model). cache: a KVCache (model.py) to append to and attend over, or None.
    key: dropout's key for the attention probabilities, or None."""
    B, T, _ = x.shape
    H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    G = H // KV
    q = linear(p, prefix + "wq", x).reshape(B, T, H, hd).transpose(0, 2, 1, 3)
    k = linear(p, prefix + "wk", x).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    v = linear(p, prefix + "wv", x).reshape(B, T, KV, hd).transpose(0, 2, 1, 3)
    if rope is not None:
        q = apply_rope(q, *rope, cfg.rope_pairing)
        k = apply_rope(k, *rope, cfg.rope_pairing)
    if cache is not None:
        k, v = cache.store(layer, k, v)
    S = k.shape[2]
    qg = q.reshape(B, KV, G, T, hd)
    kg, vg = k[:, :, None], v[:, :, None]  # (B, KV, 1, S, hd)
    scores = (qg @ kg.swapaxes(-1, -2)) * (1.0 / math.sqrt(hd)) + score_bias(cfg, T, S, pos0)
    P = dropout(mx.softmax(scores, axis=-1), cfg.dropout, key)
    out = (P @ vg).reshape(B, H, T, hd).transpose(0, 2, 1, 3).reshape(B, T, H * hd)
    return linear(p, prefix + "wo", out)


def cross_entropy(logits, targets):
    """Mean over predicted positions of logsumexp(z) - z[target]; targets == IGNORE don't count."""
    V = logits.shape[-1]
    z = logits.reshape(-1, V)
    t = targets.reshape(-1)
    valid = t != IGNORE
    picked = mx.take_along_axis(z, mx.where(valid, t, 0)[:, None], axis=-1)[:, 0]
    nll = (mx.logsumexp(z, axis=-1) - picked) * valid
    return nll.sum() / mx.maximum(valid.sum(), 1)
