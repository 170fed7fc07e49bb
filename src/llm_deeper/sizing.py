"""Sizing a model before running it: parameters, memory, KV cache, training FLOPs and time.

Arithmetic on a model's shape (`Arch`, from our `ModelConfig` or an HF `config.json`). Counts are
exact (tests/test_calc.py: transformers' `model.parameters()`); memory and time are estimates
whose assumptions sit beside the line that makes them. GB = 10^9 bytes.

Parameters. A block is attention (wq, wk, wv, wo; or MLA's) + an MLP (w1, w2, + w3 for SwiGLU)
+ two norms; around the blocks, the embedding V x d, a final norm, an untied head V x d. For a
GPT-2 block (MHA, an MLP 4d wide) attention is 4 d^2 and the MLP 8 d^2, hence the rule of thumb
    N ~ 12 L d^2 + V d (tied) or 2 V d (untied).
GQA shrinks wk, wv to n_kv_head/n_head of d^2 each; SwiGLU's MLP is 3 d_ff d (8 d^2 at d_ff =
8/3 d, 10.5 d^2 for Llama-3's 3.5 d). MoE layers hold every expert; a token runs top_k of them.

Memory = numbers x bytes per number: weights N bits/8 (fp32 32, bf16 16, int8 8, int4 4; block
formats add a scale per block: llama.cpp's Q8_0/Q4_0 store 32 weights + an fp16 scale, 8.5 and
4.5 bits; NF4 with double quantization 4.127 bits, Dettmers et al. 2023, sec. 3), the KV cache
(`kv_numbers_per_token`), for training gradients, AdamW's moments, activations (`training_memory`).

FLOPs (training): 6 per weight a token uses, 2 forward + 4 backward (Kaplan et al. 2020, 2.1),
plus attention's QK^T and AV, which grow with the context T, not with N:
    C = 6 N D + 6 L T H (d_qk + d_v) D        (= 6 N D + 12 L T d D for MHA: PaLM, appendix B)
N: not the embedding lookup, but the head even when tied; MoE: only the active experts.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

from .errors import UserError

GB = 1e9
BITS = {"fp32": 32, "fp16": 16, "bf16": 16, "int8": 8, "q8_0": 8.5, "int4": 4, "q4_0": 4.5,
        "nf4": 4.127}
ALL_LINEAR = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
# multi-head latent attention's sizes (q_lora_rank 0: queries straight from x)
MLA = namedtuple("MLA", "kv_lora_rank q_lora_rank qk_rope_head_dim qk_nope_head_dim v_head_dim")
# mixture of experts: n_experts routed + n_shared always-on experts of d_ff d_expert, top_k routed
# per token; the first `first_dense` layers keep a dense MLP, then every `every`-th layer is MoE
MoE = namedtuple("MoE", "n_experts n_shared d_expert top_k first_dense every")


@dataclass(frozen=True)
class Arch:
    """The numbers sizing needs, whatever the model came from."""

    name: str
    vocab: int
    d_model: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    d_ff: int
    context: int
    tied: bool = True
    norm: str = "rmsnorm"  # or layernorm
    activation: str = "swiglu"  # or gelu, relu
    biases: tuple = ()  # what has a bias: "norm" (LayerNorm's), "wq", ..., "w1", "w2", "w3"
    qk_norm: bool = False  # Qwen3: an RMSNorm over each query and key head
    learned_pos: bool = False  # GPT-2's wpe (context x d)
    window: int = 0  # sliding-window attention: the cache keeps the last `window` tokens
    mla: MLA | None = None
    moe: MoE | None = None

    @property
    def attention(self) -> str:
        return "mla" if self.mla else {1: "mqa", self.n_head: "mha"}.get(self.n_kv_head, "gqa")

    def is_moe(self, layer: int) -> bool:
        m = self.moe
        return bool(m) and layer >= m.first_dense and (layer - m.first_dense) % m.every == 0


def from_config(cfg, name: str = "") -> Arch:
    """Our ModelConfig (config.py; shapes in params.py)."""
    mla = (MLA(cfg.kv_lora_rank, cfg.q_lora_rank, cfg.qk_rope_head_dim, cfg.qk_nope_head_dim,
               cfg.v_head_dim) if cfg.attention == "mla" else None)
    return Arch(name, cfg.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_kv_head,
                cfg.head_dim, cfg.d_ff, cfg.context_length, cfg.tie_embeddings, cfg.norm,
                cfg.activation, ("norm",) * (cfg.norm == "layernorm") + ALL_LINEAR[4 * bool(mla):]
                if cfg.bias else (),
                learned_pos=cfg.position == "learned", mla=mla)


HF_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gpt2", "deepseek_v2", "deepseek_v3")


def from_hf(d: dict, name: str = "") -> Arch:
    """An HF config.json, read as transformers' modeling code builds the model. Qwen3's head_dim
    (128) need not be hidden_size / heads, which ModelConfig cannot say: hence Arch."""
    t = d.get("model_type")
    if t not in HF_TYPES:
        raise UserError(f"config.json has model_type '{t}', which calc cannot size; it knows "
                        f"{', '.join(HF_TYPES)}.")
    name = name or d.get("_name_or_path") or t
    tied = bool(d.get("tie_word_embeddings", t == "gpt2"))  # transformers' defaults
    try:
        if t == "gpt2":
            dm, H = d.get("n_embd", 768), d.get("n_head", 12)
            return Arch(name, d.get("vocab_size", 50257), dm, d.get("n_layer", 12), H, H, dm // H,
                        d.get("n_inner") or 4 * dm, d.get("n_positions", 1024), tied, "layernorm",
                        "gelu", ("norm", *ALL_LINEAR), learned_pos=True)
        dm, H = d["hidden_size"], d["num_attention_heads"]
        attn = ("wq_a", "wkv_a", "wo") if t.startswith("deepseek") else ALL_LINEAR[:4]
        bias = (attn * bool(d.get("attention_bias")) + ("wq", "wk", "wv") * (t == "qwen2")
                + ALL_LINEAR[4:] * bool(d.get("mlp_bias")))
        mla = moe = None
        if t.startswith("deepseek"):
            mla = MLA(d["kv_lora_rank"], d.get("q_lora_rank") or 0, d["qk_rope_head_dim"],
                      d["qk_nope_head_dim"], d["v_head_dim"])
            if d.get("n_routed_experts"):
                moe = MoE(d["n_routed_experts"], d.get("n_shared_experts") or 0,
                          d["moe_intermediate_size"], d["num_experts_per_tok"],
                          d.get("first_k_dense_replace", 0), d.get("moe_layer_freq") or 1)
        return Arch(name, d["vocab_size"], dm, d["num_hidden_layers"], H,
                    d.get("num_key_value_heads") or H,
                    d.get("head_dim") or (128 if t == "qwen3" else dm // H),
                    d["intermediate_size"], d.get("max_position_embeddings", 4096), tied,
                    biases=bias, qk_norm=t == "qwen3",
                    window=(d.get("sliding_window") or 0) if t == "mistral" else 0, mla=mla,
                    moe=moe)
    except KeyError as exc:
        raise UserError(f"config.json lacks {exc}, which a {t} config needs.") from None


# --- parameters ------------------------------------------------------------------------------
def block_matrices(a: Arch, layer: int) -> dict[str, list[tuple[str, int, int, int]]]:
    """{"attention": [...], "mlp": [...]} of block `layer`: (name, out, in, copies) per weight
    matrix; copies > 1 for routed experts (one matrix of that shape per expert)."""
    d, H = a.d_model, a.n_head
    if a.mla:
        m = a.mla
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = ([("wq_a", m.q_lora_rank, d, 1), ("wq_b", H * qk, m.q_lora_rank, 1)]
             if m.q_lora_rank else [("wq", H * qk, d, 1)])
        attn = q + [("wkv_a", m.kv_lora_rank + m.qk_rope_head_dim, d, 1),
                    ("wkv_b", H * (m.qk_nope_head_dim + m.v_head_dim), m.kv_lora_rank, 1),
                    ("wo", d, H * m.v_head_dim, 1)]
    else:
        q, kv = H * a.head_dim, a.n_kv_head * a.head_dim
        attn = [("wq", q, d, 1), ("wk", kv, d, 1), ("wv", kv, d, 1), ("wo", d, q, 1)]

    def mlp(f, copies=1, pre=""):
        names = ("w1", "w3", "w2") if a.activation == "swiglu" else ("w1", "w2")
        return [(pre + n, d, f, copies) if n == "w2" else (pre + n, f, d, copies) for n in names]

    if not a.is_moe(layer):
        return {"attention": attn, "mlp": mlp(a.d_ff)}
    e = a.moe
    shared = mlp(e.n_shared * e.d_expert, 1, "shared.") if e.n_shared else []
    return {"attention": attn,
            "mlp": [("router", e.n_experts, d, 1), *mlp(e.d_expert, e.n_experts, "experts."),
                    *shared]}


def params(a: Arch, active: bool = False) -> dict[str, int]:
    """Exact parameter count by part, and "total". active=True: what one token uses (an MoE
    layer's top_k routed experts instead of all of them)."""
    d = a.d_model
    one_norm = d * (2 if "norm" in a.biases else 1)  # gain (+ bias)
    out = {"embeddings": a.vocab * d + (a.context * d if a.learned_pos else 0), "attention": 0,
           "mlp": 0, "norms": one_norm, "head": 0 if a.tied else a.vocab * d}
    for i in range(a.n_layer):
        for part, mats in block_matrices(a, i).items():
            for name, n_out, n_in, copies in mats:
                bias = copies == 1 and name.rsplit(".", 1)[-1] in a.biases
                n = a.moe.top_k if active and copies > 1 else copies
                out[part] += n * n_out * (n_in + bias)
        out["norms"] += 2 * one_norm + (2 * a.head_dim if a.qk_norm else 0)
        if a.mla:  # the RMSNorms of the latents
            out["norms"] += a.mla.kv_lora_rank + a.mla.q_lora_rank
    out["total"] = sum(out.values())
    return out


def rule_of_thumb(a: Arch) -> int:
    """12 L d^2 + V d (tied) or 2 V d: the count for GPT-2-shaped blocks."""
    return 12 * a.n_layer * a.d_model ** 2 + a.vocab * a.d_model * (1 if a.tied else 2)


# --- memory: the KV cache, inference, training ---------------------------------------------
def kv_numbers_per_token(a: Arch, as_mha: bool = False) -> int:
    """Numbers cached per token, all layers. as_mha: what plain MHA with the same heads would
    cache (for MLA: K of d_nope + d_rope and V of d_v per head)."""
    if m := a.mla:
        return a.n_layer * (a.n_head * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
                            if as_mha else m.kv_lora_rank + m.qk_rope_head_dim)
    return 2 * a.n_layer * (a.n_head if as_mha else a.n_kv_head) * a.head_dim


def kv_bytes(a: Arch, context: int, batch: int = 1, dtype="bf16", as_mha=False) -> float:
    """The cache of `batch` sequences of `context` tokens (a sliding window caps the tokens)."""
    tokens = min(context, a.window) if a.window else context
    return kv_numbers_per_token(a, as_mha) * BITS[dtype] / 8 * tokens * batch


def inference_memory(a: Arch, context: int, batch: int = 1, dtype: str = "bf16",
                     kv_dtype: str = "bf16", overhead: float = 0.1) -> dict[str, float]:
    """Bytes to generate: weights + KV cache + `overhead` x both (activations of a step,
    temporary buffers, allocator slack; a CUDA context adds ~0.3-0.5 GB per GPU on top)."""
    w = params(a)["total"] * BITS[dtype] / 8
    kv = kv_bytes(a, context, batch, kv_dtype)
    return {"weights": w, "kv_cache": kv, "overhead": overhead * (w + kv),
            "total": (1 + overhead) * (w + kv)}


def activations_per_token(a: Arch, checkpointing: bool = False) -> tuple[int, int]:
    """(numbers in the training dtype, float32 numbers) autograd keeps per token, counted from
    what each operation saves (checked against the torch engine's saved tensors):
      norm          its input and output, + the normalised x before the gain for RMSNorm
      attention     q, k, v, the output and its (B, T, H hd) copy for wo, a logsumexp per head:
                    3 H hd + 2 n_kv_head hd + H with a fused kernel (SDPA, flash; unfused, the
                    T x T softmax adds H T); qk-norm: + 2 (H + n_kv_head) hd
      MLP           SwiGLU: gate, up, silu(gate), their product: 4 d_ff; GELU: 2 d_ff; ReLU: d_ff
      MoE           4 (top_k + n_shared) d_expert + the routed copies of x (2 top_k d)
      head          logits, log-probabilities and both their gradients: 4 V, in float32
    Per-token scalars (norm statistics) and dropout masks are left out."""
    d, H = a.d_model, a.n_head
    norm = (3 if a.norm == "rmsnorm" else 2) * d
    per_f = {"swiglu": 4, "gelu": 2, "relu": 1}[a.activation]
    if m := a.mla:
        attn = (2 * H * (m.qk_nope_head_dim + m.qk_rope_head_dim) + 3 * H * m.v_head_dim + H
                + 3 * m.kv_lora_rank + m.qk_rope_head_dim + 3 * m.q_lora_rank)
    else:
        q, kv = H * a.head_dim, a.n_kv_head * a.head_dim
        attn = 3 * q + 2 * kv + H + (2 * (q + kv) if a.qk_norm else 0)
    e = a.moe
    moe = e and per_f * (e.top_k + e.n_shared) * e.d_expert + 2 * e.top_k * d + 2 * e.n_experts
    layers = [2 * norm + attn + (moe if a.is_moe(i) else per_f * a.d_ff) for i in range(a.n_layer)]
    body = a.n_layer * d + max(layers) if checkpointing else sum(layers)
    return body + norm, 4 * a.vocab


def lora_params(a: Arch, rank: int, targets=("all-linear",)) -> int:
    """r (in + out) per adapted matrix of every block (routers and routed experts excluded)."""
    mats = [(n.rsplit(".", 1)[-1], n_out, n_in) for i in range(a.n_layer)
            for ms in block_matrices(a, i).values() for n, n_out, n_in, c in ms
            if c == 1 and n != "router"]
    names = {n for n, *_ in mats}
    chosen = names if list(targets) == ["all-linear"] else set(targets)
    if not chosen <= names:
        raise UserError(f"LoRA target '{sorted(chosen - names)[0]}' is not a matrix of this "
                        f"model; choose from {', '.join(sorted(names))} or all-linear.")
    return sum(rank * (n_in + n_out) for n, n_out, n_in in mats if n in chosen)


def training_memory(a: Arch, method="full", batch=1, seq=None, dtype="bf16", rank=16,
                    targets=("all-linear",), checkpointing=False) -> dict[str, float]:
    """Bytes of one training step on `batch` sequences of `seq` tokens. method:
    full   16 bytes per parameter: fp32 weights 4 + gradients 4 + AdamW's m, v 8 (mixed precision:
           bf16 weights, gradients 2 + 2, an fp32 master copy 4, m, v 8; ZeRO, Rajbhandari et al.
           2020, sec. 3.1)
    lora   the frozen base in `dtype`, 16 bytes per adapter parameter (`lora_params`)
    qlora  the blocks' matrices in NF4, embeddings, head and norms in bf16 (bitsandbytes
           quantizes nn.Linear layers; transformers keeps the head), + the adapter
    + activations (`activations_per_token`) x batch x seq, in `dtype` (logits in float32)."""
    p = params(a)
    P, tokens = p["total"], batch * (seq or a.context)
    in_dtype, in_fp32 = activations_per_token(a, checkpointing)
    acts = tokens * (in_dtype * BITS[dtype] / 8 + 4 * in_fp32)
    if method == "full":
        return {"trainable": P, "weights": 4 * P, "gradients": 4 * P, "optimizer": 8 * P,
                "activations": acts, "total": 16 * P + acts}
    n = lora_params(a, rank, targets)
    base = P * BITS[dtype] / 8
    if method == "qlora":
        blocks = p["attention"] + p["mlp"]
        base = blocks * BITS["nf4"] / 8 + (P - blocks) * 2
    return {"trainable": n, "weights": base + 4 * n, "gradients": 4 * n, "optimizer": 8 * n,
            "activations": acts, "total": base + 16 * n + acts}


# --- FLOPs -----------------------------------------------------------------------------------
# Peak dense (no 2:4 sparsity) 16-bit matrix TFLOP/s: NVIDIA's H100, H200, A100, L4 and T4
# datasheets, the Ada (RTX 4090) and GA102 (RTX 3090) whitepapers (FP32 accumulate: GeForce cards
# run FP16 accumulate twice as fast), AMD's MI300X datasheet; Apple publishes no figure for the
# M2 Max, whose 38-core GPU runs FP16 at its FP32 rate: 4,864 ALUs x 2 x 1.398 GHz.
DEVICES = {"h100": (989.4, "NVIDIA H100 SXM, BF16"), "h100-pcie": (756.0, "NVIDIA H100 PCIe, BF16"),
           "h200": (989.4, "NVIDIA H200 SXM, BF16"), "a100": (312.0, "NVIDIA A100, BF16"),
           "l4": (121.0, "NVIDIA L4, BF16"), "t4": (65.0, "NVIDIA T4, FP16 mixed precision"),
           "rtx4090": (165.2, "GeForce RTX 4090, BF16 with FP32 accumulate"),
           "rtx3090": (71.0, "GeForce RTX 3090, FP16 with FP32 accumulate"),
           "mi300x": (1307.4, "AMD Instinct MI300X, BF16"), "m2-max": (13.6, "Apple M2 Max GPU")}


def training_flops(a: Arch, tokens: float, context=None, peak_tflops=0.0, mfu=0.4) -> dict:
    """FLOPs to train on `tokens` tokens in sequences of `context` (module docstring), and the
    seconds that takes at `mfu` (model FLOPs utilisation: achieved / peak) of `peak_tflops`."""
    p, m = params(a, active=True), a.mla
    n = p["total"] - p["embeddings"] - p["norms"] + (a.vocab * a.d_model if a.tied else 0)
    qk_v = m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim if m else 2 * a.head_dim
    attn = 6 * a.n_layer * (context or a.context) * a.n_head * qk_v * tokens
    total = 6 * n * tokens + attn
    return {"n_per_token": n, "dense": 6 * n * tokens, "attention": attn, "total": total,
            "rule_6ND": 6 * params(a)["total"] * tokens,
            "seconds": total / (peak_tflops * 1e12 * mfu) if peak_tflops else 0.0}


# --- the tables of docs/sizing.md (`llm-deeper calc table`) ----------------------------------
_KEYS = ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
         "num_attention_heads", "num_key_value_heads", "tie_word_embeddings",
         "max_position_embeddings")
