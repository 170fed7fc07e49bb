"""16-bit floats: bfloat16 and IEEE half (float16), the formats models are usually shipped in.

Neither has a scale: each weight is stored alone as a 16-bit float, 2 bytes per parameter.

float16 (IEEE 754 half): 1 sign, 5 exponent, 10 mantissa bits. Precise (a step of 2^-10
relative) but a narrow range: the largest finite value is 65504, and values below 6.1e-5 lose
bits as subnormals (below 6e-8 they become 0). Weights fit; activations can overflow. Here it is
NumPy's float16 cast (round to nearest even, overflow to inf), which is PyTorch's `.half()`.

bfloat16 ("brain float"): 1 sign, 8 exponent, 7 mantissa bits: float32's range with fewer
mantissa bits (a step of 2^-7 relative, ~3 significant digits). It is literally the top 16 bits
of a float32, so it is written here by hand on the bits. Rounding to nearest, ties to even:

    u = the float32's bits as uint32
    bf16 = (u + 0x7FFF + ((u >> 16) & 1)) >> 16

Adding 0x7FFF carries into bit 16 exactly when the low 16 bits are above half (0x8000); at
exactly half, the extra +1 carries only when bit 16 (the last kept bit) is 1, so the result is
even. A carry out of the mantissa moves the exponent up, which is correct rounding, and rounding
past the largest finite bf16 gives the bits of inf. Decoding is the shift back: bits << 16.
Example: 1.00390625 = 0x3F808000 is halfway between 0x3F80 (1.0) and 0x3F81 (1.0078125); bit 16
is 0, so it rounds to 0x3F80 = 1.0 (even). PyTorch's `.to(torch.bfloat16)` does the same
(c10/util/BFloat16.h, round_to_nearest_even), checked in tests/test_quant_table.py.

Inputs are finite (as_float32), so the NaN case of PyTorch's cast never arises here.
"""

from __future__ import annotations

import numpy as np

from .qtensor import QTensor, as_float32, require_qtensor

_NO_SCALES = np.zeros(0, dtype=np.float32)


def bf16_bits(w) -> np.ndarray:
    """float32 values -> bfloat16 bit patterns (uint16), rounded to nearest, ties to even."""
    u = np.ascontiguousarray(w, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_values(bits) -> np.ndarray:
    """bfloat16 bit patterns -> their float32 values (exact: the low 16 bits are zero)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16_quantize(w) -> QTensor:
    """Each weight as the bfloat16 nearest to it: uint16 codes, no scales (2 bytes/param)."""
    w = as_float32(w)
    return QTensor("bf16", w.shape, bf16_bits(w), _NO_SCALES)


def bf16_dequantize(q: QTensor) -> np.ndarray:
    require_qtensor(q, "bf16")
    return bf16_values(q.codes).reshape(q.shape)


def fp16_quantize(w) -> QTensor:
    """Each weight as the nearest IEEE half (NumPy's float16 cast; beyond 65504: inf), its bits
    kept as uint16 codes, no scales (2 bytes/param)."""
    w = as_float32(w)
    with np.errstate(over="ignore"):
        half = w.astype(np.float16)
    return QTensor("fp16", w.shape, half.view(np.uint16), _NO_SCALES)


def fp16_dequantize(q: QTensor) -> np.ndarray:
    require_qtensor(q, "fp16")
    return np.asarray(q.codes, dtype=np.uint16).view(np.float16).astype(np.float32).reshape(q.shape)
