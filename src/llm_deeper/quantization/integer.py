"""Integer quantization: a float tensor as small integers times a float scale.

Symmetric (absmax) INT8. Pick the scale s so that the largest |w| lands on the largest code:

    s = max|w| / 127          q = round(w / s) in [-127, 127]          w' = q * s

Rounding to the nearest integer moves a value by at most half a step, so |w - w'| <= s / 2 for
every element. Worked example, w = [0.5, -1.27, 0.02]: s = 1.27 / 127 = 0.01, q = [50, -127, 2],
w' = w exactly; 0.503 would give q = 50 and an error of 0.003 <= 0.005. The code -128 is left
unused so that the grid is symmetric: -w quantizes to -q.

Per tensor or per channel. One outlier sets the step of everything that shares its scale: in a
(out, in) weight whose row 0 holds a 100.0 and the other rows values near 0.01, one per-tensor
scale (100 / 127 = 0.79) rounds every small value to 0. One scale per output channel (per row:
each row is one output's dot product, so its scale can be applied after the product) confines
the damage to row 0, for 4 bytes per row.

Asymmetric (zero point) INT8. A range [lo, hi] that is not centred on 0 (ReLU outputs, a row
of positive numbers) wastes half of a symmetric grid. Use all 256 uint8 codes on it instead:

    s = (hi - lo) / 255       z = round(-lo / s)       q = clip(round(w / s) + z, 0, 255)
    w' = (q - z) * s

with the range widened to include 0 first (lo <= 0 <= hi), so that 0.0 is exactly the code z
(padding and ReLU zeros stay exact). Example: w in [-0.1, 2.45]: s = 0.01, z = 10, 2.45 -> 255,
-0.1 -> 0, 0.0 -> 10. The error bound is still s / 2: the grid's ends lie within s / 2 of lo, hi.

Group-wise INT4. Sixteen codes are too few for one scale per row of 4096 numbers, so the scale is
shared by a *group* of g = 32, 64 or 128 consecutive inputs of a row (GPTQ/AWQ-style):

    s_g = max|w_g| / 7        q = round(w / s_g) in [-7, 7]           w' = q * s_g

The codes use [-7, 7] (symmetric; -8 unused, as in INT8 above). Two codes share a byte, each
stored as the nibble q + 8 in [1, 15]: element 2i in the low 4 bits, element 2i + 1 in the high
4 bits. Cost: 4 bits + 32 / g bits of scale, 4.5 bits/param at g = 64 (float32 scales).

Rounding is NumPy's `rint`, half to even (2.5 -> 2, 3.5 -> 4); either choice keeps the s / 2 bound.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .qtensor import QTensor, as_float32, require_2d, require_qtensor

GROUP_SIZES = (32, 64, 128)


def _safe(scale: np.ndarray) -> np.ndarray:
    """The scale to divide by: an all-zero row or group has scale 0 and codes 0."""
    return np.where(scale == 0, np.float32(1), scale).astype(np.float32)


def _absmax(w: np.ndarray, per_channel: bool, what: str) -> np.ndarray:
    if per_channel:
        require_2d(w, f"per-channel {what}")
        return np.abs(w).max(axis=1, keepdims=True)
    return np.abs(w).max().reshape(1)


# ------------------------------------------------------------------ symmetric INT8
def int8_quantize(w, per_channel: bool = False) -> QTensor:
    """Symmetric absmax INT8: int8 codes in [-127, 127], float32 scale(s) max|w| / 127 (one, or
    one per row of a 2-D weight when `per_channel`)."""
    w = as_float32(w)
    scale = (_absmax(w, per_channel, "INT8") / np.float32(127)).astype(np.float32)
    q = np.clip(np.rint(w / _safe(scale)), -127, 127).astype(np.int8)
    return QTensor("int8", w.shape, q, scale, extra={"per_channel": per_channel})


def int8_dequantize(q: QTensor) -> np.ndarray:
    require_qtensor(q, "int8")
    return q.codes.astype(np.float32) * q.scales


# ------------------------------------------------------------------ asymmetric INT8
def int8_asym_quantize(w, per_channel: bool = False) -> QTensor:
    """Asymmetric INT8: uint8 codes in [0, 255], a float32 scale (hi - lo) / 255 and a uint8
    zero point z (the code of 0.0), per tensor or per row."""
    w = as_float32(w)
    if per_channel:
        require_2d(w, "per-channel asymmetric INT8")
        lo, hi = w.min(axis=1, keepdims=True), w.max(axis=1, keepdims=True)
    else:
        lo, hi = w.min().reshape(1), w.max().reshape(1)
    lo, hi = np.minimum(lo, 0), np.maximum(hi, 0)
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    zero = np.clip(np.rint(-lo / _safe(scale)), 0, 255)
    q = np.clip(np.rint(w / _safe(scale)) + zero, 0, 255).astype(np.uint8)
    return QTensor("int8_asym", w.shape, q, scale, zeros=zero.astype(np.uint8),
                   extra={"per_channel": per_channel})


def int8_asym_dequantize(q: QTensor) -> np.ndarray:
    require_qtensor(q, "int8_asym")
    return (q.codes.astype(np.float32) - q.zeros.astype(np.float32)) * q.scales


# ------------------------------------------------------------------ INT4 nibbles
def pack_nibbles(nibbles) -> np.ndarray:
    """Unsigned 4-bit values in [0, 15] (an even count) -> bytes: element 2i in the low 4 bits
    of byte i, element 2i + 1 in the high 4 bits."""
    n = np.asarray(nibbles).reshape(-1)
    if n.size % 2:
        raise UserError(f"packing 4-bit codes needs an even count, got {n.size}.")
    if n.size and (n.min() < 0 or n.max() > 15):
        raise UserError("4-bit values to pack must lie in [0, 15].")
    n = n.astype(np.uint8)
    return n[0::2] | (n[1::2] << np.uint8(4))


def unpack_nibbles(packed) -> np.ndarray:
    """The inverse of `pack_nibbles`: bytes -> uint8 values in [0, 15], twice as many."""
    b = np.asarray(packed, dtype=np.uint8).reshape(-1)
    out = np.empty(2 * b.size, dtype=np.uint8)
    out[0::2], out[1::2] = b & np.uint8(0x0F), b >> np.uint8(4)
    return out


def pack_int4(codes) -> np.ndarray:
    """Signed 4-bit codes in [-8, 7] (an even count) -> bytes, each code as the nibble q + 8.
    [-7, 3, 0, 7] -> [0xB1, 0xF8]: byte 0 = (3 + 8) << 4 | (-7 + 8), byte 1 = (7 + 8) << 4 | 8."""
    c = np.asarray(codes).reshape(-1)
    if c.size and (c.min() < -8 or c.max() > 7):
        raise UserError("signed 4-bit codes must lie in [-8, 7].")
    return pack_nibbles(c.astype(np.int16) + 8)


def unpack_int4(packed) -> np.ndarray:
    """The inverse of `pack_int4`: bytes -> int8 codes in [-8, 7], twice as many."""
    return unpack_nibbles(packed).astype(np.int8) - np.int8(8)


# ------------------------------------------------------------------ group-wise INT4
def _groups(w: np.ndarray, group_size: int) -> np.ndarray:
    require_2d(w, "group-wise INT4")
    if group_size not in GROUP_SIZES:
        raise UserError(f"INT4 group size {group_size} is not one of {list(GROUP_SIZES)}.")
    if w.shape[1] % group_size:
        raise UserError(f"INT4 group size {group_size} does not divide the row length "
                        f"{w.shape[1]}; pick a group size that does.")
    return w.reshape(w.shape[0], w.shape[1] // group_size, group_size)


def int4_quantize(w, group_size: int = 64) -> QTensor:
    """Group-wise symmetric INT4 along the input dimension of a 2-D (out, in) weight: codes in
    [-7, 7] packed two per byte, one float32 scale max|w_g| / 7 per group (shape (out, in/g))."""
    w = as_float32(w)
    g = _groups(w, group_size)
    scale = (np.abs(g).max(axis=2) / np.float32(7)).astype(np.float32)
    q = np.clip(np.rint(g / _safe(scale)[..., None]), -7, 7).astype(np.int8)
    return QTensor("int4", w.shape, pack_int4(q), scale, extra={"group_size": group_size})


def int4_dequantize(q: QTensor) -> np.ndarray:
    require_qtensor(q, "int4")
    out_f, in_f = q.shape
    g = q.extra["group_size"]
    codes = unpack_int4(q.codes).reshape(out_f, in_f // g, g).astype(np.float32)
    return (codes * q.scales[..., None]).reshape(out_f, in_f)


def int4_codes(q: QTensor) -> np.ndarray:
    """The unpacked INT4 codes of `q`, shaped like the weight (for inspection and tests)."""
    require_qtensor(q, "int4")
    return unpack_int4(q.codes).reshape(q.shape)
