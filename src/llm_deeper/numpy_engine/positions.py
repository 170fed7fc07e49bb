"""Positional information: learned, sinusoidal and rotary (RoPE).

* Learned: a second table `wpe` (context_length, d_model) added to the token embedding; its
  backward is the embedding backward with positions as ids.
* Sinusoidal (Vaswani et al. 2017): a fixed table added to the embedding, no parameters:
      PE[p, 2i] = sin(p / 10000^(2i/d)),   PE[p, 2i+1] = cos(p / 10000^(2i/d))
* RoPE (Su et al. 2021): rotate each pair of query/key features by an angle proportional to
  the position, so that q_m . k_n depends only on m - n. Pairing here is the "half-split" one of
  Llama/HF (feature i pairs with feature i + head_dim/2):
      out1 = x1 cos - x2 sin,   out2 = x2 cos + x1 sin,   theta_i = base^(-2i/head_dim)
  A rotation is orthogonal, so its backward is the rotation by the opposite angle:
      dx1 = dy1 cos + dy2 sin,  dx2 = dy2 cos - dy1 sin
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


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: (..., T, head_dim); cos, sin: (T, head_dim // 2)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return rope_forward(dy, cos, -sin)  # rotate back by the same angle