# a size -> a published model of that size, with the values of its config.json
REFERENCE = {size: (src, dict(zip(_KEYS, v))) for size, src, *v in [
    ("0.5B", "Qwen2.5-0.5B", "qwen2", 151936, 896, 4864, 24, 14, 2, True, 32768),
    ("1B", "Llama-3.2-1B", "llama", 128256, 2048, 8192, 16, 32, 8, True, 131072),
    ("3B", "Llama-3.2-3B", "llama", 128256, 3072, 8192, 28, 24, 8, True, 131072),
    ("7B", "Llama-2-7B", "llama", 32000, 4096, 11008, 32, 32, 32, False, 4096),
    ("13B", "Llama-2-13B", "llama", 32000, 5120, 13824, 40, 40, 40, False, 4096),
    ("70B", "Llama-2-70B", "llama", 32000, 8192, 28672, 80, 64, 8, False, 4096)]}
# hardware -> (memory GB, the share a model may use): an OS and apps keep a quarter of a laptop's
# RAM; Metal lets the GPU wire ~2/3 of unified memory up to 36 GB, ~3/4 above
# (recommendedMaxWorkingSetSize); a CUDA context and allocator slack take ~10 % of a GPU's.
HARDWARE = {"CPU-only laptop, 16 GB RAM": (16, 0.75), "Apple silicon, 16 GB": (16, 0.67),
            "Apple silicon, 32 GB": (32, 0.67), "Apple silicon, 64 GB": (64, 0.75),
            "NVIDIA, 8 GB": (8, 0.9), "NVIDIA, 12 GB": (12, 0.9), "NVIDIA, 24 GB": (24, 0.9),
            "NVIDIA, 80 GB": (80, 0.9)}


