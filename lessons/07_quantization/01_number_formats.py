# %% [markdown]
# # Number formats: codes, scales and what they cost
#
# A model's weights are float numbers. To store them in fewer bits, a **format** replaces each
# weight $w$ by a small **code** $q$ from a fixed set, and keeps a few **scales** that map codes
# back: $w' = s \cdot \mathrm{value}(q)$. Two numbers say what a format is worth: the **bits per
# parameter** it stores (codes + scales + anything else) and the **error** $w - w'$.
#
# Every format here is the package's (`src/llm_deeper/quantization/`, one file each, each checked
# against a reference in `tests/test_quantization_formats.py`). We redo each one by hand on a
# few numbers, check the hand computation equals the package, then measure all of them on one of
# SmolLM2-135M's weight matrices.

# %%
import math
import sys
from pathlib import Path
from statistics import NormalDist

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.figures.quantization import MATRIX, draw_error_bits, draw_quant_grids, error_rows
from llm_deeper.pretrained import models
from llm_deeper.quantization import dequantize, error_report, fp8, integer, nf4, quantize

from _common import OUT, check

if not models.is_cached("smollm2-135m"):
    raise SystemExit("run 'llm-deeper models pull smollm2-135m' first")

# %% [markdown]
# ## INT8 by hand on 8 numbers
# Symmetric absmax: the scale puts the largest $|w|$ on the largest code,
# $$s = \max|w| / 127, \qquad q = \mathrm{round}(w / s) \in [-127, 127], \qquad w' = q\,s.$$
# Rounding moves a value by at most half a step, so $|w - w'| \le s/2$ for every element.

# %%
x = np.array([0.5, -1.27, 0.02, 0.3, -0.05, 0.9, -0.61, 0.125], dtype=np.float32)
s = np.abs(x).max() / np.float32(127)
q_hand = np.rint(x / s).astype(np.int8)
print(f"s = {np.abs(x).max()} / 127 = {s:.6f}")
print("codes by hand:", q_hand.tolist())
print("w' = q * s:   ", np.round(q_hand * s, 5).tolist())
qt = quantize(x, "int8")  # the package: integer.int8_quantize through the FORMATS table
print(qt.fmt, qt.codes.dtype, qt.codes.tolist(), "scale", qt.scales.tolist())
check("codes and scale by hand = integer.int8_quantize",
      np.array_equal(q_hand, qt.codes) and qt.scales[0] == s)
err = np.abs(dequantize(qt) - x)
check("every error <= s / 2", bool((err <= s / 2 + 1e-7).all()))
check("8 one-byte codes + one float32 scale = 12 bytes: 12 bits/param for 8 numbers",
      qt.nbytes == 8 + 4 and qt.bits_per_param == 12.0)

# %% [markdown]
# A scale is paid for once per tensor (or row, or group): 4 bytes over 8 numbers is 4 bits of
# overhead each; over a 576 x 576 matrix it is $32 / 331{,}776 \approx 0.0001$ bits.
#
# ## INT4 in groups
# 16 codes are too few for one scale per tensor or row: the step would be huge. So INT4 shares
# a scale within a **group** of $g$ consecutive inputs of a row, $s_g = \max|w_g| / 7$, codes
# in $[-7, 7]$, two codes per byte (each stored as the nibble $q + 8$, element $2i$ in the low 4
# bits). Cost: $4 + 32/g$ bits, 5.0 at $g = 32$, 4.5 at $g = 64$.

# %%
rng = np.random.default_rng(0)
row = (rng.standard_normal((1, 64)) * 0.2).astype(np.float32)
row[0, 40] = 1.1  # a large value in the second group only
groups = row.reshape(2, 32)
s_g = np.abs(groups).max(axis=1) / np.float32(7)
q_g = np.clip(np.rint(groups / s_g[:, None]), -7, 7).astype(np.int8)
print("group scales by hand:", s_g.round(5).tolist())
q4 = integer.int4_quantize(row, group_size=32)
print("package scales:      ", q4.scales.round(5).tolist(), "codes of group 0:",
      integer.int4_codes(q4)[0, :8].tolist(), "...")
check("group scales and codes by hand = integer.int4_quantize",
      np.allclose(q4.scales.reshape(-1), s_g, rtol=0, atol=0)
      and np.array_equal(integer.int4_codes(q4).reshape(2, 32), q_g))
byte0 = (int(q_g[0, 1]) + 8) << 4 | (int(q_g[0, 0]) + 8)
print(f"first byte: codes {q_g[0, 0]}, {q_g[0, 1]} -> nibbles {q_g[0, 0] + 8}, {q_g[0, 1] + 8} "
      f"-> 0x{byte0:02X}; the package stored 0x{q4.codes[0]:02X}")
