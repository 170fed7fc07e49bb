"""A decoder in MLX built from `ModelConfig`, parameter for parameter the NumPy engine's.

    x = wte[ids] (+ wpe[pos] | + sinusoidal[pos])          (B, T, d_model)
    for each block:  x = x + Attention(Norm1(x));  x = x + FFN(Norm2(x))
    logits = NormF(x) @ W_head^T                            (B, T, vocab_size)

`forward(p, cfg, ids, ...)` is the whole model as one function of the flat name -> array mapping
of params.py (the names in `model.safetensors`). `MlxGPT` is an `mlx.nn.Module` holding those
arrays as a tree whose flattened names are exactly those names (`h` is a list of blocks), so
`mlx.nn.value_and_grad(model, fn)` returns gradients under the same names and MLX's optimizers
update it in place.

What it supports: every norm, activation and position of ModelConfig, MHA/GQA/MQA, biases, tied
or untied heads and dropout. Multi-head latent attention (attention="mla") and LoRA adapters
are refused with one sentence: use the NumPy or PyTorch engine for those.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from ..config import ModelConfig
from ..errors import UserError
from ..params import check_params, init_params, param_shapes
from .layers import attention, cross_entropy, dropout, ffn, norm, rope_cos_sin, sinusoidal_table


def check_supported(cfg: ModelConfig) -> None:
    """Refuse (UserError, one sentence) what this engine does not compute."""
    if cfg.attention == "mla":
        raise UserError("the MLX engine has no multi-head latent attention (attention 'mla'); "
                        "train or run this config with --engine numpy or torch.")


class KVCache:
    """Keys and values of the positions seen so far, per layer: (B, n_kv_head, pos, head_dim),
    grown by concatenation (MLX arrays are immutable; generation here is one sequence)."""

    def __init__(self, cfg: ModelConfig):
        check_supported(cfg)
        self.k: list = [None] * cfg.n_layer
        self.v: list = [None] * cfg.n_layer
        self.pos = 0

    def store(self, layer: int, k, v):
        """Append k, v (B, KV, T, hd); return the layer's keys and values so far."""
        if self.k[layer] is not None:
            k = mx.concatenate([self.k[layer], k], axis=2)
            v = mx.concatenate([self.v[layer], v], axis=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


def n_dropout_keys(cfg: ModelConfig) -> int:
    """Dropout sites in one forward: the embeddings, then per block the attention
    probabilities, the attention branch and the FFN branch (the NumPy engine's four)."""
    return 1 + 3 * cfg.n_layer


def forward(p: dict, cfg: ModelConfig, ids, targets=None, *, cache: KVCache | None = None,
            key=None):
    """ids: (B, T) integers (mx or NumPy) -> (logits (B, T, V), mean cross-entropy or None).
    cache: continue a sequence at cache.pos (generation). key: an mx.random key that turns
    dropout on (training only); each dropout site gets its own split of it."""
    pos0 = cache.pos if cache is not None else 0
    if isinstance(ids, mx.array):  # the length only: reading the ids would force evaluation
        cfg.check_input(ids, pos0, vocab=False)
    else:
        ids = np.asarray(ids)
        cfg.check_input(ids, pos0)
        ids = mx.array(ids)
    T = ids.shape[1]
    keys = iter(mx.random.split(key, n_dropout_keys(cfg)) if key is not None
                else [None] * n_dropout_keys(cfg))
    x = p["wte"][ids]
    if cfg.position == "learned":
        x = x + p["wpe"][pos0:pos0 + T]
    elif cfg.position == "sinusoidal":
        x = x + sinusoidal_table(pos0 + T, cfg.d_model)[pos0:]
    x = dropout(x, cfg.dropout, next(keys))
    rope = (rope_cos_sin(pos0, T, cfg.rope_dim, cfg.rope_theta) if cfg.position == "rope"
            else None)
    for i in range(cfg.n_layer):
        pre = f"h.{i}."
        a = attention(cfg, norm(cfg, x, p, pre + "norm1"), p, pre + "attn.", rope=rope,
                      cache=cache, layer=i, pos0=pos0, key=next(keys))
        x = x + dropout(a, cfg.dropout, next(keys))
        f = ffn(cfg, norm(cfg, x, p, pre + "norm2"), p, pre + "ffn.")
        x = x + dropout(f, cfg.dropout, next(keys))
    h = norm(cfg, x, p, "norm_f")
    logits = h @ (p["wte"] if cfg.tie_embeddings else p["lm_head"]).T
    if cache is not None:
        cache.pos += T
    loss = None
    if targets is not None:
        t = mx.array(targets) if not isinstance(targets, mx.array) else targets
        loss = cross_entropy(logits, t)
    return logits, loss


class MlxGPT(nn.Module):
    """The decoder as an `mlx.nn.Module`: `model(ids, targets)` -> (logits, loss)."""

    def __init__(self, cfg: ModelConfig, params: dict | None = None, seed: int = 0):
        super().__init__()
        check_supported(cfg)
        if params is None:
            params = init_params(cfg, seed)
        extra = sorted(set(params) - set(param_shapes(cfg)))
        if extra:
            raise UserError(f"the MLX engine runs plain checkpoints; these weights have {extra[0]} "
                            "(a LoRA adapter?): merge it first or use --engine numpy.")
        check_params(cfg, params)
        tree = tree_unflatten([(k, mx.array(np.asarray(v, dtype=np.float32)))
                               for k, v in params.items()])
        for name, value in tree.items():  # wte, wpe, h (a list of blocks), norm_f, lm_head
            setattr(self, name, value)
        self.cfg = cfg  # a plain attribute: not an array, so not a parameter

    def param_dict(self) -> dict:
        """Name -> array, the names of params.py ('h.0.attn.wq'). Read at every call: under
        value_and_grad the module holds the arrays being differentiated."""
        return dict(tree_flatten(self.parameters()))

    def numpy_params(self) -> dict[str, np.ndarray]:
        """The parameters as NumPy float32 arrays (for checkpoints and the other engines)."""
        p = self.param_dict()
        mx.eval(p)
        return {k: np.array(v, dtype=np.float32) for k, v in p.items()}

    def __call__(self, ids, targets=None, cache: KVCache | None = None, key=None):
        return forward(self.param_dict(), self.cfg, ids, targets, cache=cache, key=key)

    def n_params(self) -> int:
        return sum(v.size for v in self.param_dict().values())
