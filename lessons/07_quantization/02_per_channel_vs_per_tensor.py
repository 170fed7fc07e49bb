# %% [markdown]
# # One scale per tensor, per row or per group
#
# An absmax format picks its step from the largest value that shares the scale:
# $s = \max|w| / 127$. Everything under that scale is rounded on the same grid. So the question
# "which numbers share a scale?" decides the error as much as the number of bits does. A weight
# matrix $W$ of shape (out, in) computes $y = x W^\top$: row $i$ is output $i$'s dot product, so a
# scale per **row** (per output channel) can be applied after the product,
# $y_i = s_i \,(x \cdot q_i)$, and costs 4 bytes per row.
#
# We build the failure on a small matrix, measure it on all of SmolLM2's matrices, and read
# what it does to the model's perplexity (docs/benchmarks.md), recomputing one number.

# %%
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.data import shakespeare
from llm_deeper.pretrained import models
from llm_deeper.quantization import dequantize, error_report, quantize

from _common import QUICK, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")


def mse(a, b) -> float:
    return float(np.mean((a.astype(np.float64) - b) ** 2))


def round_trip(w, fmt, **options):
    return dequantize(quantize(w, fmt, **options))


# %% [markdown]
# ## One outlier row
# 8 outputs of 64 inputs, weights about $N(0, 0.02^2)$; output 3 has one weight of 1.0. One
# scale for the tensor makes the step $1.0 / 127 = 0.0079$, and the typical weight (0.02) is
# then 2 or 3 steps, and every weight under half a step (about one in seven) is stored as 0:
# most of the precision is gone, in **every** row, for the sake of one number.

# %%
rng = np.random.default_rng(0)
W = (rng.standard_normal((8, 64)) * 0.02).astype(np.float32)
W_row = W.copy()
W_row[3, 10] = 1.0
others = np.arange(8) != 3
per_tensor, per_row = round_trip(W_row, "int8"), round_trip(W_row, "int8", per_channel=True)
q_t = quantize(W_row, "int8")
print(f"per-tensor step {q_t.scales[0]:.4f}; codes of row 0: {q_t.codes[0, :8].tolist()} ...")
print(f"per-row steps: {np.round(quantize(W_row, 'int8', per_channel=True).scales[:, 0], 5)}")
e_t, e_r = mse(W_row[others], per_tensor[others]), mse(W_row[others], per_row[others])
print(f"MSE of the 7 ordinary rows: per tensor {e_t:.2e}, per row {e_r:.2e} ({e_t / e_r:.0f}x)")
zero_t = float((q_t.codes[others] == 0).mean())
print(f"ordinary weights stored as 0: {zero_t:.0%} per tensor")
check("per-tensor INT8: the outlier row costs the other rows over 100x the error of per-row "
      "scales", e_t > 100 * e_r)
check("per tensor, over a tenth of the ordinary weights become exactly 0 (|w| < step / 2)",
      zero_t > 0.1)

# %% [markdown]
# ## One outlier column
# Now input 10 is large in every row (an input channel the model amplifies). Every row's
# absmax is that column's weight, so a scale per row is the same bad scale eight times: per-row
# scales cannot help. What helps is a scale per **group** of inputs: GGUF's Q8_0 keeps one scale
# per 32 consecutive inputs of a row, so the outlier spoils its own block of 32 (inputs 0-31)
# and leaves inputs 32-63 alone.

# %%
W_col = W.copy()
W_col[:, 10] = rng.choice([-1.0, 1.0], size=8)
e_t, e_r = mse(W_col, round_trip(W_col, "int8")), mse(W_col, round_trip(W_col, "int8",
                                                                         per_channel=True))
e_g = mse(W_col, round_trip(W_col, "q8_0"))
e_g_clean = mse(W_col[:, 32:], round_trip(W_col, "q8_0")[:, 32:])
print(f"MSE: per tensor {e_t:.2e}, per row {e_r:.2e}, Q8_0 (groups of 32) {e_g:.2e}; "
      f"Q8_0 on inputs 32-63 alone {e_g_clean:.2e}")