check("two codes per byte, element 0 in the low nibble (= integer.pack_int4)",
      byte0 == q4.codes[0] and q4.codes.size == 32)
check("64 numbers: 32 bytes of codes + 2 float32 scales = 5.0 bits/param", q4.bits_per_param == 5.0)
step = s_g[1] / s_g[0]
print(f"the large value makes group 1's step {step:.1f}x group 0's; group 0 keeps its fine step")

# %% [markdown]
# ## NF4: 16 values at the quantiles of a normal distribution
# A block of trained weights divided by its absmax is roughly normal and lies in $[-1, 1]$.
# QLoRA's NormalFloat4 puts the 16 values where such data is dense: at quantiles of
# $N(0, 1)$, not evenly spaced. Zero must be exact, so the halves are built apart (QLoRA,
# section 3): 8 positive levels $\Phi^{-1}(p)$ for $p$ evenly spaced from $1 - \delta$ down to
# (not including) $1/2$, 7 negative ones likewise, plus 0, all divided by the largest.
# $\Phi^{-1}(1)$ is infinite, so the top level sits at the quantile $1 - \delta$, with
# $\delta = (1/30 + 1/32)/2$.

# %%
ppf = NormalDist().inv_cdf
delta = (1 / 30 + 1 / 32) / 2
top = 1 - delta
pos = [ppf(top - i * (top - 0.5) / 8) for i in range(8)]   # 8 levels above 0
neg = [-ppf(top - i * (top - 0.5) / 7) for i in range(7)]  # 7 levels below 0
levels = sorted(neg + [0.0] + pos)
levels = [v / max(levels) for v in levels]
print("NF4 by hand:", [round(v, 4) for v in levels])
check("16 levels, -1 and 1 at the ends, 0 exact", len(levels) == 16 and levels[0] == -1.0
      and levels[-1] == 1.0 and 0.0 in levels)
check("= nf4.NF4, the package's table (1e-7)", np.allclose(levels, nf4.NF4, rtol=0, atol=1e-7))
gap = np.abs(np.array(levels) - np.array(nf4.NF4_PUBLISHED)).max()
print(f"largest gap to bitsandbytes' published table: {gap:.1e} (it was computed in float32)")
check("= bitsandbytes' published table (1e-6)", gap < 1e-6)

# %% [markdown]
# ## FP8 E4M3 and E5M2, bit by bit
# A byte $s\,|\,e\,|\,f$ with $E$ exponent bits, $M$ mantissa bits and bias $b$ means
# $(-1)^s (1 + f/2^M)\, 2^{e - b}$ (normal, $e > 0$) or $(-1)^s (f / 2^M)\, 2^{1 - b}$
# (subnormal, $e = 0$). E4M3: $b = 7$, no infinities, max $1.75 \cdot 2^8 = 448$. E5M2: $b = 15$,
# infinities like float16, max $1.75 \cdot 2^{15} = 57{,}344$ (Micikevicius et al. 2022).
#
# To encode $x$: its binade $k = \lfloor \log_2 |x| \rfloor$ (at least $1 - b$, the subnormal
# one), where values are $2^{k - M}$ apart; round $|x|$ to that spacing, $n$; the code is
# $(k - (1 - b))\,2^M + n$ (the leading 1 of $n$ lands in the exponent field by itself). Beyond
# the largest finite code, E4M3 saturates (as PyTorch casts), E5M2 becomes infinity.

# %%
def encode_by_hand(v: float, E: int, M: int, bias: int) -> int:
    emin = 1 - bias
    sign = 128 if math.copysign(1, v) < 0 else 0
    a = abs(v)
    k = max(math.frexp(a)[1] - 1, emin) if a else emin  # frexp: a = m 2^e, m in [0.5, 1)
    n = round(a / 2.0 ** (k - M))  # Python rounds half to even, as IEEE does
    code = ((k - emin) << M) + n
    top = (0x7E if E == 4 else 0x7B)  # the largest finite magnitude's code
    if code > top:
        code = top if E == 4 else 0x7C  # E4M3 saturates to 448; E5M2 overflows to inf
    return sign | code


def decode_by_hand(c: int, E: int, M: int, bias: int) -> float:
    s, e, f = c >> 7, (c >> M) & ((1 << E) - 1), c & ((1 << M) - 1)
    mag = (f / 2 ** M) * 2.0 ** (1 - bias) if e == 0 else (1 + f / 2 ** M) * 2.0 ** (e - bias)
    return -mag if s else mag


