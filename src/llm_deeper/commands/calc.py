"""`llm-deeper calc`: how many parameters, how much memory, how long to train (sizing.py).

    llm-deeper calc params --model smollm2-135m
    llm-deeper calc memory --preset baby --batch 16
    llm-deeper calc kv --config path/to/config.json --context 4096
    llm-deeper calc flops --model 7B --tokens 1e9 --device h100
    llm-deeper calc table                  # the tables of docs/sizing.md

Each calculator prints a readable table and ends with one JSON line of its numbers. A model is a
preset, a registry model or GGUF file (its metadata only: nothing is dequantized), an HF
config.json or model directory, a checkpoint directory of ours, or a size of `calc table`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import sizing
from ..errors import UserError

HELP = "sizing calculators: parameters, memory, KV cache, training FLOPs and time"


def unit(nbytes: float) -> tuple[str, float]:
    """GB for big numbers, MB for the small presets."""
    return ("GB", sizing.GB) if nbytes >= 1e8 else ("MB", 1e6)


def add_model(q) -> None:
    g = q.add_mutually_exclusive_group(required=True)
    g.add_argument("--preset", help="a training preset (see `llm-deeper presets`)")
    g.add_argument("--model", help="a registry model (smollm2-135m) or GGUF file, an HF model "
                   f"directory, or a size of `calc table` ({', '.join(sizing.REFERENCE)})")
    g.add_argument("--config", help="an HF config.json (the file or its directory) or a "
                   "checkpoint directory of ours")


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="calc_command", required=True, metavar="<calculator>")
    q = sub.add_parser("params", help="exact parameter count by part, beside the rule of thumb")
    add_model(q)
    q = sub.add_parser("memory", help="memory to run (weights per dtype + KV cache) and to train "
                       "(full, LoRA, QLoRA with AdamW)")
    add_model(q)
    add_context(q)
    q.add_argument("--dtype", default="bf16", choices=sizing.BITS,
                   help="inference weights, the frozen LoRA base and the activations")
    q.add_argument("--kv-dtype", default="bf16", choices=sizing.BITS, help="the KV cache")
    q.add_argument("--overhead", type=float, default=0.1,
                   help="inference: extra share of weights + KV cache for activations, buffers "
                   "and allocator slack")
    q.add_argument("--rank", type=int, default=16, help="LoRA rank r")
    q.add_argument("--targets", default="all-linear",
                   help="LoRA targets, comma-separated (wq,wk,wv,wo,w1,w2,w3; MLA: wq_a,wq_b,"
                   "wkv_a,wkv_b) or all-linear")
    q.add_argument("--checkpointing", action="store_true",
                   help="activation checkpointing: keep only each block's input")
    q = sub.add_parser("kv", help="KV-cache bytes per token and for context x batch, vs MHA")
    add_model(q)
    add_context(q)
    q.add_argument("--dtype", default="bf16", choices=sizing.BITS, help="the cached numbers")
    q = sub.add_parser("flops", help="training FLOPs (6ND + attention) and time on a device")
    add_model(q)
    q.add_argument("--tokens", type=float, required=True, help="training tokens D, e.g. 1e9")
    q.add_argument("--context", type=int, default=None,
                   help="sequence length for the attention term (default: the model's context)")
    q.add_argument("--device", default="h100",
                   help=f"peak dense 16-bit FLOP/s of: {', '.join(sizing.DEVICES)}")
    q.add_argument("--peak-tflops", type=float, default=None,
                   help="your own peak TFLOP/s instead of --device")
    q.add_argument("--mfu", type=float, default=0.4,
                   help="model FLOPs utilisation: the share of the peak a training run achieves")
    sub.add_parser("table", help="the markdown tables of docs/sizing.md: memory per model size "
                   "and what fits on which hardware")


def add_context(q) -> None:
    q.add_argument("--context", type=int, default=None,
                   help="tokens per sequence (default: the model's context length)")
    q.add_argument("--batch", type=int, default=1, help="sequences at once")


# --- the model, from wherever it is described -----------------------------------------------
def load(args) -> sizing.Arch:
    if args.preset:
        from ..config import preset

        return sizing.from_config(preset(args.preset), args.preset)
    if args.config:
        return from_json(Path(args.config))
    if args.model in sizing.REFERENCE:
        src, d = sizing.REFERENCE[args.model]
        return sizing.from_hf(d, src)
    from ..pretrained.models import REGISTRY, resolve

    src = resolve(args.model)
    if src.kind == "gguf":
        return from_gguf(src.path, args.model)
    if src.kind == "hf":
        return from_json(src.path)
    raise UserError(f"'{args.model}' is not a registry model ({', '.join(REGISTRY)}), a GGUF "
                    f"file, an HF directory or a size of `calc table`; calc never downloads, so "
                    "pass the model's config.json with --config.")


def from_json(p: Path) -> sizing.Arch:
    """An HF config.json (it names a model_type) or a checkpoint config of ours."""
    f = p / "config.json" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"no config.json at {p}.")
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{f} is not a JSON file ({exc}).") from None
    if not isinstance(d, dict):
        raise UserError(f"{f} is not a model config (a JSON object).")
    name = f.parent.name if f.name == "config.json" else f.stem
    if "model_type" in d:
        return sizing.from_hf(d, name)
    from ..checkpoint import read_config
    from ..config import ModelConfig

    try:
        cfg = read_config(f.parent) if f.name == "config.json" else ModelConfig.from_dict(d)
    except TypeError as exc:
        raise UserError(f"{f} is neither an HF config (no model_type) nor ours ({exc}).") from None
    return sizing.from_config(cfg, name)


def from_gguf(path: Path, name: str) -> sizing.Arch:
    """The GGUF's metadata and tensor list (whether it has an untied head); no weights read."""
    from ..pretrained.weights import gguf_config
    from ..tokenizers.pretrained import gguf_metadata, open_gguf

    reader = open_gguf(path)
    cfg = gguf_config(gguf_metadata(path, reader))
    if any(t.name == "output.weight" for t in reader.tensors):
        cfg = cfg.replace(tie_embeddings=False)
    return sizing.from_config(cfg, name)


