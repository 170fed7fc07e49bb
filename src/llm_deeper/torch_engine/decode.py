"""The decode step, written for speed: one new token per sequence through a preallocated KV cache.

Why a second way to run the same model. `model.forward` is the reference: one layer loop for
training, prefill, cached generation and serving, steered by a step context. Decoding one token
is a different regime. Its ~540 MB of float32 weights (SmolLM2-135M) are each read once for a
few thousand multiply-adds, so a step is bound by memory bandwidth (~19 ms here at ~29 GB/s)
plus the cost of launching each operation (a few microseconds of Python and dispatch, times
~900 operations: another ~10 ms). This step keeps the same math and removes operations:

* the weights are gathered once into a per-layer tuple (no dictionary lookups or name
  building per token), q|k|v and gate|up in one product each (TorchGPT.fuse_for_inference);
* each residual add is folded into its product: `x = addmm(x, h, W^T)` is x + h W^T in one call;
* RoPE rotates the queries and keys of all heads in one pass: they sit side by side in the
  q|k|v output, and rotating pair (a, b) by angle t is (a, b) * cos t + (-b, a) * sin t, with
  the sign folded into a precomputed sin table;
* the new key and value are written in place into the cache, and attention reads exactly the
  filled prefix: the G query heads of a KV group are G "query positions" of one fused
  scaled_dot_product_attention call against the group's S keys (no mask: all are visible);
* the LM head is read column-major for a single row (faster on CPU, see fuse_for_inference;
  row-major for batches);
* with `--quant int8` the five products of a layer and the head are INT8 ones
  (quantization/torch_int8.py: a quarter of the bytes to read), through the same calls.

Logits equal model.forward's to ~1e-5 (float32 sums in another order) and greedy tokens are
identical (tests/test_decode_step.py). Supported: GQA/MHA/MQA with RoPE, learned or no positions,
RMSNorm or LayerNorm, every activation, with or without biases; anything else (MLA, ALiBi,
sinusoidal positions, adapters) takes model.forward, which `supports` tells.

What is left is the products themselves: `llm-deeper bench decode` reports how close they come
to the machine's memory bandwidth. A compiled step (torch.compile, as gpt-fast does on GPUs) was
measured slower than this one on this CPU (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import KVCache
from .ffn import matmul
from .positions import rope_rotation, rope_table, rotate


def transposed(w):
    """W^T for addmm, as a view; a quantized weight (quantization/torch_int8.py) as it is."""
    return w.t() if torch.is_tensor(w) else w


def add_product(x, h, w_t):
    """x + h W^T in one call (addmm), or through a quantized weight's own kernel."""
    return torch.addmm(x, h, w_t) if torch.is_tensor(w_t) else x + w_t.linear(h)


