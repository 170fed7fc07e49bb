"""GGUF's classic block formats Q8_0, Q4_0 and Q4_1, byte for byte as ggml writes them.

ggml cuts every row into blocks of 32 values and stores each block on its own: a float16 scale
(and a float16 minimum for the "_1" formats), then the 32 codes. Bytes of one block (little
endian, as in the file):

    Q8_0  34 bytes  d:f16 | q[0..31]: int8                        w = d * q          8.5 bits/param
    Q4_0  18 bytes  d:f16 | 16 bytes of nibbles                   w = d * (n - 8)    4.5 bits/param
    Q4_1  20 bytes  d:f16 | m:f16 | 16 bytes of nibbles           w = d * n + m      5.0 bits/param

Nibble order of Q4_0/Q4_1: byte j holds element j in its low 4 bits and element j + 16 in its
high 4 bits (the first half of the block in the low nibbles, the second half in the high ones).

How each picks its numbers (ggml's reference quantizers, ggml-quants.c; bit-exactness needs the
same float32 operations in the same order, so they are spelt out):

* Q8_0: d = max|x| / 127; q = roundf(x * (1/d)), rounding halves away from zero (C's roundf).
* Q4_0: take the value M of largest magnitude *with its sign*; d = M / -8, so M itself becomes
  the code -8 exactly and the other side of zero reaches only +7 (16 codes, one extra step on
  the side of the extreme). n = min(15, trunc(x * (1/d) + 8.5)): +8.5 then truncation is
  round-half-up around the offset 8.
* Q4_1: d = (max - min) / 15, m = min; n = min(15, trunc((x - m) * (1/d) + 0.5)).

In all three the codes are computed with the float32 d; only then is d rounded to float16 for
storage (dequantization multiplies the stored float16 d, so a reconstruction error of up to a
float16 ulp of d per code adds to the rounding error). A block of zeros has d = 0 and 1/d taken
as 0: all codes 0 (Q4_0's nibbles 8).

Worked example (Q4_0): a block whose extreme is -1.6 gets d = 0.2; -1.6 -> -8 (nibble 0),
1.4 -> 7 (nibble 15), 0.25 -> trunc(1.25 + 8.5) = 9 -> 0.2 (error 0.05 = d/4). Were the extreme
+1.6, d = -0.2 and the roles swap: +1.6 -> nibble 0 -> (0 - 8) * -0.2 = 1.6.

The `gguf` package (llama.cpp's Python writer) implements the same rules in NumPy;
tests/test_quantization_formats.py checks that these functions give its bytes exactly.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .qtensor import as_float32

BLOCK = 32
TYPE_SIZE = {"q8_0": 34, "q4_0": 18, "q4_1": 20}  # bytes per block of 32 values


def _blocks(w) -> tuple[np.ndarray, tuple[int, ...]]:
    a = as_float32(w)
    if a.ndim == 0 or a.shape[-1] % BLOCK:
        raise UserError(f"GGUF block formats need a last dimension that is a multiple of {BLOCK}, "
                        f"got shape {tuple(a.shape)}.")
    return a.reshape(-1, BLOCK), a.shape


def _out_shape(shape, fmt: str) -> tuple[int, ...]:
    return (*shape[:-1], shape[-1] // BLOCK * TYPE_SIZE[fmt])


def _bytes(data, fmt: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """Raw bytes -> (n_blocks, type_size) and the shape of the values they hold."""
    b = np.asarray(data)
    if b.dtype != np.uint8 or b.ndim == 0 or b.shape[-1] % TYPE_SIZE[fmt]:
        raise UserError(f"{fmt.upper()} data must be uint8 with a last dimension that is a "
                        f"multiple of {TYPE_SIZE[fmt]} bytes, got {b.dtype} {tuple(b.shape)}.")
    shape = (*b.shape[:-1], b.shape[-1] // TYPE_SIZE[fmt] * BLOCK)
    return b.reshape(-1, TYPE_SIZE[fmt]), shape


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d in float32, and 0 where d is 0 (ggml: `id = d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's roundf: to the nearest integer, halves away from zero (2.5 -> 3, -2.5 -> -3). The
    fractional part a - floor(a) is exact in floating point, so the comparison with 0.5 is too
    (floor(a + 0.5) is not: 0.49999997 + 0.5 rounds up to 1.0 in float32)."""
    a = np.abs(v)
    whole = np.floor(a)
    return np.copysign(whole + (a - whole >= 0.5), v)


