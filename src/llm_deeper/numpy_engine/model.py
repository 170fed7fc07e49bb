"""The decoder: embeddings -> n_layer pre-norm blocks -> final norm -> LM head.

    x = wte[ids] (+ wpe[pos] | + sinusoidal[pos])          (B, T, d_model)
    for each block:  x = x + Attention(Norm1(x));  x = x + FFN(Norm2(x))
    logits = NormF(x) @ W_head^T                            (B, T, vocab_size)

Attention is attention.py (MHA, GQA, MQA; RoPE or ALiBi inside) or mla.py (multi-head latent
attention). `forward` keeps what `backward` needs (one BlockCache per layer, one ForwardCache in
all); `backward` walks the same steps in reverse, each layer's backward from its own file, and
returns a gradient for every trainable parameter.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import numpy as np

from ..config import ModelConfig
from ..params import init_params
from .attention import AttentionCache, attention_backward, attention_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .ffn import MLPCache, SwiGLUCache, ffn_backward, ffn_forward
from .loss import CrossEntropyCache, cross_entropy_backward, cross_entropy_forward
from .mla import MLACache, mla_backward, mla_forward
from .norms import NormCache, norm_backward, norm_forward
from .positions import rope_cos_sin, sinusoidal_table


class KVCache:
    """What generation keeps of the positions seen so far, for every layer: keys and values
    (B, n_kv_head, max_len, head_dim), or for MLA the latent c (B, max_len, kv_lora_rank) and
    the shared RoPE key k_pe (B, max_len, qk_rope_head_dim) (mla.py)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 dtype=np.float32):
        n = max_len or cfg.context_length
        L = cfg.n_layer
        self.k, self.v, self.c, self.k_pe = [], [], [], []
        if cfg.attention == "mla":
            self.c = [np.zeros((batch_size, n, cfg.kv_lora_rank), dtype) for _ in range(L)]
            self.k_pe = [np.zeros((batch_size, n, cfg.qk_rope_head_dim), dtype) for _ in range(L)]
        else:
            shape = (batch_size, cfg.n_kv_head, n, cfg.head_dim)
            self.k = [np.zeros(shape, dtype) for _ in range(L)]
            self.v = [np.zeros(shape, dtype) for _ in range(L)]
        self.bytes_per_position = (batch_size * cfg.kv_cache_numbers_per_token()
                                   * np.dtype(dtype).itemsize)
        self.max_len = n
        self.pos = 0

    def store(self, layer: int, pos0: int, k, v):
        """k, v: (B, n_kv_head, T, head_dim) at pos0..; returns the layer's keys/values so far."""
        T = k.shape[2]
        self.k[layer][:, :, pos0:pos0 + T] = k
        self.v[layer][:, :, pos0:pos0 + T] = v
        return self.k[layer][:, :, :pos0 + T], self.v[layer][:, :, :pos0 + T]

    def store_latent(self, layer: int, pos0: int, c, k_pe):
        """MLA: c (B, T, kv_lora_rank), k_pe (B, T, qk_rope_head_dim) at pos0..; returns the
        layer's latents and RoPE keys so far."""
        T = c.shape[1]
        self.c[layer][:, pos0:pos0 + T] = c
        self.k_pe[layer][:, pos0:pos0 + T] = k_pe
        return self.c[layer][:, :pos0 + T], self.k_pe[layer][:, :pos0 + T]

    def nbytes(self) -> int:
        """Bytes of the filled positions."""
        return self.pos * self.bytes_per_position


class BlockCache(NamedTuple):
    """One block's forward, kept for its backward."""

    norm1: NormCache
    attn: AttentionCache | MLACache
    drop_attn: np.ndarray | None  # dropout's mask on the attention branch
    norm2: NormCache
    ffn: MLPCache | SwiGLUCache
    drop_ffn: np.ndarray | None


class ForwardCache(NamedTuple):
    """The whole forward pass, kept for backward()."""

    ids: np.ndarray  # (B, T)
    drop_emb: np.ndarray | None  # dropout's mask on the embeddings
    blocks: list  # [BlockCache] per layer
    norm_f: NormCache
    h: np.ndarray  # (B, T, d_model) NormF(x), the LM head's input
    loss: CrossEntropyCache


