"""Every format by name, and one measure to compare them: error and bytes.

    FORMATS[name] = (quantize(w, **options) -> QTensor, dequantize(QTensor) -> float32 array)

    bf16 fp16   16-bit floats, no scale       (bfloat16 by hand on the bits; IEEE half)
    int8        symmetric absmax INT8        per_channel=False
    int8_asym   INT8 with a zero point       per_channel=False
    int4        group-wise INT4, packed      group_size=64 (32, 64 or 128)
    q8_0 q4_0 q4_1   GGUF blocks of 32       (scales inside the bytes: `codes` is the GGUF data)
    nf4         QLoRA's NormalFloat4         block_size=64, double_quant=False, dq_block_size=256
    fp8_e4m3 fp8_e5m2   scaled FP8           per_channel=False

`error_report(w, name, **options)` quantizes and dequantizes once and returns the mean squared
error, the largest absolute error and the bytes (codes + scales + zero points + anything else
stored), with bits/param = 8 * bytes / numel. For a 4096 x 4096 matrix of N(0, 0.02) weights, the
bits come out 16 (bf16, fp16), about 8.008 (int8 per row), 8.5 (q8_0), 4.5 (q4_0, int4 at
g = 64, nf4) and 4.127 (nf4 + double quantization); the errors say what those bits buy.
"""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np

from ..errors import UserError
from . import floats, fp8, gguf_blocks, integer, nf4
from .qtensor import QTensor, as_float32, require_qtensor


def _gguf(name: str):
    def quantize(w) -> QTensor:
        w = as_float32(w)
        return QTensor(name, w.shape, gguf_blocks.QUANTIZE[name](w), np.zeros(0, np.float32))

    def dequantize(q: QTensor) -> np.ndarray:
        require_qtensor(q, name)
        return gguf_blocks.DEQUANTIZE[name](q.codes)

    quantize.__name__, dequantize.__name__ = f"{name}_quantize", f"{name}_dequantize"
    return quantize, dequantize


FORMATS = {
    "bf16": (floats.bf16_quantize, floats.bf16_dequantize),
    "fp16": (floats.fp16_quantize, floats.fp16_dequantize),
    "int8": (integer.int8_quantize, integer.int8_dequantize),
    "int8_asym": (integer.int8_asym_quantize, integer.int8_asym_dequantize),
    "int4": (integer.int4_quantize, integer.int4_dequantize),
    "q8_0": _gguf("q8_0"),
    "q4_0": _gguf("q4_0"),
    "q4_1": _gguf("q4_1"),
    "nf4": (nf4.nf4_quantize, nf4.nf4_dequantize),
    "fp8_e4m3": (partial(fp8.fp8_quantize, fmt="e4m3"), fp8.fp8_dequantize),
    "fp8_e5m2": (partial(fp8.fp8_quantize, fmt="e5m2"), fp8.fp8_dequantize),
}


def get_format(name: str):
    """(quantize, dequantize) of a format name, or one sentence listing the known ones."""
    if name not in FORMATS:
        raise UserError(f"unknown quantization format '{name}'; choose one of "
                        f"{', '.join(FORMATS)}.")
    return FORMATS[name]


def quantize(w, fmt: str, **options) -> QTensor:
    """Quantize `w` in the format named `fmt`; unknown options are one sentence, not a TypeError."""
    fn = get_format(fmt)[0]
    try:
        inspect.signature(fn).bind(w, **options)
    except TypeError:
        params = [p for p in inspect.signature(fn).parameters if p not in ("w", "fmt")]
        raise UserError(f"format '{fmt}' takes the options {params or 'none'}, "
                        f"got {sorted(options)}.") from None
    return fn(w, **options)


def dequantize(q: QTensor) -> np.ndarray:
    if not isinstance(q, QTensor):
        raise UserError(f"dequantize takes a QTensor, got {type(q).__name__}.")
    return get_format(q.fmt)[1](q)


def error_report(w, fmt: str, **options) -> dict:
    """Round trip `w` through `fmt`: {format, mse, max_abs, bytes, bits_per_param}."""
    w = as_float32(w)
    q = quantize(w, fmt, **options)
    err = dequantize(q).astype(np.float64) - w
    return {"format": fmt, "mse": float(np.mean(err ** 2)), "max_abs": float(np.abs(err).max()),
            "bytes": q.nbytes, "bits_per_param": q.bits_per_param}
