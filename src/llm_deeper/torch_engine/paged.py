"""A paged KV cache and a packed forward pass: one model step for many requests at once.

Pages. A contiguous cache per request (attention.KVCache) must reserve room for the longest
answer the request might give, and most of that room stays empty. PagedAttention (Kwon et al.
2023, the idea behind vLLM) cuts the cache into blocks of `block_size` token slots shared by all
requests. A request holds a list of blocks, its *block table*; token t of the request lives in
block `table[t // block_size]` at offset `t % block_size`. A request takes a new block only when
its last one is full, so at most one partly empty block per request is wasted, and a finished
request gives its blocks back at once. Which request holds which block is the scheduler's
business (serve/native.py); this file only reads and writes slots.

Packing. In one step the scheduler mixes requests that are prefilling (their whole prompt is
new) and requests that are decoding (one new token each). Their new tokens are laid end to end,
(N, d_model), and every matrix product (the q/k/v/o projections, the MLP) runs once over all N
rows: the weights are read from memory once per step instead of once per request, which is why
batching multiplies decode throughput while a single decode is bound by memory bandwidth. Only
attention is per request: each token sees the keys of its own request, found through its block
table; decoding requests are done together (their keys gathered into one padded batch, padding
masked out), prefilling ones one at a time with the fused causal kernel. The model's own forward
pass (model.py) runs the step: `PagedContext` is the step context that says where each row sits,
where its keys go and which keys it sees, so the layer loop is the same as for training.

Adapters. Requests for different LoRA adapters share a step: every projection first runs the
base weight over all rows, then each adapter adds scale * B (A x) to the rows of its own
requests (the gather-and-add of S-LoRA/Punica, written plainly). One base model in memory
serves them all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from .attention import causal_mask
from .context import StepContext
from .ffn import linear
from .model import forward


class PagedKVCache:
    """Keys and values of every layer in `num_blocks` blocks of `block_size` slots:
    k, v: (n_layer, num_blocks, block_size, n_kv_head, head_dim)."""

    def __init__(self, cfg, num_blocks: int, block_size: int = 16, dtype=torch.float32,
                 device="cpu"):
        check_supported(cfg)
        shape = (cfg.n_layer, num_blocks, block_size, cfg.n_kv_head, cfg.head_dim)
        self.k, self.v = lazy_zeros(shape, dtype, device), lazy_zeros(shape, dtype, device)
        self.num_blocks, self.block_size = num_blocks, block_size

    @staticmethod
    def bytes_per_block(cfg, block_size: int, dtype=torch.float32) -> int:
        item = torch.tensor([], dtype=dtype).element_size()
        return 2 * cfg.n_layer * block_size * cfg.n_kv_head * cfg.head_dim * item


def lazy_zeros(shape, dtype, device) -> torch.Tensor:
    """Zeros that take memory only where they are written. `torch.zeros` writes every byte (a
    1 GB cache is 1 GB resident at once); NumPy's `zeros` is calloc, whose large blocks are fresh
    pages the kernel maps, already zero, when first touched. Elsewhere (GPUs, bf16): zeros."""
    import numpy as np

    np_dtype = {torch.float32: np.float32, torch.float64: np.float64,
                torch.float16: np.float16}.get(dtype)
    if torch.device(device).type != "cpu" or np_dtype is None:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.from_numpy(np.zeros(shape, dtype=np_dtype))


def check_supported(cfg) -> None:
    if cfg.attention == "mla":
        raise UserError("the native serving engine pages K/V caches; MLA's latent cache is not "
                        "paged here: use --engine hf.")
    if cfg.position not in ("rope", "learned", "none"):
        raise UserError(f"the native serving engine supports rope, learned or no positions, not "
                        f"{cfg.position}.")


@dataclass
class SeqSlice:
    """One request's part of a step: `new_ids` start at position `start` (the positions before
    it are already in the cache), the request holds the blocks of `block_table` and runs with
    the LoRA adapter of that name (None: the base model)."""
    new_ids: list[int]
    start: int
    block_table: list[int]
    adapter: str | None = None


def slots_of(block_table: list[int], positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat slot index (block * block_size + offset) of each position."""
    table = torch.tensor(block_table, dtype=torch.long)
    return table[positions // block_size] * block_size + positions % block_size


class PagedContext(StepContext):
    """The step context of one packed step: the new tokens of every request laid end to end as
    one sequence of N rows, (1, N, d_model). Index tensors are built once here and read by
    every layer."""

    def __init__(self, seqs: list[SeqSlice], cache: PagedKVCache, device,
                 adapters: dict[str, dict] | None = None):
        super().__init__()
        self.cache, bs = cache, cache.block_size
        ids, pos, slots, last = [], [], [], []
        rows_of: dict[str, list[int]] = {}  # adapter -> its rows
        self.prefill: list[tuple[int, int, int]] = []  # (row_from, row_to, start)
        self.prefill_blocks: list[torch.Tensor] = []
        decode_rows, decode_tables, decode_lens = [], [], []
        row = 0
        for s in seqs:
            T = len(s.new_ids)
            if T == 0:
                raise ValueError("a sequence in a step needs at least one new token")
            p = torch.arange(s.start, s.start + T)
            ids.extend(s.new_ids)
            if s.adapter is not None:
                rows_of.setdefault(s.adapter, []).extend(range(row, row + T))
            pos.append(p)
            slots.append(slots_of(s.block_table, p, bs))
            if T == 1:
                decode_rows.append(row)
                decode_tables.append(s.block_table[:(s.start // bs) + 1])
                decode_lens.append(s.start + 1)
            else:
                n_blocks = math.ceil((s.start + T) / bs)
                self.prefill.append((row, row + T, s.start))
                self.prefill_blocks.append(torch.tensor(s.block_table[:n_blocks], device=device))
            row += T
            last.append(row - 1)
        # each adapter's rows: every projection adds scale * B (A x) to them (S-LoRA's gather-add)
        self.groups = [(torch.tensor(r, device=device), adapters[a]) for a, r in rows_of.items()]
        self.ids = torch.tensor(ids, device=device)[None]  # (1, N)
        self.pos = torch.cat(pos).to(device)
        self.slots = torch.cat(slots).to(device)
        self.last = torch.tensor(last, device=device)  # rows whose logits are wanted
        self.decode_rows = torch.tensor(decode_rows, dtype=torch.long, device=device)
        if decode_rows:  # block tables padded to the longest; padding masked out
            width = max(len(t) for t in decode_tables)
            tables = torch.zeros(len(decode_tables), width, dtype=torch.long)
            for i, t in enumerate(decode_tables):
                tables[i, :len(t)] = torch.tensor(t)
            self.decode_tables = tables.to(device)
            key_pos = torch.arange(width * bs)
            lens = torch.tensor(decode_lens)
            self.decode_mask = torch.where(key_pos[None, :] < lens[:, None], 0.0,
                                           float("-inf")).to(device)[:, None, None, :]

    @property
    def fused(self) -> bool:
        return not self.groups

    def positions(self, T: int):
        return self.pos  # each row's own position

    def begin(self, cfg, ids) -> None:
        pass  # the engine admitted every request within its context

    def end(self, T: int) -> None:
        pass  # the engine counts what each request has cached

    def weight(self, p, name):
        return p[name]  # paged steps run no MLA (check_supported), the only caller

    def linear(self, x, p, name):
        """x W^T (+ bias) for every row, then each adapter's scale * B A x on its own rows."""
        y = linear(x, p, name, {})
        for rows, lora in self.groups:
            if name in lora:
                A, B, s = lora[name]
                y[0].index_add_(0, rows, F.linear(F.linear(x[0, rows], A), B), alpha=s)
        return y

    def attend(self, cfg, layer: int, q, k, v):
        """q: (1, H, N, hd), k, v: (1, KV, N, hd): written to their slots, then each request's
        queries attend to its own keys through its block table."""
        q, k, v = (t[0].transpose(0, 1) for t in (q, k, v))  # (N, heads, hd)
        KV, hd = k.shape[1], k.shape[2]
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        kc.view(-1, KV, hd).index_copy_(0, self.slots, k.to(kc.dtype))
        vc.view(-1, KV, hd).index_copy_(0, self.slots, v.to(vc.dtype))
        if not self.prefill:  # decodes only (the steady state): no rows to pick out
            return self._decode(q, kc, vc).transpose(0, 1)[None]
        out = torch.empty_like(q)
        if self.decode_rows.numel():
            out[self.decode_rows] = self._decode(q[self.decode_rows], kc, vc)
        for (a, b, start), blocks in zip(self.prefill, self.prefill_blocks):
            out[a:b] = _prefill_attention(q[a:b], kc, vc, blocks, start)
        return out.transpose(0, 1)[None]  # (1, H, N, hd)

    def _decode(self, q, kc, vc):
        """q: (Bd, H, hd) one query per decoding request. Returns (Bd, H, hd)."""
        Bd, H, hd = q.shape
        k = kc[self.decode_tables].flatten(1, 2)  # (Bd, S, KV, hd): its blocks, end to end
        v = vc[self.decode_tables].flatten(1, 2)
        KV = k.shape[2]
        qg = q.view(Bd, KV, H // KV, hd)  # a group's G query heads as G query rows
        out = F.scaled_dot_product_attention(qg, k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=self.decode_mask.to(q.dtype))
        return out.reshape(Bd, H, hd)  # (padding keys masked by -inf)

    def decode_attend(self, layer: int, q, k, v):
        """DecodeStep.rows' attention for a step of decodes only: q (N, KV, G, hd), k, v (N,
        KV, hd), one row per sequence -> (N, KV, G, hd)."""
        kc, vc = self.cache.k[layer], self.cache.v[layer]
        KV, hd = k.shape[1], k.shape[2]
        kc.view(-1, KV, hd).index_copy_(0, self.slots, k.to(kc.dtype))
        vc.view(-1, KV, hd).index_copy_(0, self.slots, v.to(vc.dtype))
        keys = kc[self.decode_tables].flatten(1, 2).transpose(1, 2)  # (N, KV, S, hd)
        values = vc[self.decode_tables].flatten(1, 2).transpose(1, 2)
        return F.scaled_dot_product_attention(q, keys, values,
                                              attn_mask=self.decode_mask.to(q.dtype))

    def select(self, x):
        return x[:, self.last]  # only the rows whose next token is wanted


def _prefill_attention(q, kc, vc, blocks, start: int):
    """q: (T, H, hd) the new tokens of one request, at positions start.. start+T-1."""
    T, H, hd = q.shape
    S = start + T
    k = kc[blocks].flatten(0, 1)[:S].transpose(0, 1)[None]  # (1, KV, S, hd)
    v = vc[blocks].flatten(0, 1)[:S].transpose(0, 1)[None]
    qt = q.transpose(0, 1)[None]  # (1, H, T, hd)
    kw = {"enable_gqa": True} if k.shape[1] != H else {}
    if start == 0:
        out = F.scaled_dot_product_attention(qt, k, v, is_causal=True, **kw)
    else:
        out = F.scaled_dot_product_attention(qt, k, v, attn_mask=causal_mask(T, S, start,
                                                                             q.device), **kw)
    return out[0].transpose(0, 1)  # (T, H, hd)


@torch.inference_mode()
def packed_forward(model, seqs: list[SeqSlice], cache: PagedKVCache,
                   adapters: dict[str, dict] | None = None, decode_step=None) -> torch.Tensor:
    """Write the new tokens' keys and values into the cache and return the next-token logits of
    every sequence: (len(seqs), vocab). `adapters`: name -> {weight name: (A, B, scale)}.
    `decode_step` (a DecodeStep of the model): steps where every sequence decodes one token
    with the base model run through it (decode.py: the same logits, fewer operations)."""
    p = model.param_dict()
    ctx = PagedContext(seqs, cache, p["wte"].device, adapters)
    if decode_step is not None and not ctx.prefill and not ctx.groups:
        return decode_step.rows(ctx.ids[0], ctx.pos, ctx.decode_attend)
    return forward(p, model.cfg, ctx.ids, ctx=ctx)[0][0]
