"""INT8 in the PyTorch engine: a faster decoder on CPU (`--quant int8`).

Decoding one token reads every weight once for a couple of multiply-adds each, so on a CPU its
speed is set by how many bytes stream from memory. INT8 stores a weight in 1 byte instead of
float32's 4. The weights become per-output-channel INT8 codes (one absmax scale per row, the
`int8` format of integer.py); the products run in PyTorch's CPU integer matrix product
(`torch._int_mm`: int8 x int8 with int32 sums, VNNI instructions where the CPU has them), so the
activations are rounded to 8 bits as well, on the fly, one scale per token ("dynamic"):

    x_q = round(x / s_x),  s_x = max|x| / 127             per row of x (each token its own)
    y[t, o] = s_x[t] * s_w[o] * sum_i x_q[t, i] * w_q[o, i]     (W8A8)

Rounding activations costs more than rounding weights: a few input channels of a transformer
carry values 10-100x larger than the rest, and one scale per token is set by them, so the small
channels lose their bits. SmoothQuant (Xiao et al., 2023) moves that range from the activations
into the weights, which quantize per row and mind less: with s_j = max|X_j|^a / max|W_.j|^(1-a)
for each input channel j (measured on calibration text),

    x W^T = (x / s) (W diag(s))^T     exactly, then both factors are quantized.

Here x / s is one multiply before quantizing (a fused model would fold 1/s into the preceding
norm's weight). What smoothing leaves, LLM.int8() (Dettmers et al., 2022) removes: the 1 % of
input channels with the largest calibrated |x| skip the integer product and multiply in float32
beside it, y = int8 part + x[:, out] W[:, out]^T, so no token's scale is set by them. Measured on
SmolLM2-135M (4,096 tokens of the works, calibrated on the tool-calling chats): per-token INT8
activations (W8A8) cost +4.2 % perplexity, smoothed +1.5 %, smoothed with the float outlier
channels +0.5 %; weights alone +0.4 % (docs/quantization.md, with the speed).

`quantize_for_inference(model)` calibrates on a short text, then swaps the products decoding
uses (q|k|v, o, gate|up, down and the LM head) for `Int8Linear`s; every product of the engine
goes through `torch_engine.ffn.matmul`, which calls `w.linear(x, b)` for them. The embedding
lookup, the norms and attention itself stay float32; the float weights stay in the model
(`model.quant` says what runs), and moving the model (`.to()`) undoes the swap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError

QUANT_CHOICES = ("int8",)
ALPHA = 0.5  # SmoothQuant's migration strength: 0 = all range on the activations, 1 = weights
OUTLIERS = 0.01  # share of input channels (largest calibrated |x|) kept in float32


class Int8Linear:
    """y = x W^T (+ b) with W as per-channel INT8 codes (after smoothing by s) and x quantized
    per token when called; the `outliers` share of input channels with the largest calibrated
    |x| stays float32 (LLM.int8()'s decomposition), the rest goes through the integer kernel."""

    def __init__(self, w: torch.Tensor, act_absmax: torch.Tensor | None = None,
                 alpha: float = ALPHA, outliers: float = OUTLIERS):
        w = w.detach().float()
        self.inv_s, self.idx, self.w_out_t = None, None, None
        if act_absmax is not None:
            a = act_absmax.float().clamp_min(1e-5)
            s = a ** alpha / w.abs().amax(0).clamp_min(1e-5) ** (1 - alpha)
            inv_s = 1.0 / s
            w = w * s
            k = int(outliers * w.shape[1])
            if k:  # these channels skip the integer path: 1/s = 0 there, their product in float
                self.idx = torch.topk(a, k).indices.sort().values
                self.w_out_t = (w[:, self.idx] * inv_s[self.idx]).t().contiguous()  # (k, out)
                inv_s[self.idx] = 0.0
                w[:, self.idx] = 0.0
            self.inv_s = inv_s.contiguous()
        self.scale = (w.abs().amax(1) / 127).clamp_min(1e-12)  # (out,) float32
        codes = torch.round(w / self.scale[:, None]).to(torch.int8)  # (out, in)
        self.codes_t = codes.t()  # _int_mm takes (in, out); the transposed view reads rows
        self.shape = tuple(w.shape)

    @property
    def nbytes(self) -> int:
        """Codes, one float32 scale per row, the smoothing factors and the float columns."""
        extra = [t for t in (self.inv_s, self.w_out_t) if t is not None]
        return self.codes_t.numel() + 4 * (self.scale.numel() + sum(t.numel() for t in extra))

    def dequantized(self) -> torch.Tensor:
        """The float weight this stands for: diag(s_w) W_q diag(1 / s), outlier columns as kept."""
        w = self.codes_t.t().float() * self.scale[:, None]
        if self.inv_s is not None:
            w = w * self.inv_s
        if self.idx is not None:
            w[:, self.idx] = self.w_out_t.t()
        return w

    def linear(self, x: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if x2.dtype != torch.float32:
            x2 = x2.float()
        xs = x2 * self.inv_s if self.inv_s is not None else x2
        sx = torch.linalg.vector_norm(xs, float("inf"), dim=1, keepdim=True)  # max |x| per token
        sx = sx.clamp_min(1e-12) / 127
        xq = torch.round(xs / sx).to(torch.int8)
        y = torch._int_mm(xq, self.codes_t) * (sx * self.scale)  # int32 sums, then the scales
        if self.idx is not None:
            y = torch.addmm(y, x2.index_select(1, self.idx), self.w_out_t)
        y = y.reshape(*shape[:-1], self.shape[0]).to(x.dtype)
        return y if b is None else y + b


class _Recorder:
    """Stands in for a weight during calibration: the product in float32, and the largest
    |input| seen per input channel."""

    def __init__(self, w: torch.Tensor):
        self.w, self.absmax = w, None

    def linear(self, x, b=None):
        a = x.detach().reshape(-1, x.shape[-1]).abs().amax(0).float()
        self.absmax = a if self.absmax is None else torch.maximum(self.absmax, a)
        return F.linear(x, self.w, b)


def _targets(model) -> dict[str, torch.Tensor]:
    """The products a decode step runs, by their name in the fused parameter dictionary."""
    cfg, p = model.cfg, model.param_dict()
    out = {}
    for i in range(cfg.n_layer):
        for name in ("attn.wqkv", "attn.wo", "ffn.w13", "ffn.w2"):
            if f"h.{i}.{name}" in p:
                out[f"h.{i}.{name}"] = p[f"h.{i}.{name}"]
    out["lm_head.quant"] = p["wte"] if cfg.tie_embeddings else p["lm_head"]
    return out


@torch.inference_mode()
def calibrate(model, ids, window: int = 512) -> dict[str, torch.Tensor]:
    """Largest |input| per channel of every target product over `ids` (1-D token ids), run
    through the float model in windows of `window` tokens (at most the model's context)."""
    window = min(window, model.cfg.context_length)
    recorders = {n: _Recorder(w) for n, w in _targets(model).items()}
    saved = dict(model._fused)
    model._fused.update(recorders)
    model._pcache = None
    try:
        ids = torch.as_tensor(ids).reshape(-1)
        for start in range(0, len(ids), window):
            model(ids[start:start + window][None])
    finally:
        model._fused.clear()
        model._fused.update(saved)
        model._pcache = None
    return {n: r.absmax for n, r in recorders.items()}


def calibration_ids(tokenizer, chat_template: str | None = None, n_tokens: int = 1024):
    """Calibration tokens that need no download: conversations of the built-in tool-calling
    task (questions, tool calls, results, answers; the long tool list only once), in the
    model's chat template when it has one. Not the Shakespeare that perplexity is measured on."""
    from ..chat.template import render_chat
    from ..data.toolcalls import tool_calling_dataset

    ids: list[int] = []
    for i, row in enumerate(tool_calling_dataset()["train"]):
        messages = [m for m in row["messages"] if i == 0 or m["role"] != "system"]
        text = (render_chat(chat_template, messages, add_generation_prompt=False)
                if chat_template else "\n".join(f"{m['role']}: {m['content']}" for m in messages))
        ids.extend(tokenizer.encode(text))
        if len(ids) >= n_tokens:
            break
    return ids[:n_tokens]


def quantize_for_inference(model, fmt: str = "int8", calibration=None, alpha: float = ALPHA):
    """Swap `model`'s decode products for INT8 ones (in place; returns the model). `calibration`:
    token ids to measure activation ranges on (None: no smoothing)."""
    if fmt not in QUANT_CHOICES:
        raise UserError(f"--quant takes {', '.join(QUANT_CHOICES)}, not '{fmt}'.")
    cfg = model.cfg
    if cfg.attention == "mla":
        raise UserError("--quant int8 runs MHA/GQA/MQA models; MLA's latent projections are not "
                        "quantized here.")
    if next(model.parameters()).device.type != "cpu":
        raise UserError("--quant int8 uses PyTorch's CPU integer kernels: run it on the CPU.")
    model.eval().fuse_for_inference()
    absmax = calibrate(model, calibration) if calibration is not None else {}
    for name, w in _targets(model).items():
        model._fused[name] = Int8Linear(w, absmax.get(name), alpha)
    model._pcache = None
    model.quant = fmt
    return model


def weight_bytes(model) -> int:
    """Bytes of weights one decode step reads: INT8 products at their size, the embedding row
    and norms as float32 (a quantized model reads no float projection)."""
    p = model.param_dict()
    quantized = [w for w in p.values() if isinstance(w, Int8Linear)]
    if not quantized:
        return sum(w.numel() * w.element_size() for w in model.parameters())
    norms = sum(w.numel() * 4 for n, w in p.items() if isinstance(w, torch.Tensor)
                and ("norm" in n or n.rsplit(".", 1)[-1].startswith("b")))
    return norms + sum(w.nbytes for w in quantized)
