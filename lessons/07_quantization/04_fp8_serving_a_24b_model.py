# %% [markdown]
# # FP8 serving: what it means for a 24B model
#
# The seeds' `09_mistral_example` serves **Devstral Small** (Mistral AI and All Hands AI, 2025:
# 24B parameters, fine-tuned from Mistral-Small-3.1 with its vision encoder removed) with FP8
# weights. Nothing of that size runs here: no GPU, no model hub. What does run is the
# arithmetic, with the project's calculator (`sizing.py`, `llm-deeper calc`), and the number
# format itself, on a small model we have. So this lesson
#
# 1. sizes Devstral Small in bf16, FP8 and 4 bits, weights and KV cache, with `llm-deeper calc`;
# 2. says which GPU holds which, and how many tokens of KV cache are left;
# 3. writes the `vllm serve ... --quantization fp8` command line and checks it as a string
#    (it is **not run here** and was not verified here);
# 4. measures FP8 E4M3's error on SmolLM2's weights as the small-scale stand-in.

# %%
import contextlib
import io
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper import sizing
from llm_deeper.cli import main
from llm_deeper.pretrained import models
from llm_deeper.quantization import dequantize, error_report, quantize

from _common import OUT, QUICK, check

# %% [markdown]
# ## The model's shape
# Devstral-Small-2505's text decoder is Mistral-Small-3.1's: the fields below are those of its
# published `config.json` (written here by hand, not downloaded). Note `head_dim` 128, which is
# not 5120 / 32: the calculator reads it from the config, as transformers does.

# %%
DEVSTRAL = {"model_type": "mistral", "vocab_size": 131072, "hidden_size": 5120,
            "intermediate_size": 32768, "num_hidden_layers": 40, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 131072,
            "tie_word_embeddings": False, "sliding_window": None, "rms_norm_eps": 1e-05,
            "rope_theta": 1e9}
cfg_dir = OUT / "devstral-small-2505"
cfg_dir.mkdir(parents=True, exist_ok=True)
(cfg_dir / "config.json").write_text(json.dumps(DEVSTRAL, indent=1))


