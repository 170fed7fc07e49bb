"""One container for every quantized tensor: the codes, the scales and whatever else a format
keeps, so that the bytes a format costs are counted the same way for all of them.

    QTensor(fmt="int8", shape=(2, 3), codes=int8 (2, 3), scales=float32 (2, 1))
    .nbytes = 6 codes + 2 * 4 bytes of scales = 14 bytes for 6 parameters: 18.7 bits/param

(a 2 x 3 matrix is all overhead; at 4096 x 4096 the same per-row scales cost 0.008 bits/param.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import UserError


@dataclass
class QTensor:
    """A quantized tensor. `codes` are the small integers (packed where the format packs them),
    `scales` the floats they are multiplied by, `zeros` the zero points of asymmetric formats;
    `extra` holds anything else: more arrays (counted in `nbytes`) or settings (group size)."""

    fmt: str
    shape: tuple[int, ...]
    codes: np.ndarray
    scales: np.ndarray
    zeros: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        arrays = [self.codes, self.scales, self.zeros, *self.extra.values()]
        return int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))

    @property
    def bits_per_param(self) -> float:
        return 8.0 * self.nbytes / max(int(np.prod(self.shape)), 1)


def as_float32(w, name: str = "the tensor") -> np.ndarray:
    """`w` as a finite float32 array, or one sentence saying why it cannot be quantized."""
    a = np.asarray(w)
    if a.dtype.kind not in "fiu":
        raise UserError(f"{name} has dtype {a.dtype}; quantization takes real numbers.")
    if a.size == 0:
        raise UserError(f"{name} is empty; there is nothing to quantize.")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise UserError(f"{name} holds inf or NaN; scales computed from it would be meaningless.")
    return a


def require_2d(w: np.ndarray, what: str) -> None:
    if w.ndim != 2:
        raise UserError(f"{what} needs a 2-D (out_features, in_features) weight, "
                        f"got shape {tuple(w.shape)}.")


def require_qtensor(q, fmt: str) -> None:
    if not isinstance(q, QTensor) or q.fmt != fmt:
        got = q.fmt if isinstance(q, QTensor) else type(q).__name__
        raise UserError(f"this dequantizer reads '{fmt}' tensors, got {got}.")
