"""NF4, the 4-bit NormalFloat of QLoRA (Dettmers et al. 2023), and its double quantization.

The idea. Trained weights are close to normally distributed, and a block of them divided by its
absmax lies in [-1, 1]. A 4-bit code has 16 values; put them where the data is dense, at the
quantiles of N(0, 1), rather than evenly spaced (INT4), so that each code is used about as often.

The codebook (QLoRA, section 3 and appendix; bitsandbytes' `create_normal_map`). Zero must be
exact (padding, zero-initialised weights), which an even count of symmetric quantiles cannot
give; so the two halves are built separately, 8 levels for the positive side and 7 for the
negative, plus 0:

    positive:  Phi^-1(p) for p = linspace(1 - delta, 1/2, 9), the last (p = 1/2, 0) dropped
    negative: -Phi^-1(p) for p = linspace(1 - delta, 1/2, 8), the last dropped
    delta = (1/30 + 1/32) / 2: Phi^-1(1) is infinite, so the outermost level sits at the
            quantile 1 - delta (0.9677083 in bitsandbytes), halfway between the 1/(2*15) and
            1/(2*16) tail masses of the 15- and 16-level grids
    all 16 divided by the largest, so the range is exactly [-1, 1].

This gives bitsandbytes' published table (functional.py, and QLoRA's appendix E), to ~1e-7:

    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0

Quantization: blocks of 64 consecutive values (of the flattened tensor), absmax c per block,
each x / c replaced by the index of the nearest code (the first when exactly halfway); codes
packed two per byte (element 2i low nibble). Dequantization: codebook[index] * c. Error: x / c
lies between two neighbouring codes, so |x - x'| <= c * (gap between them) / 2.
Example: block absmax 2.0, x = 0.5 -> 0.25, between 0.2461 and 0.3379, nearest 0.2461 ->
x' = 0.4922.

Double quantization. The constants cost 32 bits per 64 weights, 0.5 bits/param on top of 4.
QLoRA quantizes them too: subtract their mean (they are all positive, so centring them doubles
the resolution of a symmetric 8-bit grid), then quantize in blocks of 256 to 8 bits, keeping one
float32 scale per 256 constants:

    without:  32 / 64                     = 0.5     bits/param  (4.5 in all)
    with:      8 / 64 + 32 / (64 * 256)   = 0.127   bits/param  (4.127 in all), plus 4 bytes of mean

The paper (and bitsandbytes) use an 8-bit *float* code for the second level; this module uses
symmetric absmax INT8 (integer.py's scheme) on the centred constants, which costs exactly the
same bytes and is simpler to read.
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from ..errors import UserError
from .integer import pack_nibbles, unpack_nibbles
from .qtensor import QTensor, as_float32, require_qtensor

NF4_DELTA = (1 / 30 + 1 / 32) / 2
# bitsandbytes' NF4 table, as published (bitsandbytes/functional.py; QLoRA appendix E)
NF4_PUBLISHED = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def nf4_codebook() -> np.ndarray:
    """The 16 NF4 levels from their definition (quantiles of N(0, 1)), ascending, float32."""
    ppf = NormalDist().inv_cdf
    top = 1 - NF4_DELTA
    positive = [ppf(p) for p in np.linspace(top, 0.5, 9)[:-1]]
    negative = [-ppf(p) for p in np.linspace(top, 0.5, 8)[:-1]]
    levels = np.sort(np.array(positive + [0.0] + negative))
    return (levels / levels.max()).astype(np.float32)


NF4 = nf4_codebook()


def nf4_bits_per_param(block_size: int = 64, double_quant: bool = False,
                       dq_block_size: int = 256) -> float:
    """4 bits of code + the scales' share: 32 / block (float32 absmax), or with double
    quantization 8 / block + 32 / (block * dq_block). The one mean per tensor is left out."""
    scales = 8 / block_size + 32 / (block_size * dq_block_size) if double_quant else 32 / block_size
    return 4 + scales


def _blocked(x: np.ndarray, size: int) -> np.ndarray:
    """Flatten and zero-pad to a multiple of `size`, as rows of `size`."""
    flat = x.reshape(-1)
    pad = -flat.size % size
    return np.concatenate([flat, np.zeros(pad, flat.dtype)]).reshape(-1, size)


def nearest_code(y: np.ndarray, codebook: np.ndarray = NF4) -> np.ndarray:
    """Index of the nearest level for each y in [-1, 1] (exact midpoints go to the lower one)."""
    midpoints = (codebook[:-1] + codebook[1:]) / 2
    return np.searchsorted(midpoints, y, side="left").astype(np.uint8)


def _quantize_constants(c: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Double quantization: (int8 codes, float32 scale per `block`, float32 mean)."""
    mean = np.array([c.mean()], dtype=np.float32)
    centred = _blocked(c - mean, block)
    scale = (np.abs(centred).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)
    q = np.clip(np.rint(centred / safe), -127, 127).astype(np.int8)
    return q.reshape(-1)[: c.size], scale.reshape(-1), mean


def _constants(q: QTensor) -> np.ndarray:
    """The per-block absmax of `q`, dequantized from the second level if there is one."""
    if not q.extra["double_quant"]:
        return q.scales
    n, block = q.scales.size, q.extra["dq_block_size"]
    s2 = np.repeat(q.extra["dq_scales"], block)[:n]
    return q.scales.astype(np.float32) * s2 + q.extra["dq_mean"]


def nf4_quantize(w, block_size: int = 64, double_quant: bool = False,
                 dq_block_size: int = 256) -> QTensor:
    """Blockwise NF4: packed 4-bit indices into `NF4`, one absmax per `block_size` values of
    the flattened tensor (float32; or int8 + a float32 scale per `dq_block_size` constants and
    one float32 mean with `double_quant`)."""
    if block_size <= 0 or block_size % 2 or dq_block_size <= 0:
        raise UserError(f"NF4 needs an even, positive block size, got {block_size} "
                        f"(second level {dq_block_size}).")
    w = as_float32(w)
    blocks = _blocked(w, block_size)
    absmax = np.abs(blocks).max(axis=1).astype(np.float32)
    safe = np.where(absmax == 0, np.float32(1), absmax)
    idx = nearest_code(blocks / safe[:, None])
    extra = {"block_size": block_size, "double_quant": double_quant}
    if not double_quant:
        return QTensor("nf4", w.shape, pack_nibbles(idx), absmax, extra=extra)
    q2, s2, mean = _quantize_constants(absmax, dq_block_size)
    extra.update(dq_scales=s2, dq_mean=mean, dq_block_size=dq_block_size)
    return QTensor("nf4", w.shape, pack_nibbles(idx), q2, extra=extra)


def nf4_dequantize(q: QTensor) -> np.ndarray:
    require_qtensor(q, "nf4")
    block = q.extra["block_size"]
    idx = unpack_nibbles(q.codes).reshape(-1, block)
    values = NF4[idx] * _constants(q)[:, None]
    return values.reshape(-1)[: int(np.prod(q.shape))].reshape(q.shape)


def nf4_indices(q: QTensor) -> np.ndarray:
    """The unpacked code indices of `q`, one per (padded) value, as rows of `block_size`."""
    require_qtensor(q, "nf4")
    return unpack_nibbles(q.codes).reshape(-1, q.extra["block_size"])