def render_table() -> str:
    """The markdown of docs/sizing.md's two tables: GB per model size, and what fits where.
    Inference: 4,096 tokens of fp16 KV cache, batch 1, + 10 %. LoRA (bf16 base) and QLoRA (NF4
    base): rank 16 on every linear layer, one sequence of 2,048 tokens, activation checkpointing,
    + 10 %."""
    def need(a, method):
        if method in ("bf16", "q4_0"):
            return inference_memory(a, 4096, 1, method, "fp16")["total"] / GB
        m = training_memory(a, method, 1, 2048, "bf16", 16, checkpointing=True)
        return 1.1 * m["total"] / GB
    rows = ["| size | shape (from its config.json) | parameters | FP32 | FP16/BF16 | INT8 (Q8_0) "
            "| INT4 (Q4_0) | KV cache, 4k tokens fp16 | LoRA r16 | QLoRA r16 |",
            "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    needs = {}
    for size, (src, d) in REFERENCE.items():
        a = from_hf(d, src)
        n = params(a)["total"]
        needs[size] = {k: need(a, k) for k in ("bf16", "q4_0", "lora", "qlora")}
        gb = " | ".join(f"{n * BITS[t] / 8 / GB:.1f}" for t in ("fp32", "bf16", "q8_0", "q4_0"))
        rows.append(f"| {size} | {src}: L {a.n_layer}, d {a.d_model}, heads {a.n_head}/"
                    f"{a.n_kv_head}, d_ff {a.d_ff} | {n / 1e9:.2f}B | {gb} | "
                    f"{kv_bytes(a, 4096, 1, 'fp16') / GB:.2f} | {needs[size]['lora']:.1f} | "
                    f"{needs[size]['qlora']:.1f} |")
    rows += ["", "| hardware | usable GB | inference BF16 | inference INT4 (Q4_0) | LoRA | QLoRA |",
             "|---|--:|---|---|---|---|"]
    for hw, (gb, share) in HARDWARE.items():
        fits = [[s for s in needs if needs[s][k] <= gb * share] for k in needs["1B"]]
        rows.append(f"| {hw} | {gb * share:.1f} | "
                    + " | ".join(f[-1] if f else "none" for f in fits) + " |")
    return "\n".join(rows) + "\n"