def calc(*args) -> dict:
    """`llm-deeper calc ...` in this process: its table printed, its JSON line returned."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["calc", *args])
    out = buf.getvalue()
    print("\n".join(line for line in out.splitlines()[:-1]))
    check(f"llm-deeper calc {args[0]} exits 0", code in (0, None))
    return json.loads(out.splitlines()[-1])


p = calc("params", "--config", str(cfg_dir))["params"]
V, d, L, f, H, KV, hd = 131072, 5120, 40, 32768, 32, 8, 128
by_hand = (2 * V * d  # embedding and an untied head
           + L * (H * hd * d + 2 * KV * hd * d + d * H * hd  # wq, wk, wv, wo
                  + 3 * f * d  # SwiGLU: w1, w3 (d -> f), w2 (f -> d)
                  + 2 * d)  # two RMSNorm gains
           + d)  # the final norm
print(f"by hand: {by_hand:,} parameters")
check("the calculator's count = the count by hand = 23,572,403,200 (the '24B')",
      p["total"] == by_hand == 23_572_403_200)
check("the MLPs are 85 % of it: quantizing the linear layers is quantizing almost everything",
      0.85 < p["mlp"] / p["total"] < 0.86)

# %% [markdown]
# ## Memory: weights and KV cache at 32,768 tokens
# `llm-deeper calc memory` lists the weights in every format and the KV cache. Per token the
# cache holds a key and a value of 8 KV heads x 128 numbers in each of 40 layers:
# $2 \cdot 40 \cdot 8 \cdot 128 = 81{,}920$ numbers, 163,840 bytes in bf16.

# %%
T = 32768
mem = calc("memory", "--config", str(cfg_dir), "--context", str(T))["inference"]
GB = sizing.GB
kv_per_token = 2 * L * KV * hd * 2
print(f"KV cache: {kv_per_token:,} bytes x {T:,} tokens = {kv_per_token * T / GB:.2f} GB")
check("the KV cache by hand = the calculator's (163,840 bytes per token)",
      kv_per_token == 163_840 and mem["bf16"]["kv_cache"] == kv_per_token * T)
check("weights: bf16 = 2 bytes x N, 8 bits = N bytes, Q4_0 = 4.5 bits x N",
      mem["bf16"]["weights"] == 2 * by_hand and mem["int8"]["weights"] == by_hand
      and mem["q4_0"]["weights"] == 4.5 / 8 * by_hand)

# %% [markdown]
# The calculator has no "fp8" entry: FP8 stores 8 bits per weight, as INT8 does, so its
# `int8` line is FP8's too. What vLLM's `--quantization fp8` really stores is a little more:
# every linear layer of the blocks in FP8 E4M3 with **one float32 scale per tensor** (dynamic
# quantization when the model loads, no calibration), while the embedding and the output head
# stay in bf16 (vLLM's FP8 documentation). Activations are quantized too, with a scale computed
# at every step, and on GPUs with FP8 tensor cores (compute capability 8.9 and up: Ada,
# Hopper) the products run in FP8; older GPUs (Ampere) keep the FP8 weights and compute in 16
# bits (W8A16, Marlin kernels), which saves memory but not arithmetic.

# %%
linear = p["attention"] + p["mlp"]
vllm_fp8 = linear * 1 + (p["embeddings"] + p["head"] + p["norms"]) * 2 + 7 * L * 4
formats = {"bf16": mem["bf16"]["weights"], "FP8 (vLLM)": vllm_fp8,
           "4-bit (Q4_0, 4.5 bits)": mem["q4_0"]["weights"]}
for k, v in formats.items():
    print(f"  {k:<24} weights {v / GB:6.2f} GB")
check("vLLM's FP8 = 22.23 GB of FP8 linear layers + 2.68 GB of bf16 embedding and head: "
      "24.91 GB, 53 % of bf16", round(vllm_fp8 / GB, 2) == 24.91
      and 0.52 < vllm_fp8 / mem["bf16"]["weights"] < 0.54)

# %% [markdown]
# ## Which GPU holds it
# vLLM takes `--gpu-memory-utilization` (0.9 by default) of the GPU; from that it subtracts the
# weights and what a step's activations and CUDA graphs need (about 1 GB assumed here, as in
# docs/deployment.md), and fills the rest with KV-cache blocks. A context fits when the cache
# holds at least its tokens. (GB = 10^9 bytes; GPU names with their memory and FP8 support.)

# %%
GPUS = {"RTX 4090, 24 GB (Ada: FP8 W8A8)": 24, "L40S, 48 GB (Ada: FP8 W8A8)": 48,
        "A100, 80 GB (Ampere: FP8 weights only)": 80, "H100, 80 GB (Hopper: FP8 W8A8)": 80}


def kv_tokens(gpu_gb: float, weights: float, kv_bytes_per_token: float, util=0.9, act=1.0):
    left = util * gpu_gb * GB - weights - act * GB
    return max(0, int(left // kv_bytes_per_token))


arch = sizing.from_hf(DEVSTRAL, "Devstral-Small-2505")
kv_bf16 = sizing.kv_bytes(arch, 1, 1, "bf16")
check("the calculator's KV bytes per token (bf16) = 163,840", kv_bf16 == kv_per_token)
table = {(g, k): kv_tokens(gb, w, kv_bf16) for g, gb in GPUS.items() for k, w in formats.items()}
print("KV-cache tokens left (bf16 cache), at 0.9 utilisation and 1 GB for activations:")
print(f"  {'GPU':<40}" + "".join(f"{k:>24}" for k in formats))
for g in GPUS:
    print(f"  {g:<40}" + "".join(f"{table[g, k]:>24,}" if table[g, k] else f"{'does not fit':>24}"
                                  for k in formats))
fits = {key: n >= T for key, n in table.items()}
check("bf16 (47 GB) fits neither the 24 GB nor the 48 GB card",
      not fits["RTX 4090, 24 GB (Ada: FP8 W8A8)", "bf16"]
      and not fits["L40S, 48 GB (Ada: FP8 W8A8)", "bf16"])
check("FP8 makes it fit one 48 GB card with a full 32k context; 24 GB still needs 4 bits",
      fits["L40S, 48 GB (Ada: FP8 W8A8)", "FP8 (vLLM)"]
      and not fits["RTX 4090, 24 GB (Ada: FP8 W8A8)", "FP8 (vLLM)"]
      and fits["RTX 4090, 24 GB (Ada: FP8 W8A8)", "4-bit (Q4_0, 4.5 bits)"])
h100 = "H100, 80 GB (Hopper: FP8 W8A8)"
print(f"on the H100, FP8 leaves {table[h100, 'FP8 (vLLM)'] / table[h100, 'bf16']:.1f}x the "
      "KV cache of bf16: more and longer requests at once")
check("on an 80 GB card FP8 roughly doubles the tokens the cache holds (>= 1.9x)",
      table[h100, "FP8 (vLLM)"] >= 1.9 * table[h100, "bf16"])

# %% [markdown]
# `--kv-cache-dtype fp8` stores the cache in 8 bits too: half the bytes per token (the
# calculator's `int8` has the same 8 bits), so twice the tokens again, at some accuracy cost
# that this project has not measured.

# %%
kv_fp8 = sizing.kv_bytes(arch, 1, 1, "int8")
both = kv_tokens(48, vllm_fp8, kv_fp8)
print(f"L40S, FP8 weights and FP8 cache: {both:,} tokens")
check("an 8-bit cache halves the bytes per token", kv_fp8 * 2 == kv_bf16
      and both >= 2 * table["L40S, 48 GB (Ada: FP8 W8A8)", "FP8 (vLLM)"] - 1)

# %% [markdown]
# ## The command line (not run here)
# On a Linux machine with such a GPU, `pip install vllm`, and access to the model on the
# Hugging Face hub, the serving command would be the one below. It was **not run and not
# verified here** (no GPU, no hub). `--tokenizer-mode mistral` and `--tool-call-parser mistral`
# are what vLLM uses for Mistral's own tokenizer and tool-call format; Devstral's model card
# lists further Mistral-format flags worth checking there. `llm-deeper serve --engine vllm`
# would pass the `--quantization` and `--max-model-len` part through `--vllm-args`
# (docs/deployment.md), but it sets the hermes tool parser of our own models, not Mistral's.

# %%
COMMAND = ("vllm serve mistralai/Devstral-Small-2505 --tokenizer-mode mistral "
           "--tool-call-parser mistral --enable-auto-tool-choice "
           "--quantization fp8 --max-model-len 32768 --gpu-memory-utilization 0.9")
argv = shlex.split(COMMAND)
opts = {a: b for a, b in zip(argv, argv[1:] + [""]) if a.startswith("--")}
print(COMMAND.replace(" --", " \\\n    --"))
check("the command serves Devstral Small with FP8 weights, a 32k window and Mistral tool calls",
      argv[:3] == ["vllm", "serve", "mistralai/Devstral-Small-2505"]
      and opts["--quantization"] == "fp8" and int(opts["--max-model-len"]) == T
      and opts["--tool-call-parser"] == "mistral" and "--enable-auto-tool-choice" in opts)
util = float(opts["--gpu-memory-utilization"])
check("and by the calculator its --max-model-len fits a 48 GB card at that utilisation",
      kv_tokens(48, vllm_fp8, kv_bf16, util=util) >= int(opts["--max-model-len"]))

# %% [markdown]
# ## FP8 E4M3 on real weights: the small-scale stand-in
# What does E4M3 do to a trained model's weights? On SmolLM2-135M's block matrices: relative
# RMS error of bf16 (the format FP8 replaces), FP8 E4M3 with one scale per tensor (vLLM's
# dynamic `--quantization fp8`) and per output channel (what pre-quantized FP8 checkpoints
# often use), and INT8 per row for comparison. Then: the package's E4M3 codes are bit for bit
# what PyTorch's `float8_e4m3fn` cast (the dtype the GPU kernels read) gives.

# %%
if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")
from llm_deeper.pretrained.weights import load_gguf

pre = load_gguf(models.gguf_file("smollm2-135m"))
names = [n for n, v in pre.params.items() if v.ndim == 2 and n.startswith("h.")
         and int(n.split(".")[1]) % (10 if QUICK else 1) == 0]
sums = {"bf16": 0.0, "FP8 E4M3, per tensor": 0.0, "FP8 E4M3, per row": 0.0,
        "INT8, per row": 0.0}
var = 0.0
for n in names:
    w = pre.params[n]
    bf16 = torch.from_numpy(w).to(torch.bfloat16).float().numpy()
    sums["bf16"] += float(((w - bf16).astype(np.float64) ** 2).sum())
    sums["FP8 E4M3, per tensor"] += error_report(w, "fp8_e4m3")["mse"] * w.size
    sums["FP8 E4M3, per row"] += error_report(w, "fp8_e4m3", per_channel=True)["mse"] * w.size
    sums["INT8, per row"] += error_report(w, "int8", per_channel=True)["mse"] * w.size
    var += float((w.astype(np.float64) ** 2).sum())
rel = {k: (v / var) ** 0.5 for k, v in sums.items()}
print(f"{len(names)} matrices; RMS error / RMS weight:")
for k, v in rel.items():
    print(f"  {k:<22} {v:.4f}")
check("bf16 < INT8 per row < FP8 E4M3 (per row ~ per tensor) in error",
      rel["bf16"] < rel["INT8, per row"] < rel["FP8 E4M3, per row"]
      and abs(rel["FP8 E4M3, per row"] / rel["FP8 E4M3, per tensor"] - 1) < 0.1)

w = pre.params["h.0.attn.wq"]
q = quantize(w, "fp8_e4m3", per_channel=True)
theirs = torch.from_numpy(w / q.scales).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
check("the package's FP8 E4M3 codes = PyTorch's float8_e4m3fn cast of w / scale, bit for bit",
      np.array_equal(q.codes, theirs))
y = w / q.scales
normal = np.abs(y) >= 2.0 ** -6  # E4M3's normal range: 3 mantissa bits, relative step 1/8
relerr = np.abs(dequantize(q)[normal] - w[normal]) / np.abs(w[normal])
print(f"largest relative error in the normal range: {relerr.max():.4f} (1/16 = 0.0625); "
      f"{1 - normal.mean():.2%} of the weights are subnormal after scaling")
check("in E4M3's normal range every weight is within 1/16 of itself (half a step of 1/8)",
      relerr.max() <= 1 / 16 + 1e-6)

# %% [markdown]
# FP8 is not more *accurate* than INT8 with a scale per row: on SmolLM2 the perplexity cost
# is +3.8 % for E4M3 per row against +0.4 % for INT8 per row (docs/benchmarks.md; a 135M model
# is more fragile than a 24B one, and vLLM reports minimal accuracy loss at the larger sizes,
# which this project has not measured). Its case is the hardware: FP8 tensor cores multiply
# FP8 weights by FP8 activations directly, and a float's range absorbs activation outliers
# that an INT8 grid would have to be told about (lesson 02).
#
# ## Exercises
# 1. Change `T` to 131,072 (Devstral's full context) and rerun: which checks fail, and which
#    GPU still holds one full-length request? (answer: the cache of one request is now 21.5 GB;
#    the 48 GB card holds 105,499 tokens in FP8, so its check fails; the 80 GB cards hold one
#    full request even with bf16 weights, 145,600 tokens, and two with FP8.)
# 2. Add an H200 (141 GB) to `GPUS`: how many tokens of bf16 cache are left beside bf16 weights?
#    (answer: 0.9 x 141 - 47.14 - 1 = 78.8 GB, about 480,000 tokens.)
# 3. `vllm_fp8` keeps the embedding and head in bf16. How many GB would quantizing them too
#    save, and why might vLLM leave the head alone? (answer: 1.34 GB, 5 % of the FP8 weights;
#    every logit passes through the head, and the embedding is a lookup, not a product.)
