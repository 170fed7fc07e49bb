"""Positional information: learned, sinusoidal, rotary (RoPE) and ALiBi.

* Learned: a second table `wpe` (context_length, d_model) added to the token embedding; its
  backward is the embedding backward with positions as ids.
* Sinusoidal (Vaswani et al. 2017): a fixed table added to the embedding, no parameters:
      PE[p, 2i] = sin(p / 10000^(2i/d)),   PE[p, 2i+1] = cos(p / 10000^(2i/d))
* RoPE (Su et al. 2021): rotate each pair (x1, x2) of query/key features by an angle
  proportional to the position, so that q_m . k_n depends only on m - n:
      out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin,   theta_i = base^(-2i/d)
  Which features pair up is a convention ("pairing"), and weights are trained for one of them:
      half (Llama/HF):          x1 = x[:d/2],  x2 = x[d/2:]   (feature i with i + d/2)
      interleaved (DeepSeek, the paper, GPT-J):  x1 = x[0::2], x2 = x[1::2]   (2i with 2i + 1)
  A rotation is orthogonal, so its backward is the rotation by the opposite angle:
      dx1 = dy1 cos + dy2 sin,  dx2 = dy2 cos - dy1 sin
* ALiBi (Press et al. 2022): no embedding; head h adds -m_h (i - j) to the score of query i
  and key j, m_h = 2^(-8h/H), h = 1..H. The bias is a constant, so the backward of
  S = QK^T/sqrt(d) + bias is that of QK^T/sqrt(d): ALiBi costs the backward pass nothing.
"""

from __future__ import annotations

import numpy as np


def sinusoidal_table(n_pos: int, d: int, base: float = 10000.0, dtype=np.float32) -> np.ndarray:
    pos = np.arange(n_pos, dtype=np.float64)[:, None]
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    pe = np.zeros((n_pos, d))
    pe[:, 0::2] = np.sin(pos * inv)
    pe[:, 1::2] = np.cos(pos * inv)
    return pe.astype(dtype)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float, dtype=np.float32):
    """cos and sin of shape (T, head_dim // 2) for the given absolute positions.

    The angles are computed in float32, the way HF transformers computes them, so that a real
    model's logits agree with it as closely as float32 allows (their rounding is the largest
    difference between implementations)."""
    inv_freq = (1.0 / (np.float32(theta) ** (np.arange(0, head_dim, 2).astype(np.float32)
                                             / np.float32(head_dim)))).astype(np.float32)
    ang = positions.astype(np.float32)[:, None] * inv_freq[None, :]
    return np.cos(ang).astype(dtype), np.sin(ang).astype(dtype)


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                 pairing: str = "half") -> np.ndarray:
    """x: (..., T, d); cos, sin: (T, d // 2). pairing: "half" or "interleaved"."""
    if pairing == "half":  # feature i rotates with feature i + d/2
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # feature 2i rotates with feature 2i + 1
    out = np.empty(x.shape, np.result_type(x, cos))
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x2 * cos + x1 * sin
    return out


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray,
                  pairing: str = "half") -> np.ndarray:
    return rope_forward(dy, cos, -sin, pairing)  # rotate back by the same angle


def alibi_slopes(n_head: int) -> np.ndarray:
    """m_h = 2^(-8h/H), h = 1..H, rounded to float32 as the torch engine's are (exact when H is
    a power of two), so that both engines add the same bias."""
    return np.array([2.0 ** (-8.0 * (h + 1) / n_head) for h in range(n_head)], np.float32)


def alibi_bias(n_head: int, T: int, S: int, pos0: int, dtype) -> np.ndarray:
    """(H, T, S) additive scores: -m_h (query position - key position), -inf for the future."""
    dist = (pos0 + np.arange(T))[:, None] - np.arange(S)[None, :]  # (T, S): i - j
    bias = -alibi_slopes(n_head).astype(np.float64)[:, None, None] * dist
    return np.where(dist < 0, -np.inf, bias).astype(dtype)