class DecodeStep:
    """`step(tokens, cache) -> logits`: tokens (B,) continue every sequence of `cache` (a
    KVCache, all B sequences at the same position cache.pos, which advances by one)."""

    def __init__(self, model):
        cfg = model.cfg
        if not self.supports(cfg):
            raise ValueError("DecodeStep runs GQA/MHA/MQA with rope, learned or no positions; "
                             "use model.forward for this config.")
        if model.training:
            raise ValueError("DecodeStep is for inference: call model.eval() first.")
        if model._fused is None:
            model.fuse_for_inference()
        p = model.param_dict()

        def joined(names):  # the fused matrix, or the parts concatenated (configs with biases)
            return p[names[0]] if len(names) == 1 else torch.cat([p[n] for n in names])
        self.cfg = cfg
        H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.split = [(H + KV) * hd, KV * hd]  # q|k rotate together; v does not
        self.layers = []
        for i in range(cfg.n_layer):
            pre = f"h.{i}."
            ups = ("1", "3") if cfg.activation == "swiglu" else ("1",)
            wqkv = p.get(pre + "attn.wqkv")
            if wqkv is None:
                wqkv = joined([pre + f"attn.w{n}" for n in "qkv"])
            w13 = p.get(pre + "ffn.w13")
            if w13 is None:
                w13 = joined([pre + f"ffn.w{n}" for n in ups])
            bqkv = joined([pre + f"attn.b{n}" for n in "qkv"]) if cfg.bias else None
            b13 = joined([pre + f"ffn.b{n}" for n in ups]) if cfg.bias else None
            self.layers.append((
                (p[pre + "norm1.weight"], p.get(pre + "norm1.bias")), wqkv,
                bqkv, transposed(p[pre + "attn.wo"]), p.get(pre + "attn.bo"),
                (p[pre + "norm2.weight"], p.get(pre + "norm2.bias")), w13, b13,
                transposed(p[pre + "ffn.w2"]), p.get(pre + "ffn.b2")))
        self.norm_f = (p["norm_f.weight"], p.get("norm_f.bias"))
        self.wte, self.wpe = p["wte"], p.get("wpe")
        self.head = p.get("lm_head.quant")  # an INT8 copy (--quant int8), else the float one
        if self.head is None:
            self.head = p["wte"] if cfg.tie_embeddings else p["lm_head"]
        self.head1 = self.head  # for one row: the column-major copy when float (faster here)
        if torch.is_tensor(self.head):
            self.head1 = p.get("lm_head.decode", self.head)
        self.act = {"swiglu": None, "gelu": lambda h: F.gelu(h, approximate="tanh"),
                    "relu": F.relu}[cfg.activation]
        self.rope = None
        if cfg.position == "rope":
            cos, sin = rope_table(cfg, self.wte.device, self.wte.dtype)
            self.rope = rope_rotation(cos, sin, cfg.rope_pairing)  # (context, head_dim) each

    @staticmethod
    def supports(cfg) -> bool:
        return cfg.attention != "mla" and cfg.position in ("rope", "learned", "none")

    def _norm(self, x, wb):
        if self.cfg.norm == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), wb[0], wb[1], self.cfg.norm_eps)
        return F.rms_norm(x, (x.shape[-1],), wb[0], self.cfg.norm_eps)  # one fused call

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, cache: KVCache) -> torch.Tensor:
        pos = cache.pos
        if pos >= cache.max_len:
            raise ValueError(f"the KV cache holds {cache.max_len} positions; all are filled.")

        def attend(i, q, k, v):  # this layer's new key/value into the cache, then attention
            kc, vc = cache.k[i], cache.v[i]  # (B, KV, max_len, hd)
            kc[:, :, pos] = k
            vc[:, :, pos] = v
            # the G queries of a group against its S keys: softmax(q K^T / sqrt(hd)) V in one
            # fused call (measured 14 us against 25 for the three products written out)
            return F.scaled_dot_product_attention(q, kc[:, :, :pos + 1], vc[:, :, :pos + 1])

        logits = self.rows(tokens, pos, attend)
        cache.pos = pos + 1
        return logits

    def rows(self, tokens: torch.Tensor, positions, attend) -> torch.Tensor:
        """One new token per row: tokens (B,) at `positions` (an int for every row, or a (B,)
        tensor); `attend(layer, q (B, KV, G, hd), k (B, KV, hd), v (B, KV, hd)) -> (B, KV, G,
        hd)` stores the new key and value wherever the cache keeps them and attends. The
        serving engine's decode steps come here with its paged cache (paged.py)."""
        cfg = self.cfg
        H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        B, G = tokens.shape[0], H // KV
        x = self.wte[tokens]  # (B, d_model)
        if self.wpe is not None:
            x = x + self.wpe[positions]
        if self.rope is not None:
            cos, sin = self.rope[0][positions], self.rope[1][positions]  # (hd,) or (B, hd)
            if cos.dim() == 2:
                cos, sin = cos[:, None], sin[:, None]  # the same angle for every head of a row
        act = self.act
        for i, (n1, wqkv, bqkv, wo_t, bo, n2, w13, b13, w2_t, b2) in enumerate(self.layers):
            qkv = matmul(self._norm(x, n1), wqkv, bqkv)  # (B, (H + 2 KV) hd)
            qk, v = qkv.split(self.split, -1)
            qk = qk.reshape(B, H + KV, hd)
            if self.rope is not None:
                qk = rotate(qk, cos, sin, cfg.rope_pairing)
            o = attend(i, qk[:, :H].reshape(B, KV, G, hd), qk[:, H:], v.view(B, KV, hd))
            x = add_product(x, o.reshape(B, H * hd), wo_t)  # x + o Wo^T
            if bo is not None:
                x = x + bo
            h = matmul(self._norm(x, n2), w13, b13)
            if act is None:
                g, u = h.chunk(2, -1)
                h = F.silu(g) * u
            else:
                h = act(h)
            x = add_product(x, h, w2_t)  # x + h W2^T
            if b2 is not None:
                x = x + b2
        head = self.head1 if B == 1 else self.head
        return matmul(self._norm(x, self.norm_f), head)  # (B, vocab)