check("an outlier column: per-row scales are no better than per-tensor (within 10 %)",
      abs(e_r / e_t - 1) < 0.1)
check("groups of 32 confine it: Q8_0's error is under 60 % of per-row's, and inputs 32-63 are "
      "100x better", e_g < 0.6 * e_r and e_g_clean * 100 < e_r)

# %% [markdown]
# Weights are mostly well behaved; **activations** are not. LLM.int8() (Dettmers et al. 2022)
# found that from about 6.7B parameters a few hidden dimensions carry values up to 20x the
# others, in every layer and most tokens: outlier *columns* of the input $x$. Per-token scales
# cannot fix them (the outlier is in most tokens), so LLM.int8() computes those dimensions in
# 16 bits and the rest in INT8; SmoothQuant (Xiao et al. 2023) divides each input channel by a
# factor and multiplies the weight's column by it, moving the difficulty from activations to
# weights, which per-channel scales handle. docs/quantization.md has both.
#
# ## SmolLM2's matrices: per tensor against per row
# Every block matrix of SmolLM2-135M (7 per layer; every third layer in quick mode), INT8 per
# tensor and per row, from the cached GGUF through the package's loader.

# %%
from llm_deeper.pretrained.weights import load_gguf

pre = load_gguf(models.gguf_file("smollm2-135m"))
layers = range(0, pre.config.n_layer, 3 if QUICK else 1)
names = [n for n, v in pre.params.items() if v.ndim == 2 and n.startswith("h.")
         and int(n.split(".")[1]) in layers]
ratio, sq_t, sq_r = {}, 0.0, 0.0
for n in names:
    w = pre.params[n]
    a, b = error_report(w, "int8")["mse"], error_report(w, "int8", per_channel=True)["mse"]
    ratio[n] = a / b
    sq_t, sq_r = sq_t + a * w.size, sq_r + b * w.size
worst = sorted(ratio, key=ratio.get, reverse=True)
print(f"{len(names)} matrices; MSE per tensor / per row: median "
      f"{np.median(list(ratio.values())):.1f}x, smallest {min(ratio.values()):.1f}x")
for n in worst[:5]:
    rows_max = np.abs(pre.params[n]).max(axis=1)
    print(f"  {n:<14} {ratio[n]:6.1f}x   largest row absmax {rows_max.max():.2f} = "
          f"{rows_max.max() / np.median(rows_max):.1f}x the median row's")
print(f"squared error summed over these matrices: per row {sq_r / sq_t:.1%} of per tensor")
check("per-row scales beat one per tensor on every SmolLM2 matrix", min(ratio.values()) > 1)
w = pre.params[worst[0]]
rows_max = np.abs(w).max(axis=1)
check("the worst matrix has a row whose absmax is over 5x the median row's",
      rows_max.max() > 5 * np.median(rows_max))
zero_t = float((quantize(w, "int8").codes == 0).mean())
zero_r = float((quantize(w, "int8", per_channel=True).codes == 0).mean())
print(f"{worst[0]}: weights stored as 0: {zero_t:.1%} per tensor, {zero_r:.1%} per row")
check("there, per tensor zeroes several times more weights than per row", zero_t > 3 * zero_r)

# %% [markdown]
# ## What it does to the model
# docs/benchmarks.md measured SmolLM2-135M's perplexity on the works' validation split (first
# 8,192 tokens, window 512, stride 256) with every matrix quantized and dequantized
# (`llm-deeper eval perplexity --quant int8 [--quant-option per_channel=true]`):
#
# | weights | perplexity | change |
# |---|---|---|
# | fp32 (the dequantized Q4_1 file) | 48.95 | - |
# | INT8, one scale per row | 49.13 | +0.4 % |
# | INT8, one scale per tensor | 53.74 | +9.8 % |
#
# The same number of bits; a 25x larger loss of quality, from where the scales sit.

