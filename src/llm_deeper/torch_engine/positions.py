"""Positions in the PyTorch engine: sinusoidal, RoPE (half-split and interleaved) and ALiBi.

RoPE rotates pairs of features of each query and key by an angle p * theta^(-2i/d). Which
features pair up is a convention with consequences for weights: Llama/HF ("half") pair feature
i with i + d/2; GPT-NeoX-style code and the original paper ("interleaved") pair 2i with 2i + 1.
Both give the same scores up to a permutation of the weight rows (test_torch_engine.py).

ALiBi (Press et al. 2022) adds no embedding at all: head h adds -m_h * (distance) to its scores,
with slopes m_h = 2^(-8h/H), so farther keys count less, and lengths beyond training still work.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype):
    """cos and sin of the rotation angles p * theta^(-2i/head_dim), (T, head_dim // 2).

    Computed in float32 exactly as HF transformers does (inverse frequencies from an int64
    arange, angles as a float32 product), so that logits match it to the last bit rather than
    to ~1e-4: the angle's float32 rounding is the largest difference between implementations."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    ang = positions.float()[:, None] * inv_freq[None, :]
    return ang.cos().to(dtype), ang.sin().to(dtype)


_TABLES: dict = {}


def _cached(key, make):
    if key not in _TABLES:
        # normal tensors even when first asked for under inference_mode (the serving engine),
        # so that training in the same process can still use them
        with torch.inference_mode(False):
            _TABLES[key] = make()
    return _TABLES[key]


def rope_table(cfg: ModelConfig, device, dtype):
    """cos, sin for every position of the context: (context_length, rope_dim // 2), cached."""
    def make():
        cos, sin = rope_cos_sin(torch.arange(cfg.context_length), cfg.rope_dim, cfg.rope_theta,
                                dtype)
        return cos.to(device), sin.to(device)

    return _cached(("rope", cfg.rope_dim, cfg.rope_theta, cfg.context_length, str(device), dtype),
                   make)


def sinusoidal_positions(cfg: ModelConfig, device, dtype):
    """The sinusoidal table for every position of the context: (context_length, d_model)."""
    return _cached(("sin", cfg.d_model, cfg.context_length, str(device), dtype),
                   lambda: sinusoidal_table(cfg.context_length, cfg.d_model, dtype, device))


def apply_rope(x, cos, sin, pairing: str = "half"):
    """x: (..., T, d); cos, sin: (T, d // 2)."""
    if pairing == "half":  # feature i rotates with feature i + d/2
        half = x.shape[-1] // 2
        x1, x2 = x[..., :half], x[..., half:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]  # feature 2i rotates with feature 2i + 1
    return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)


def rope_rotation(cos, sin, pairing: str = "half"):
    """The same rotation as apply_rope in the form `x * cos_full + swap(x) * sin_signed`
    (`rotate`), whose tables span the whole head: (T, d // 2) -> (T, d) each. Rotating a pair
    (a, b) by t gives (a cos t - b sin t, b cos t + a sin t)
                    = (a, b) cos t + (b, a) (-sin t, sin t):
    swap the partners, fold the sign into the sin table. Three elementwise operations for any
    number of heads at once, bit for bit apply_rope's results (negation is exact)."""
    if pairing == "half":
        return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)
    return cos.repeat_interleave(2, -1), torch.stack([-sin, sin], -1).flatten(-2)


def rotate(x, cos_full, sin_signed, pairing: str = "half"):
    """x: (..., d), the tables broadcast against it (rope_rotation)."""
    d = x.shape[-1]
    if pairing == "half":  # partner of feature i is i + d/2: swap the halves
        swapped = x.unflatten(-1, (2, d // 2)).flip(-2).flatten(-2)
    else:  # partner of feature 2i is 2i + 1: swap within each pair
        swapped = x.unflatten(-1, (d // 2, 2)).flip(-1).flatten(-2)
    return x * cos_full + swapped * sin_signed


def sinusoidal_table(n_pos: int, d: int, dtype, device=None):
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    inv = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    pe = torch.zeros(n_pos, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(pos * inv)
    pe[:, 1::2] = torch.cos(pos * inv)
    return pe.to(dtype=dtype, device=device)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """m_h = 2^(-8 h / H) for h = 1..H (the paper's geometric sequence)."""
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / n_head) for h in range(n_head)])


def alibi_bias(n_head: int, T: int, S: int, pos0: int, dtype, device) -> torch.Tensor:
    """(H, T, S) additive scores: -m_h (query position - key position), -inf for the future."""
    q = pos0 + torch.arange(T, device=device)[:, None]
    k = torch.arange(S, device=device)[None, :]
    dist = (q - k).to(dtype)
    bias = -alibi_slopes(n_head).to(device=device, dtype=dtype)[:, None, None] * dist
    return bias.masked_fill(k > q, float("-inf"))
