"""The decoder: embeddings -> n_layer pre-norm blocks -> final norm -> LM head.

    x = wte[ids] (+ wpe[pos] | + sinusoidal[pos])          (B, T, d_model)
    for each block:  x = x + Attention(Norm1(x));  x = x + FFN(Norm2(x))
    logits = NormF(x) @ W_head^T                            (B, T, vocab_size)

`forward` keeps what `backward` needs; `backward` walks the same steps in reverse, each layer's
backward from its own file, and returns a gradient for every trainable parameter.
"""

from __future__ import annotations

import numpy as np

from ..config import ModelConfig
from ..params import init_params, param_shapes  # noqa: F401 (param_shapes: re-exported)
from .attention import attention_backward, attention_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .ffn import ffn_backward, ffn_forward
from .loss import cross_entropy_backward, cross_entropy_forward
from .norms import NORMS
from .positions import rope_cos_sin, sinusoidal_table


class KVCache:
    """Keys and values of every layer for positions seen so far: (B, n_kv_head, max_len, head_dim)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int | None = None,
                 dtype=np.float32):
        n = max_len or cfg.context_length
        shape = (batch_size, cfg.n_kv_head, n, cfg.head_dim)
        self.k = [np.zeros(shape, dtype) for _ in range(cfg.n_layer)]
        self.v = [np.zeros(shape, dtype) for _ in range(cfg.n_layer)]
        self.max_len = n
        self.pos = 0

    def nbytes(self) -> int:
        return 2 * self.pos * sum(k[:, :, :1].nbytes for k in self.k)


class GPT:
    def __init__(self, cfg: ModelConfig, params: dict | None = None, seed: int = 0,
                 dtype=np.float32):
        from ..errors import UserError

        lacking = [f for f, on in (("multi-head latent attention (mla)", cfg.attention == "mla"),
                                   ("ALiBi positions", cfg.position == "alibi"),
                                   ("interleaved RoPE", cfg.rope_pairing != "half")) if on]
        if lacking:
            raise UserError(f"the NumPy engine does not implement {lacking[0]}; use the torch "
                            "engine (--engine torch) for this model.")
        self.cfg = cfg
        self.params = params if params is not None else init_params(cfg, seed, dtype)
        self.lora: dict[str, tuple] = {}  # weight name -> (A, B, scale); see lora.py
        self.frozen: frozenset[str] = frozenset()  # names that get no gradient
        self._cache = None
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
            self._rope_tables[key] = rope_cos_sin(pos, self.cfg.head_dim, self.cfg.rope_theta,
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
        if pos0 + T > cfg.context_length:
            from ..errors import UserError

            raise UserError(f"the sequence ({pos0 + T} tokens) is longer than the model's "
                            f"context_length ({cfg.context_length}); shorten the prompt or "
                            "--max-tokens.")
        if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
            from ..errors import UserError

            bad = int(ids.max() if ids.max() >= cfg.vocab_size else ids.min())
            raise UserError(f"token id {bad} is outside the vocabulary (0..{cfg.vocab_size - 1}).")
        lora = self._lora_view()
        norm_f, _ = NORMS[cfg.norm]
        x, _ = embedding_forward(ids, p["wte"])
        if cfg.position == "learned":
            x = x + p["wpe"][pos0:pos0 + T]
        elif cfg.position == "sinusoidal":
            x = x + sinusoidal_table(pos0 + T, cfg.d_model, dtype=x.dtype)[pos0:]
        x, emb_mask = dropout_forward(x, cfg.dropout, rng)
        rope = self._rope(pos0, T)
        caches = []
        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            h, cn1 = norm_f(x, p[pre + "norm1.weight"], p.get(pre + "norm1.bias"), cfg.norm_eps)
            a, ca = attention_forward(p, pre + "attn.", h, cfg, rope, lora, kv_cache, i, pos0, rng)
            a, da = dropout_forward(a, cfg.dropout, rng)
            x = x + a
            h, cn2 = norm_f(x, p[pre + "norm2.weight"], p.get(pre + "norm2.bias"), cfg.norm_eps)
            f, cf = ffn_forward(p, pre + "ffn.", h, cfg.activation, lora)
            f, df = dropout_forward(f, cfg.dropout, rng)
            x = x + f
            caches.append((cn1, ca, da, cn2, cf, df))
        h, cnf = norm_f(x, p["norm_f.weight"], p.get("norm_f.bias"), cfg.norm_eps)
        W = self.head_weight()
        logits = h @ W.T  # (B, T, V)
        if kv_cache is not None:
            kv_cache.pos += T
        loss, closs = (None, None)
        if targets is not None:
            loss, closs = cross_entropy_forward(logits, np.asarray(targets))
        self._cache = (ids, emb_mask, caches, cnf, h, closs) if keep else None
        return logits, loss

    # ------------------------------------------------------------------------ backward
    def backward(self, scale: float = 1.0) -> dict[str, np.ndarray]:
        """Gradients of (scale * loss) of the last forward(..., keep=True) call."""
        if self._cache is None or self._cache[-1] is None:
            raise RuntimeError("backward() needs a forward(ids, targets, keep=True) first")
        cfg, p, frozen = self.cfg, self.params, self.frozen
        ids, emb_mask, caches, cnf, h, closs = self._cache
        _, norm_b = NORMS[cfg.norm]
        grads: dict[str, np.ndarray] = {}

        def put_norm(name, dw, db):
            grads[name + ".weight"] = dw
            if db is not None and name + ".bias" in p:
                grads[name + ".bias"] = db

        dlogits = cross_entropy_backward(closs, scale)  # (B, T, V)
        V, d = self.head_weight().shape
        dW_head = dlogits.reshape(-1, V).T @ h.reshape(-1, d)
        dx = dlogits @ self.head_weight()
        dx, dw, db = norm_b(dx, cnf)
        put_norm("norm_f", dw, db)
        for i in reversed(range(cfg.n_layer)):
            pre = f"h.{i}."
            cn1, ca, da, cn2, cf, df = caches[i]
            dh = ffn_backward(dropout_backward(dx, df), cf, grads, frozen)
            dh, dw, db = norm_b(dh, cn2)
            put_norm(pre + "norm2", dw, db)
            dx = dx + dh
            dh = attention_backward(dropout_backward(dx, da), ca, grads, cfg, frozen)
            dh, dw, db = norm_b(dh, cn1)
            put_norm(pre + "norm1", dw, db)
            dx = dx + dh
        dx = dropout_backward(dx, emb_mask)
        if cfg.position == "learned":
            T = ids.shape[1]
            dwpe = np.zeros_like(p["wpe"])
            dwpe[:T] = dx.sum(0)
            grads["wpe"] = dwpe
        dwte = embedding_backward(dx, ids, cfg.vocab_size)
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
