"""FP8: 8-bit floating point, E4M3 and E5M2, encoded and decoded bit by bit.

A float is sign, exponent and mantissa. With E exponent bits, M mantissa bits and bias b, the
byte  s | e (E bits) | f (M bits)  means

    e > 0:  (-1)^s * (1 + f / 2^M) * 2^(e - b)        normal
    e = 0:  (-1)^s * (f / 2^M) * 2^(1 - b)            subnormal (and +-0): evenly spaced near 0

Two formats (Micikevicius et al. 2022, "FP8 Formats for Deep Learning"; the OCP 8-bit spec):

    E4M3 ("fn": finite, NaN)  b = 7,  no infinities; only s.1111.111 is NaN, so the top
                              exponent still holds 7 numbers: max = 1.75 * 2^8 = 448;
                              smallest subnormal 2^-9. More precision: weights, activations.
    E5M2 (IEEE-like)          b = 15, e = 31 is inf (f = 0) or NaN (f != 0), as in float16
                              (E5M2 is float16's top byte): max = 1.75 * 2^15 = 57344;
                              smallest subnormal 2^-16. More range: gradients.

Worked example, E4M3: 0x2A = 0 0101 010 -> e = 5, f = 2 -> 1.25 * 2^(5 - 7) = 0.3125;
0x7E = 0 1111 110 -> 1.75 * 2^8 = 448; 0x01 -> (1/8) * 2^-6 = 2^-9.

Encoding (round to nearest, ties to even). For |x| > 0 let k = max(floor(log2 |x|), 1 - b), the
exponent of x's binade, clamped at the subnormal one. There the spacing is 2^(k - M), so

    n = round_half_even(|x| / 2^(k - M))          code = (k - (1 - b)) * 2^M + n

In a normal binade n lies in [2^M, 2^(M+1)], the leading 1 included; the formula adds it to the
exponent field for free, and n = 2^(M+1) (rounding up out of the binade) carries into the next
exponent, as it should. In the subnormal range k = 1 - b and the code is n itself. Example:
0.3 -> k = -2, spacing 2^-5, n = round(9.6) = 10, code = 4 * 8 + 10 = 42 = 0x2A (0.3125).
Everything is exact in float64 (scaling by a power of two, then rint), so ties are real ties.

Overflow: a code above the largest finite one. Two conventions (OCP: "saturating" or not):
saturate -> +-max; otherwise E4M3 -> NaN (it has no inf) and E5M2 -> +-inf. What PyTorch does
(measured with torch 2.15 on CPU, `x.to(torch.float8_*)`; its c10 headers say the same):

    float8_e4m3fn  saturates: 1e6 -> 448, inf -> 448 (so `saturate=None` means True for E4M3;
                   some older PyTorch releases gave NaN instead, which is `saturate=False`)
    float8_e5m2    does not: 61440 (halfway to 65536) and above -> inf, inf -> inf
    NaN            -> 0x7F with the sign bit of the input, in both formats

`encode(x, fmt, saturate=None)` follows PyTorch; pass `saturate=True` to clamp every overflow
(inf included) to +-max, `False` for NaN (E4M3) / inf (E5M2). NaN stays NaN either way.

Scaled FP8. 448 is small; a weight tensor is first divided by a scale s = max|w| / max_fp8 (one
per tensor, or one per output row), then encoded saturating: w' = decode(code) * s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from .qtensor import QTensor, as_float32, require_2d, require_qtensor


@dataclass(frozen=True)
class FP8Format:
    name: str
    ebits: int
    mbits: int
    bias: int
    max: float           # the largest finite value
    max_code: int        # its byte, sign bit clear
    has_inf: bool
    torch_saturates: bool  # what x.to(torch.float8_*) does on overflow

    @property
    def emin(self) -> int:
        """The exponent of the smallest normal number, which subnormals share."""
        return 1 - self.bias


E4M3 = FP8Format("e4m3", 4, 3, 7, 448.0, 0x7E, has_inf=False, torch_saturates=True)
E5M2 = FP8Format("e5m2", 5, 2, 15, 57344.0, 0x7B, has_inf=True, torch_saturates=False)
FP8_FORMATS = {"e4m3": E4M3, "e5m2": E5M2}
NAN_CODE = 0x7F  # both formats; OR the sign bit in for a negative NaN


def fp8_format(fmt: str | FP8Format) -> FP8Format:
    if isinstance(fmt, FP8Format):
        return fmt
    if fmt not in FP8_FORMATS:
        raise UserError(f"unknown FP8 format '{fmt}'; choose one of {', '.join(FP8_FORMATS)}.")
    return FP8_FORMATS[fmt]


def decode(codes, fmt: str | FP8Format = "e4m3") -> np.ndarray:
    """uint8 codes -> float32 values, from the sign, exponent and mantissa fields."""
    f = fp8_format(fmt)
    c = np.asarray(codes, dtype=np.uint8).astype(np.int64)
    sign = c >> 7
    e = (c >> f.mbits) & ((1 << f.ebits) - 1)
    m = c & ((1 << f.mbits) - 1)
    subnormal = np.ldexp(m.astype(np.float64), f.emin - f.mbits)
    normal = np.ldexp((m + (1 << f.mbits)).astype(np.float64), e - f.bias - f.mbits)
    mag = np.where(e == 0, subnormal, normal)
    top = e == (1 << f.ebits) - 1
    if f.has_inf:
        mag = np.where(top, np.where(m == 0, np.inf, np.nan), mag)
    else:
        mag = np.where(top & (m == (1 << f.mbits) - 1), np.nan, mag)
    return np.where(sign == 1, -mag, mag).astype(np.float32)


def encode(x, fmt: str | FP8Format = "e4m3", saturate: bool | None = None) -> np.ndarray:
    """float32 values -> uint8 codes, round to nearest even. `saturate`: None as PyTorch does
    (E4M3 saturates, E5M2 overflows to inf), True clamps to +-max, False gives NaN/inf."""
    f = fp8_format(fmt)
    sat = f.torch_saturates if saturate is None else saturate
    x = np.asarray(x, dtype=np.float32)
    with np.errstate(invalid="ignore"):  # signalling NaN bit patterns
        a = np.abs(x).astype(np.float64)
    finite = np.isfinite(a)
    a_fin = np.where(finite, a, 0.0)
    _, e2 = np.frexp(a_fin)                      # a = frac * 2^e2, frac in [0.5, 1)
    k = np.maximum(e2.astype(np.int64) - 1, f.emin)  # floor(log2 a), clamped to subnormals
    k = np.where(a_fin == 0, f.emin, k)          # 0 is the subnormal n = 0
    n = np.rint(np.ldexp(a_fin, f.mbits - k)).astype(np.int64)
    code = ((k - f.emin) << f.mbits) + n
    overflow = (code > f.max_code) | np.isinf(a)
    inf_code = ((1 << f.ebits) - 1) << f.mbits
    code = np.where(overflow, f.max_code if sat else (inf_code if f.has_inf else NAN_CODE), code)
    code = np.where(np.isnan(a), NAN_CODE, code)
    sign = np.signbit(x).astype(np.int64) << 7
    return (code | sign).astype(np.uint8)


def fp8_quantize(w, fmt: str | FP8Format = "e4m3", per_channel: bool = False) -> QTensor:
    """Scaled FP8: s = max|w| / max_fp8 per tensor (or per row of a 2-D weight), codes =
    encode(w / s, saturating)."""
    f = fp8_format(fmt)
    w = as_float32(w)
    if per_channel:
        require_2d(w, f"per-channel FP8 {f.name.upper()}")
        absmax = np.abs(w).max(axis=1, keepdims=True)
    else:
        absmax = np.abs(w).max().reshape(1)
    scale = (absmax / np.float32(f.max)).astype(np.float32)
    safe = np.where(scale == 0, np.float32(1), scale)
    codes = encode(w / safe, f, saturate=True)
    return QTensor(f"fp8_{f.name}", w.shape, codes, scale, extra={"per_channel": per_channel})


def fp8_dequantize(q: QTensor) -> np.ndarray:
    """decode(codes) * scale, in the format the tensor was quantized to."""
    fmt = getattr(q, "fmt", "")
    require_qtensor(q, fmt if fmt in ("fp8_e4m3", "fp8_e5m2") else "fp8_e4m3 or fp8_e5m2")
    return decode(q.codes, fmt.removeprefix("fp8_")) * q.scales