def _f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).reshape(-1, 1).view(np.uint8)


def _f16_from(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _pack_halves(n: np.ndarray) -> np.ndarray:
    """(n_blocks, 32) nibbles -> (n_blocks, 16) bytes: element j low, element j + 16 high."""
    return n[:, :16] | (n[:, 16:] << np.uint8(4))


def _unpack_halves(b: np.ndarray) -> np.ndarray:
    return np.concatenate([b & np.uint8(0x0F), b >> np.uint8(4)], axis=1)


# ------------------------------------------------------------------ Q8_0
def q8_0_quantize(w) -> np.ndarray:
    """float array (..., n), n a multiple of 32 -> uint8 (..., n / 32 * 34): GGUF's Q8_0."""
    x, shape = _blocks(w)
    d = (np.abs(x).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    q = _round_half_away(x * _inverse(d)).astype(np.int8)
    out = np.concatenate([_f16_bytes(d), q.view(np.uint8)], axis=1)
    return out.reshape(_out_shape(shape, "q8_0"))


def q8_0_dequantize(data) -> np.ndarray:
    """uint8 (..., k * 34) -> float32 (..., k * 32)."""
    b, shape = _bytes(data, "q8_0")
    d = _f16_from(b[:, :2])
    q = np.ascontiguousarray(b[:, 2:]).view(np.int8).astype(np.float32)
    return (q * d).reshape(shape)


# ------------------------------------------------------------------ Q4_0
def q4_0_quantize(w) -> np.ndarray:
    """float array (..., n), n a multiple of 32 -> uint8 (..., n / 32 * 18): GGUF's Q4_0."""
    x, shape = _blocks(w)
    extreme = np.take_along_axis(x, np.abs(x).argmax(axis=1)[:, None], axis=1)  # signed
    d = (extreme / np.float32(-8)).astype(np.float32)
    n = np.minimum(np.trunc(x * _inverse(d) + np.float32(8.5)), 15).astype(np.uint8)
    out = np.concatenate([_f16_bytes(d), _pack_halves(n)], axis=1)
    return out.reshape(_out_shape(shape, "q4_0"))


def q4_0_dequantize(data) -> np.ndarray:
    """uint8 (..., k * 18) -> float32 (..., k * 32)."""
    b, shape = _bytes(data, "q4_0")
    d = _f16_from(b[:, :2])
    q = _unpack_halves(b[:, 2:]).astype(np.float32) - np.float32(8)
    return (d * q).reshape(shape)


# ------------------------------------------------------------------ Q4_1
def q4_1_quantize(w) -> np.ndarray:
    """float array (..., n), n a multiple of 32 -> uint8 (..., n / 32 * 20): GGUF's Q4_1."""
    x, shape = _blocks(w)
    lo = x.min(axis=1, keepdims=True)
    d = ((x.max(axis=1, keepdims=True) - lo) / np.float32(15)).astype(np.float32)
    n = np.minimum(np.trunc((x - lo) * _inverse(d) + np.float32(0.5)), 15).astype(np.uint8)
    out = np.concatenate([_f16_bytes(d), _f16_bytes(lo), _pack_halves(n)], axis=1)
    return out.reshape(_out_shape(shape, "q4_1"))


def q4_1_dequantize(data) -> np.ndarray:
    """uint8 (..., k * 20) -> float32 (..., k * 32)."""
    b, shape = _bytes(data, "q4_1")
    d, m = _f16_from(b[:, :2]), _f16_from(b[:, 2:4])
    n = _unpack_halves(b[:, 4:]).astype(np.float32)
    return (d * n + m).reshape(shape)


QUANTIZE = {"q8_0": q8_0_quantize, "q4_0": q4_0_quantize, "q4_1": q4_1_quantize}
DEQUANTIZE = {"q8_0": q8_0_dequantize, "q4_0": q4_0_dequantize, "q4_1": q4_1_dequantize}