# --- the calculators -----------------------------------------------------------------------
def describe(a: sizing.Arch) -> str:
    heads = (f"{a.n_head} heads, MLA latent {a.mla.kv_lora_rank}" if a.mla else
             f"{a.n_head} heads / {a.n_kv_head} KV heads of {a.head_dim}")
    moe = (f", MoE {a.moe.n_experts} experts (top {a.moe.top_k}, {a.moe.n_shared} shared) of "
           f"d_ff {a.moe.d_expert}" if a.moe else "")
    return (f"{a.name}: {a.n_layer} layers, d_model {a.d_model}, {heads}, d_ff {a.d_ff}{moe}, "
            f"vocab {a.vocab}, {a.activation}, {a.attention}, "
            f"{'tied' if a.tied else 'untied'} embeddings")


def run_params(a: sizing.Arch) -> dict:
    p, rule = sizing.params(a), sizing.rule_of_thumb(a)
    for part in ("embeddings", "attention", "mlp", "norms", "head", "total"):
        print(f"  {part:<11}{p[part]:>17,}{100 * p[part] / p['total']:>8.1f} %")
    out = {"params": p, "rule_of_thumb": rule}
    if a.moe:
        act = sizing.params(a, active=True)
        out["active_per_token"] = act["total"] - act["embeddings"]
        print(f"  active per token (top {a.moe.top_k} of {a.moe.n_experts} routed experts, "
              f"without the embedding lookup): {out['active_per_token']:,}")
    unit = a.n_layer * a.d_model ** 2
    att, mlp = p["attention"] / unit, p["mlp"] / unit
    why_att = {"mla": "MLA's low-rank projections", "mha": "4 matrices of d x d"}.get(
        a.attention, f"wk, wv have {a.n_kv_head} of {a.n_head} heads")
    why_mlp = ("every expert counted" if a.moe else f"SwiGLU's 3 matrices of d_ff = "
               f"{a.d_ff / a.d_model:.2f} d" if a.activation == "swiglu" else
               f"2 matrices of d_ff = {a.d_ff / a.d_model:.2f} d")
    print(f"rule of thumb 12 L d^2 + {'' if a.tied else '2 '}V d = {rule:,} "
          f"({100 * (rule / p['total'] - 1):+.1f} %): per block this model has attention "
          f"{att:.2f} d^2 (the rule: 4; {why_att}) and an MLP of {mlp:.2f} d^2 (the rule: 8; "
          f"{why_mlp}).")
    return out


def run_memory(a: sizing.Arch, args) -> dict:
    T = args.context or a.context
    kv = sizing.kv_bytes(a, T, args.batch, args.kv_dtype)
    u, GB = unit(sizing.training_memory(a, "full", args.batch, T)["total"])
    print(f"Inference, {args.batch} x {T} tokens: KV cache ({args.kv_dtype}) {kv / GB:.3f} {u}, "
          f"+ {100 * args.overhead:.0f} % overhead")
    print(f"  {'weights as':<12}{'bits/weight':>12}{'weights ' + u:>12}{'total ' + u:>10}")
    inference = {}
    for dt in ("fp32", "bf16", "int8", "q8_0", "int4", "q4_0", "nf4"):
        m = inference[dt] = sizing.inference_memory(a, T, args.batch, dt, args.kv_dtype,
                                                    args.overhead)
        print(f"  {dt:<12}{sizing.BITS[dt]:>12}{m['weights'] / GB:>12.3f}{m['total'] / GB:>10.3f}")
    print("  int4 formats also store a scale per block: Q4_0 = 32 weights x 4 bits + one fp16 "
          "scale = 4.5 bits per weight; NF4 with double quantization 4.127.")
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    per_tok = sizing.activations_per_token(a, args.checkpointing)
    print(f"Training with AdamW, {args.batch} x {T} tokens, activations in {args.dtype} "
          f"({per_tok[0]:,} numbers per token + {per_tok[1]:,} float32 for the logits"
          f"{', activation checkpointing' if args.checkpointing else ''}), in {u}:")
    print(f"  {'method':<14}{'trainable':>15}{'weights':>9}{'grads':>8}{'AdamW':>8}"
          f"{'activations':>12}{'total':>8}")
    training = {}
    for method in ("full", "lora", "qlora"):
        m = training[method] = sizing.training_memory(a, method, args.batch, T, args.dtype,
                                                      args.rank, targets, args.checkpointing)
        label = method if method == "full" else f"{method} r{args.rank}"
        print(f"  {label:<14}{m['trainable']:>15,}" + "".join(
            f"{m[k] / GB:>{w}.3f}" for k, w in (("weights", 9), ("gradients", 8),
                                                ("optimizer", 8), ("activations", 12),
                                                ("total", 8))))
    print("  full: fp32 weights + gradients + AdamW m, v = 16 bytes/parameter; LoRA: the base "
          f"frozen in {args.dtype}; QLoRA: the blocks' matrices in NF4.")
    return {"context": T, "batch": args.batch, "inference": inference, "training": training}


