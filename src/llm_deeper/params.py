"""The parameter schema every engine and every checkpoint shares: names, shapes, init.

One `ModelConfig` gives one set of named tensors. Weights of linear layers are stored
`(out_features, in_features)` as in PyTorch, so `y = x @ W.T`; a weight `w*` has its bias `b*`
beside it (`h.0.attn.wq` -> `h.0.attn.bq`) when the config has biases:

    wte                     (vocab_size, d_model)       token embedding
    wpe                     (context_length, d_model)   learned positions only
    h.{i}.norm1.weight/.bias                            pre-attention norm (bias: LayerNorm + bias)
    h.{i}.attn.wq/.wk/.wv/.wo (+ .bq/.bk/.bv/.bo)       attention projections
    h.{i}.attn.wq_a, q_norm.weight, wq_b | wq           MLA queries (compressed or direct)
    h.{i}.attn.wkv_a, kv_norm.weight, wkv_b, wo         MLA latent keys/values
    h.{i}.norm2.weight/.bias                            pre-FFN norm
    h.{i}.ffn.w1 (+ .b1)    (d_ff, d_model)             up (GELU/ReLU) or gate (SwiGLU)
    h.{i}.ffn.w3            (d_ff, d_model)             up (SwiGLU only)
    h.{i}.ffn.w2 (+ .b2)    (d_model, d_ff)             down
    norm_f.weight/.bias                                 final norm
    lm_head                 (vocab_size, d_model)       untied head only

This module imports only NumPy: the NumPy engine, the PyTorch engine and checkpoint loading all
read it, and none of them has to import another engine to know what a model is made of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .config import ModelConfig

LORA_SUFFIXES = (".lora_A", ".lora_B")


def bias_name(weight_name: str) -> str:
    """'h.0.attn.wq' -> 'h.0.attn.bq': every weight `w*` has its bias `b*` beside it."""
    head, _, last = weight_name.rpartition(".")
    return f"{head}.b{last[1:]}"


def param_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter of the model `cfg` describes, in a fixed order."""
    d, f, hd = cfg.d_model, cfg.d_ff, cfg.head_dim
    shapes: dict[str, tuple[int, ...]] = {"wte": (cfg.vocab_size, d)}
    if cfg.position == "learned":
        shapes["wpe"] = (cfg.context_length, d)

    def norm(name):
        shapes[name + ".weight"] = (d,)
        if cfg.norm == "layernorm" and cfg.bias:
            shapes[name + ".bias"] = (d,)

    def lin(name, out_f, in_f):
        shapes[name] = (out_f, in_f)
        if cfg.bias:
            shapes[bias_name(name)] = (out_f,)

    for i in range(cfg.n_layer):
        p = f"h.{i}."
        norm(p + "norm1")
        if cfg.attention == "mla":  # torch_engine/mla.py, numpy_engine/mla.py
            H, qk = cfg.n_head, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
            if cfg.q_lora_rank:
                shapes[p + "attn.wq_a"] = (cfg.q_lora_rank, d)
                shapes[p + "attn.q_norm.weight"] = (cfg.q_lora_rank,)
                shapes[p + "attn.wq_b"] = (H * qk, cfg.q_lora_rank)
            else:
                shapes[p + "attn.wq"] = (H * qk, d)
            shapes[p + "attn.wkv_a"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d)
            shapes[p + "attn.kv_norm.weight"] = (cfg.kv_lora_rank,)
            shapes[p + "attn.wkv_b"] = (H * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                        cfg.kv_lora_rank)
            shapes[p + "attn.wo"] = (d, H * cfg.v_head_dim)
        else:
            lin(p + "attn.wq", cfg.n_head * hd, d)
            lin(p + "attn.wk", cfg.n_kv_head * hd, d)
            lin(p + "attn.wv", cfg.n_kv_head * hd, d)
            lin(p + "attn.wo", d, cfg.n_head * hd)
        norm(p + "norm2")
        lin(p + "ffn.w1", f, d)
        if cfg.activation == "swiglu":
            lin(p + "ffn.w3", f, d)
        lin(p + "ffn.w2", d, f)
    norm("norm_f")
    if not cfg.tie_embeddings:
        shapes["lm_head"] = (cfg.vocab_size, d)
    return shapes


def n_params(cfg: ModelConfig) -> int:
    return sum(int(np.prod(s)) for s in param_shapes(cfg).values())


def init_params(cfg: ModelConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """GPT-2 initialisation: N(0, 0.02) weights, the two residual projections (wo, w2) scaled by
    1/sqrt(2 n_layer) so the residual stream's variance does not grow with depth; norm gains 1,
    biases 0. Both engines start from these arrays, so a seed means the same model in each."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name.endswith(".weight") and len(shape) == 1:
            a = np.ones(shape)
        elif len(shape) == 1:
            a = np.zeros(shape)
        else:
            std = 0.02
            if name.endswith(("attn.wo", "ffn.w2")):
                std /= np.sqrt(2 * cfg.n_layer)
            a = rng.normal(0.0, std, size=shape)
        params[name] = a.astype(dtype)
    return params


def check_params(cfg: ModelConfig, params: dict, where: str = "the parameters") -> None:
    """Every parameter the config calls for is present with its shape (one sentence if not)."""
    from .errors import UserError

    expected = param_shapes(cfg)
    missing = [k for k in expected if k not in params]
    if missing:
        raise UserError(f"{where}: {missing[0]} is missing ({len(missing)} in all); the "
                        "weights do not match the config.")
    for k, shape in expected.items():
        if tuple(params[k].shape) != tuple(shape):
            raise UserError(f"{where}: {k} has shape {tuple(params[k].shape)}, the config "
                            f"says {tuple(shape)}.")