class GPT:
    mla_absorb = False  # MLA only: inference through the absorbed (latent) path, mla.py

    def __init__(self, cfg: ModelConfig, params: dict | None = None, seed: int = 0,
                 dtype=np.float32):
        self.cfg = cfg
        self.params = params if params is not None else init_params(cfg, seed, dtype)
        self.lora: dict[str, tuple] = {}  # weight name -> (A, B, scale); see lora.py
        self.frozen: frozenset[str] = frozenset()  # names that get no gradient
        self._cache: ForwardCache | None = None
        self._rope_tables: dict = {}

    @property
    def dtype(self):
        return self.params["wte"].dtype

    # ------------------------------------------------------------------------ helpers
    def _rope(self, pos0: int, T: int):
        if self.cfg.position != "rope":
            return None
        key = (pos0, T)
        if key not in self._rope_tables:
            if len(self._rope_tables) > 64:
                self._rope_tables.clear()
            pos = np.arange(pos0, pos0 + T)
            self._rope_tables[key] = rope_cos_sin(pos, self.cfg.rope_dim, self.cfg.rope_theta,
                                                  self.dtype)
        return self._rope_tables[key]

    def _lora_view(self) -> dict:
        return {name: (self.params[name + ".lora_A"], self.params[name + ".lora_B"], scale)
                for name, scale in self.lora.items()}

    def head_weight(self) -> np.ndarray:
        return self.params["wte"] if self.cfg.tie_embeddings else self.params["lm_head"]

    # ------------------------------------------------------------------------ forward
    def forward(self, ids, targets=None, *, kv_cache: KVCache | None = None, rng=None,
                keep: bool = False):
        """ids: (B, T) ints. Returns (logits (B, T, V), loss or None).

        keep=True stores what backward() needs; rng enables dropout (training only).
        """
        cfg, p = self.cfg, self.params
        ids = np.asarray(ids)
        B, T = ids.shape
        pos0 = kv_cache.pos if kv_cache is not None else 0
        cfg.check_input(ids, pos0)
        lora = self._lora_view()
        attention = (partial(mla_forward, absorb=self.mla_absorb and not keep)
                     if cfg.attention == "mla" else attention_forward)
        x, _ = embedding_forward(ids, p["wte"])
        if cfg.position == "learned":
            x = x + p["wpe"][pos0:pos0 + T]
        elif cfg.position == "sinusoidal":
            x = x + sinusoidal_table(pos0 + T, cfg.d_model, dtype=x.dtype)[pos0:]
        x, drop_emb = dropout_forward(x, cfg.dropout, rng)
        rope = self._rope(pos0, T)
        blocks = []
        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            h, norm1 = norm_forward(cfg, x, p, pre + "norm1")
            a, attn = attention(cfg, h, p, pre + "attn.", rope=rope, lora=lora, cache=kv_cache,
                                layer=i, pos0=pos0, rng=rng)
            a, drop_attn = dropout_forward(a, cfg.dropout, rng)
            x = x + a
            h, norm2 = norm_forward(cfg, x, p, pre + "norm2")
            f, ffn = ffn_forward(cfg, h, p, pre + "ffn.", lora)
            f, drop_ffn = dropout_forward(f, cfg.dropout, rng)
            x = x + f
            blocks.append(BlockCache(norm1, attn, drop_attn, norm2, ffn, drop_ffn))
        h, norm_f = norm_forward(cfg, x, p, "norm_f")
        logits = h @ self.head_weight().T  # (B, T, V)
        if kv_cache is not None:
            kv_cache.pos += T
        loss, closs = (None, None)
        if targets is not None:
            loss, closs = cross_entropy_forward(logits, np.asarray(targets))
        self._cache = ForwardCache(ids, drop_emb, blocks, norm_f, h, closs) if keep else None
        return logits, loss

    # ------------------------------------------------------------------------ backward
    def backward(self, scale: float = 1.0) -> dict[str, np.ndarray]:
        """Gradients of (scale * loss) of the last forward(..., keep=True) call."""
        if self._cache is None or self._cache.loss is None:
            raise RuntimeError("backward() needs a forward(ids, targets, keep=True) first")
        cfg, p, frozen, fc = self.cfg, self.params, self.frozen, self._cache
        attention_bwd = mla_backward if cfg.attention == "mla" else attention_backward
        grads: dict[str, np.ndarray] = {}
        dlogits = cross_entropy_backward(fc.loss, scale)  # (B, T, V)
        V, d = self.head_weight().shape
        dW_head = dlogits.reshape(-1, V).T @ fc.h.reshape(-1, d)
        dx = dlogits @ self.head_weight()
        dx = norm_backward(dx, fc.norm_f, grads)
        for c in reversed(fc.blocks):
            dh = ffn_backward(dropout_backward(dx, c.drop_ffn), c.ffn, grads, frozen)
            dx = dx + norm_backward(dh, c.norm2, grads)
            dh = attention_bwd(dropout_backward(dx, c.drop_attn), c.attn, grads, frozen)
            dx = dx + norm_backward(dh, c.norm1, grads)
        dx = dropout_backward(dx, fc.drop_emb)
        if cfg.position == "learned":
            T = fc.ids.shape[1]
            dwpe = np.zeros_like(p["wpe"])
            dwpe[:T] = dx.sum(0)
            grads["wpe"] = dwpe
        dwte = embedding_backward(dx, fc.ids, cfg.vocab_size)
        if cfg.tie_embeddings:
            grads["wte"] = dwte + dW_head
        else:
            grads["wte"] = dwte
            grads["lm_head"] = dW_head
        self._cache = None
        return {k: v for k, v in grads.items() if k not in frozen}

    def loss_and_grads(self, ids, targets, rng=None, scale: float = 1.0):
        _, loss = self.forward(ids, targets, rng=rng, keep=True)
        return loss, self.backward(scale)

    def n_params(self, trainable_only: bool = False) -> int:
        return sum(v.size for k, v in self.params.items()
                   if not (trainable_only and k in self.frozen))