samples = [float(np.float32(v)) for v in (0.3, -2.5, 448.0, 2 ** -9, 1000.0, 0.0137)]
for name, E, M, bias, tdtype in (("e4m3", 4, 3, 7, torch.float8_e4m3fn),
                                 ("e5m2", 5, 2, 15, torch.float8_e5m2)):
    hand = [encode_by_hand(v, E, M, bias) for v in samples]
    pkg = fp8.encode(np.array(samples, dtype=np.float32), name).tolist()
    torch_codes = torch.tensor(samples).to(tdtype).view(torch.uint8).tolist()
    print(f"{name.upper()}:")
    for v, c in zip(samples, hand):
        bits = f"{c:08b}"
        print(f"  {v:>10g} -> {bits[0]} {bits[1:1 + E]} {bits[1 + E:]} = 0x{c:02X} "
              f"-> {decode_by_hand(c, E, M, bias):g}")
    check(f"{name.upper()} codes by hand = fp8.encode = torch's cast to {tdtype}",
          hand == pkg == torch_codes)
    decoded = [decode_by_hand(c, E, M, bias) for c in hand]
    check(f"{name.upper()} values by hand = fp8.decode",
          np.array_equal(np.array(decoded, np.float32), fp8.decode(np.array(hand, np.uint8), name)))
check("1000 saturates to 448 in E4M3; in E5M2 it rounds to 1024 (2 mantissa bits)",
      fp8.decode(fp8.encode(np.float32(1000), "e4m3"), "e4m3") == 448
      and fp8.decode(fp8.encode(np.float32(1000), "e5m2"), "e5m2") == 1024)

# %% [markdown]
# Floats spend their bits differently from integers: the step grows with the value (E4M3 has
# 8 values per binade), so the *relative* error is about the same everywhere, and small weights
# keep more precision than a uniform INT8 grid gives them. A tensor is still scaled first, by
# $s = \max|w| / 448$, so that it fills the range (`fp8.fp8_quantize`).
#
# ## Every format on a real weight matrix
# SmolLM2-135M's attention query projection of layer 0 (576 x 576), from the cached GGUF through
# the package's loader. One caveat that the numbers show: the file already stores this matrix as
# GGUF Q4_1 (every block matrix is Q4_1, the embedding Q8_0), so the float32 matrix here *is* a
# 4-bit matrix, dequantized.

# %%
from llm_deeper.pretrained.weights import load_gguf

pre = load_gguf(models.gguf_file("smollm2-135m"))
w = pre.params[MATRIX]
rows = error_rows(w)  # error_report of every entry of FORMAT_TABLE
var = float(w.astype(np.float64).var())
print(f"{MATRIX} {w.shape}: std {w.std():.3f}, max |w| {np.abs(w).max():.3f}")
print(f"  {'format':<28}{'bits/param':>11}{'MSE':>12}{'RMS / std':>11}{'max |err|':>11}")
for r in rows:
    print(f"  {r['label']:<28}{r['bits_per_param']:>11.3f}{r['mse']:>12.3e}"
          f"{math.sqrt(r['mse'] / var):>11.4f}{r['max_abs']:>11.4f}")
by = {r["label"]: r for r in rows}
n, rows_w = w.size, w.shape[0]
expected = {  # bits = 8 x bytes / n, the bytes counted by hand
    "int8, per row": 8 * (n + 4 * rows_w) / n,  # 1 byte a code, a float32 scale per row
    "GGUF Q8_0 (blocks of 32)": 8 * 34 / 32,  # 32 codes + a float16 scale per block
    "GGUF Q4_0 (blocks of 32)": 8 * 18 / 32,  # 16 bytes of nibbles + a float16 scale
    "INT4, groups of 64": 8 * (n / 2 + 4 * n / 64) / n,  # nibbles + a float32 scale per group
    # NF4 + double quantization: nibbles, an int8 absmax per block of 64, a float32 scale per
    # 256 of those (the last one partly filled), one float32 mean
    "NF4 + double quantization": 8 * (n / 2 + n / 64 + 4 * math.ceil(n / 64 / 256) + 4) / n,
}
for label, bits in expected.items():
    print(f"  {label:<28} by hand {bits:.4f}, package {by[label]['bits_per_param']:.4f}")
check("bits/param counted by hand = the package's for int8 per row, Q8_0, Q4_0, INT4 g64 and "
      "NF4 + double quantization",
      all(math.isclose(by[k]["bits_per_param"], v, rel_tol=1e-12) for k, v in expected.items()))
eight = [r["mse"] for r in rows if r["bits_per_param"] >= 8]
four = [r["mse"] for r in rows if r["bits_per_param"] <= 5 and r["format"] != "q4_1"]
check("every 8-bit format has a smaller error than every 4-bit one", max(eight) < min(four))
check("a scale per row beats one per tensor (INT8 and FP8 E4M3)",
      by["int8, per row"]["mse"] < by["int8, per tensor"]["mse"]
      and by["FP8 E4M3, per row"]["mse"] <= by["FP8 E4M3, per tensor"]["mse"])