# %%
bench = (Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md").read_text()
quoted = {"fp32 (the dequantized Q4_1 file)": ("48.95", "-"),  # its rows: name | MB | bits |
          "INT8, one scale per row": ("49.13", "+0.4 %"),    # perplexity | change | ...
          "INT8, one scale per tensor": ("53.74", "+9.8 %")}
found = {k: re.search(rf"\| {re.escape(k)} \| \d+ \| [\d.]+ \| ([\d.]+) \| ([^|]+) \|", bench)
         for k in quoted}
check("the numbers quoted are docs/benchmarks.md's",
      all(m and (m.group(1), m.group(2).strip()) == quoted[k] for k, m in found.items()))
print(f"+9.8 % / +0.4 % = {9.8 / 0.4:.1f}x")

# %% [markdown]
# ## Recomputed, on fewer tokens (full mode only)
# The same measurement with the package's functions on the first 1,024 validation tokens:
# `fake_quantize` (every matrix through the format and back), the PyTorch engine, and the
# sliding-window perplexity of `llm-deeper eval perplexity`. Quick mode skips it (about a
# minute on 2 cores); on 1,024 tokens the numbers differ from the 8,192-token ones, the gap
# between the two placements of the scale does not.

# %%
if QUICK:
    print("quick mode: skipped (run without LLM_DEEPER_QUICK to recompute)")
elif not shakespeare.is_cached():
    print("skipped: the works corpus is not cached (run 'llm-deeper data pull shakespeare')")
else:
    from llm_deeper.data import load_text
    from llm_deeper.evaluation.perplexity import perplexity, torch_logprobs
    from llm_deeper.quantization.model import fake_quantize
    from llm_deeper.torch_engine.model import TorchGPT

    text = load_text("works")
    val = text[int(0.9 * len(text)):]  # eval perplexity's --split val
    ids = np.asarray(pre.tokenizer.encode(val[:12_000]))[:1024]
    ppl = {}
    for label, fmt, opts in (("float32", None, {}), ("int8 per row", "int8",
                                                     {"per_channel": True}),
                             ("int8 per tensor", "int8", {})):
        params = pre.params if fmt is None else fake_quantize(pre.params, fmt, **opts)[0]
        fn = torch_logprobs(TorchGPT(pre.config, params).eval())
        ppl[label] = perplexity(fn, ids, 512, 256).perplexity
        change = 100 * (ppl[label] / ppl["float32"] - 1)
        print(f"  {label:<16} perplexity {ppl[label]:7.2f}  {change:+.1f} %")
    d_row = ppl["int8 per row"] / ppl["float32"] - 1
    d_tensor = ppl["int8 per tensor"] / ppl["float32"] - 1
    check("on 1,024 tokens too: per tensor costs over 5 %, per row under 1.5 %",
          d_tensor > 0.05 and d_row < 0.015)

# %% [markdown]
# ## Exercises
# 1. In the outlier-row matrix, make the outlier 0.1 instead of 1.0. Predict the per-tensor
#    step and the share of ordinary weights stored as 0 (answer: step 0.1 / 127 = 0.00079, a
#    typical weight is 25 steps; 1.6 % become 0, and per tensor is only 3.3x per row's error:
#    both checks of that section fail. An outlier hurts in proportion to how far out it is.)
# 2. Quantize `W_col` with `int4` at `group_size=32` and compare its MSE with INT8 per row. Which
#    wins, 4 bits with groups or 8 bits per row, on a matrix with an outlier column?
# 3. `error_report(w, "int8_asym", per_channel=True)` adds a zero point per row. On the worst
#    SmolLM2 matrix, does it beat symmetric per-row INT8? Why would a zero point help a row whose
#    values are not centred on 0?
