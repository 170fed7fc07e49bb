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
masked out), prefilling ones one at a time with the fused causal kernel.

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
from .ffn import ffn, linear
from .model import output_head
from .norms import norm
from .positions import apply_rope, rope_table


class PagedKVCache:
    """Keys and values of every layer in `num_blocks` blocks of `block_size` slots:
    k, v: (n_layer, num_blocks, block_size, n_kv_head, head_dim)."""

    def __init__(self, cfg, num_blocks: int, block_size: int = 16, dtype=torch.float32,
                 device="cpu"):
        check_supported(cfg)
        shape = (cfg.n_layer, num_blocks, block_size, cfg.n_kv_head, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.num_blocks, self.block_size = num_blocks, block_size

    @staticmethod
    def bytes_per_block(cfg, block_size: int, dtype=torch.float32) -> int:
        item = torch.tensor([], dtype=dtype).element_size()
        return 2 * cfg.n_layer * block_size * cfg.n_kv_head * cfg.head_dim * item


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


def load_peft_lora(path, cfg, dtype=torch.float32, device="cpu") -> dict:
    """A PEFT LoRA adapter directory -> {our weight name: (A, B, alpha / r)}."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    from ..weights import hf_name

    path = Path(path)
    try:
        conf = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not a PEFT adapter directory (no adapter_config.json).") \
            from None
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False), ("modules_to_save", None)):
        if conf.get(key) not in (ok, None, [] if ok is None else ok):
            raise UserError(f"{path}: adapters with {key}={conf[key]} are not served by the "
                            "native engine (--engine hf serves them).")
    if conf.get("bias", "none") != "none":
        raise UserError(f"{path}: LoRA biases are not served by the native engine.")
    r, alpha = conf["r"], conf["lora_alpha"]
    scale = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
    ours = {}
    for i in range(cfg.n_layer):
        for n in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3"):
            ours[hf_name(f"h.{i}.{n}").removesuffix(".weight")] = f"h.{i}.{n}"
    tensors = load_file(str(path / "adapter_model.safetensors"))
    out: dict = {}
    for key, t in tensors.items():
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        name = ours.get(module)
        if name is None or kind not in ("A.weight", "B.weight"):
            raise UserError(f"{path}: the native engine cannot place '{key}'.")
        out.setdefault(name, {})[kind[0]] = t.to(device=device, dtype=dtype)
    return {n: (w["A"], w["B"], scale) for n, w in out.items()}


def slots_of(block_table: list[int], positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Flat slot index (block * block_size + offset) of each position."""
    table = torch.tensor(block_table, dtype=torch.long)
    return table[positions // block_size] * block_size + positions % block_size


class StepInputs:
    """Index tensors for one packed step, built once and used by every layer."""

    def __init__(self, seqs: list[SeqSlice], block_size: int, device):
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
            slots.append(slots_of(s.block_table, p, block_size))
            if T == 1:
                decode_rows.append(row)
                decode_tables.append(s.block_table[:(s.start // block_size) + 1])
                decode_lens.append(s.start + 1)
            else:
                n_blocks = math.ceil((s.start + T) / block_size)
                self.prefill.append((row, row + T, s.start))
                self.prefill_blocks.append(torch.tensor(s.block_table[:n_blocks], device=device))
            row += T
            last.append(row - 1)
        self.adapter_rows = {a: torch.tensor(r, device=device) for a, r in rows_of.items()}
        self.ids = torch.tensor(ids, device=device)
        self.positions = torch.cat(pos).to(device)
        self.slots = torch.cat(slots).to(device)
        self.last = torch.tensor(last, device=device)  # rows whose logits are wanted
        self.decode_rows = torch.tensor(decode_rows, dtype=torch.long, device=device)
        if decode_rows:  # block tables padded to the longest; padding masked out
            width = max(len(t) for t in decode_tables)
            tables = torch.zeros(len(decode_tables), width, dtype=torch.long)
            for i, t in enumerate(decode_tables):
                tables[i, :len(t)] = torch.tensor(t)
            self.decode_tables = tables.to(device)
            key_pos = torch.arange(width * block_size)
            lens = torch.tensor(decode_lens)
            self.decode_mask = torch.where(key_pos[None, :] < lens[:, None], 0.0,
                                           float("-inf")).to(device)[:, None, None, :]


def _decode_attention(q, kc, vc, inp: StepInputs, G: int):
    """q: (Bd, H, hd) one query per request; kc, vc: this layer's blocks. Returns (Bd, H, hd)."""
    Bd, H, hd = q.shape
    tables = inp.decode_tables
    k = kc[tables].flatten(1, 2)  # (Bd, S, KV, hd): the request's blocks, end to end
    v = vc[tables].flatten(1, 2)
    KV = k.shape[2]
    qg = q.view(Bd, KV, G, hd)
    att = qg @ k.permute(0, 2, 3, 1) / math.sqrt(hd)  # (Bd, KV, G, S)
    att = (att + inp.decode_mask.to(att.dtype)).softmax(-1)
    return (att @ v.transpose(1, 2)).view(Bd, H, hd)


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


def _lin(x, p, name, groups):
    """x W^T (+ bias), then each adapter's scale * B A x added to its own rows."""
    y = linear(x, p, name, {})
    for rows, lora in groups:
        if name in lora:
            A, B, s = lora[name]
            y.index_add_(0, rows, F.linear(F.linear(x[rows], A), B), alpha=s)
    return y


@torch.inference_mode()
def packed_forward(model, seqs: list[SeqSlice], cache: PagedKVCache,
                   adapters: dict[str, dict] | None = None) -> torch.Tensor:
    """Write the new tokens' keys and values into the cache and return the next-token logits of
    every sequence: (len(seqs), vocab). `adapters`: name -> load_peft_lora(...)."""
    cfg, p = model.cfg, model.param_dict()
    H, KV, hd = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    dev = p["wte"].device
    inp = StepInputs(seqs, cache.block_size, dev)
    groups = [(rows, adapters[a]) for a, rows in inp.adapter_rows.items()]
    x = p["wte"][inp.ids]  # (N, d)
    N = x.shape[0]
    if cfg.position == "learned":
        x = x + p["wpe"][inp.positions]
    rope = None
    if cfg.position == "rope":
        cos, sin = rope_table(cfg, dev, x.dtype)
        rope = cos[inp.positions][:, None], sin[inp.positions][:, None]  # (N, 1, hd/2)
    for i in range(cfg.n_layer):
        pre = f"h.{i}.attn."
        h = norm(cfg, x, p, f"h.{i}.norm1")
        if pre + "wqkv" in p and not groups:
            q, k, v = F.linear(h, p[pre + "wqkv"]).split([H * hd, KV * hd, KV * hd], dim=-1)
        else:
            q, k, v = (_lin(h, p, pre + n, groups) for n in ("wq", "wk", "wv"))
        q, k, v = q.view(N, H, hd), k.view(N, KV, hd), v.view(N, KV, hd)
        if rope is not None:
            q, k = apply_rope(q, *rope, cfg.rope_pairing), apply_rope(k, *rope, cfg.rope_pairing)
        kc, vc = cache.k[i], cache.v[i]
        kc.view(-1, KV, hd).index_copy_(0, inp.slots, k.to(kc.dtype))
        vc.view(-1, KV, hd).index_copy_(0, inp.slots, v.to(vc.dtype))
        out = torch.empty_like(q)
        if inp.decode_rows.numel():
            out[inp.decode_rows] = _decode_attention(q[inp.decode_rows], kc, vc, inp, H // KV)
        for (a, b, start), blocks in zip(inp.prefill, inp.prefill_blocks):
            out[a:b] = _prefill_attention(q[a:b], kc, vc, blocks, start)
        x = x + _lin(out.reshape(N, H * hd), p, pre + "wo", groups)
        lin = (lambda h, name: _lin(h, p, name, groups)) if groups else None  # else fused
        x = x + ffn(cfg, norm(cfg, x, p, f"h.{i}.norm2"), p, f"h.{i}.ffn.", {}, lin)
    h = norm(cfg, x[inp.last], p, "norm_f")  # only the rows whose next token is wanted
    return F.linear(h, output_head(p, cfg, h.shape[0]))