def run_kv(a: sizing.Arch, args) -> dict:
    T = args.context or a.context
    n, n_mha = sizing.kv_numbers_per_token(a), sizing.kv_numbers_per_token(a, as_mha=True)
    b = sizing.BITS[args.dtype] / 8
    total = sizing.kv_bytes(a, T, args.batch, args.dtype)
    mha = sizing.kv_bytes(a, T, args.batch, args.dtype, as_mha=True)
    u, GB = unit(mha)
    what = (f"the latent ({a.mla.kv_lora_rank}) and the RoPE key ({a.mla.qk_rope_head_dim}) per "
            "layer" if a.mla else f"K and V of {a.n_kv_head} heads of {a.head_dim} per layer")
    print(f"{a.attention.upper()} caches {what}: {n:,} numbers = {n * b:,.0f} bytes per token "
          f"({args.dtype})")
    window = f" (sliding window: the last {a.window} tokens)" if a.window and T > a.window else ""
    print(f"  {args.batch} x {T} tokens{window}: {total / GB:.4f} {u}")
    print(f"  MHA with {a.n_head} heads would cache {n_mha:,} numbers per token: "
          f"{mha / GB:.4f} {u}, {mha / total:.1f}x as much")
    return {"attention": a.attention, "numbers_per_token": n, "bytes_per_token": n * b,
            "bytes": total, "mha_bytes": mha, "context": T, "batch": args.batch}


def device(args) -> tuple[float, str]:
    """(peak TFLOP/s, its description) of --peak-tflops or --device."""
    if not 0 < args.mfu <= 1 or args.tokens <= 0:
        raise UserError("--mfu must be in (0, 1] and --tokens positive.")
    if args.peak_tflops:
        return args.peak_tflops, f"{args.peak_tflops:g} TFLOP/s peak"
    if args.device not in sizing.DEVICES:
        raise UserError(f"unknown device '{args.device}'; choose one of "
                        f"{', '.join(sizing.DEVICES)} or give --peak-tflops.")
    peak, what = sizing.DEVICES[args.device]
    return peak, f"{what}, {peak:g} TFLOP/s dense"


def run_flops(a: sizing.Arch, args) -> dict:
    peak, device_name = device(args)
    T = args.context or a.context
    f = sizing.training_flops(a, args.tokens, T, peak, args.mfu)
    print(f"Training on {args.tokens:.3g} tokens in sequences of {T}:")
    print(f"  6 N D with N = {f['n_per_token']:,} weights per token (no embedding lookup; "
          f"the head{', active experts only' if a.moe else ''}): {f['dense']:.3e} FLOPs")
    print(f"  + attention 6 L T H (d_qk + d_v) D (all T x T, as PaLM counts): "
          f"{f['attention']:.3e}  = {f['total']:.3e}")
    print(f"  (6 N D with all {sizing.params(a)['total']:,} parameters: {f['rule_6ND']:.3e})")
    s = f["seconds"]
    print(f"On {device_name} at MFU {args.mfu:.0%}: {s:,.0f} s = {s / 3600:,.2f} GPU-hours "
          f"= {s / 86400:,.2f} days on one device")
    return {**f, "tokens": args.tokens, "context": T, "peak_tflops": peak, "mfu": args.mfu}


def run(args) -> None:
    if args.calc_command == "table":
        print(sizing.render_table(), end="")
        print(json.dumps({"sizes": {s: src for s, (src, _) in sizing.REFERENCE.items()}}))
        return
    if args.calc_command == "flops":
        device(args)  # a wrong device or MFU is reported before any model is read
    a = load(args)
    if getattr(args, "batch", 1) < 1 or (getattr(args, "context", None) or 1) < 1:
        raise UserError("--batch and --context must be positive.")
    print(describe(a))
    calc = {"params": lambda: run_params(a), "memory": lambda: run_memory(a, args),
            "kv": lambda: run_kv(a, args), "flops": lambda: run_flops(a, args)}
    out = calc[args.calc_command]()
    print(json.dumps({"calc": args.calc_command, "model": a.name, **out}))