check("E4M3 (3 mantissa bits) beats E5M2 (2) on weights",
      by["FP8 E4M3, per row"]["mse"] < by["FP8 E5M2, per row"]["mse"])
check("Q4_1 gives this matrix back exactly: it was stored in Q4_1", by["GGUF Q4_1 (blocks of 32)"][
      "mse"] == 0.0)
check("... while on the embedding (stored as Q8_0) Q4_1 has an error",
      error_report(pre.params["wte"][:512], "q4_1")["mse"] > 0)

# %% [markdown]
# INT8 with a scale per row (or per block of 32, Q8_0) sits 10x below the 4-bit formats in RMS
# error; FP8 lies between. Among 8 bits, one scale per tensor is 4x worse than one per row: this
# matrix has a row whose largest weight is 5x the median row's, and per tensor that row sets
# every row's step (lesson 02). FP8 E4M3 per tensor beats INT8 per tensor (its steps shrink near
# 0, where most weights are) but loses to INT8 per row: 3 mantissa bits give a relative error of
# up to 1/16 at every magnitude. For the same reason a scale per row hardly helps FP8: a float's
# relative precision does not depend on the scale, only where its range ends.

# %%
gain_int8 = by["int8, per tensor"]["mse"] / by["int8, per row"]["mse"]
gain_fp8 = by["FP8 E4M3, per tensor"]["mse"] / by["FP8 E4M3, per row"]["mse"]
print(f"MSE per tensor / per row: INT8 {gain_int8:.1f}x, FP8 E4M3 {gain_fp8:.2f}x")
check("per-row scales cut INT8's MSE over 5x but FP8 E4M3's by under 10 %",
      gain_int8 > 5 and gain_fp8 < 1.1)

# %% [markdown]
# ## Where the 16 NF4 codes land
# A code carries information only if it is used. The entropy of the code histogram says how many
# of the 4 bits the codes really use: NF4's normal-shaped grid uses them more evenly than INT4's
# evenly spaced one, whose outer codes hold few weights.

# %%
def entropy_bits(codes) -> float:
    p = np.bincount(np.asarray(codes).reshape(-1).astype(np.int64), minlength=16) / codes.size
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


h_nf4 = entropy_bits(nf4.nf4_indices(nf4.nf4_quantize(w, 64)))
h_int4 = entropy_bits(integer.int4_codes(integer.int4_quantize(w, 64)) + 8)
print(f"entropy of the codes: NF4 {h_nf4:.2f} bits, INT4 {h_int4:.2f} bits (of 4)")
check("NF4 uses its 16 codes more evenly than INT4 (higher entropy)", h_nf4 > h_int4 + 0.2)

# %% [markdown]
# ## The figures
# The histogram of the matrix with each format's values over it (the same drawing as
# docs/figures/quant_grids.png), and the error of every format against its bits.

# %%
draw_quant_grids(OUT / "quant_grids.png", w, f"SmolLM2-135M {MATRIX}: weights and grids")
draw_error_bits(OUT / "quant_error_bits.png", rows, var, f"Every format on {MATRIX}")
print("saved", OUT / "quant_grids.png", "and", OUT / "quant_error_bits.png")
check("both figures written", (OUT / "quant_grids.png").stat().st_size > 10_000
      and (OUT / "quant_error_bits.png").stat().st_size > 10_000)

# %% [markdown]
# ## Exercises
# 1. Append 2.54 to the 8 numbers of the INT8 section and rerun. Predict the scale and the codes
#    before you look (answer: s = 2.54 / 127 = 0.02, twice the step, so every code about halves
#    and the error bound doubles to 0.01; 0.02 becomes the code 1).
# 2. Encode 0.0137 in E4M3 on paper: its binade, the spacing there, n, the code; then compare
#    with the printed line (answer: floor(log2 0.0137) = -7 is below emin = -6, so it is
#    subnormal: spacing 2^-9, n = round(7.01) = 7, code 0x07, value 7/8 x 2^-6 = 0.01367).
# 3. Set `delta = 1 / 32` and rerun: which checks fail? (answer: both NF4 table checks; the top
#    quantile moves from 1.8481 to 1.8627 before the division by the largest level.)
# 4. Set `w = pre.params["h.27.ffn.w1"]` before the table and rerun it: one row of that matrix
#    has a weight 16x the median row's largest. How much worse is INT8 per tensor than per row
#    there? (answer: about 190x in MSE, 14x in RMS error.)
