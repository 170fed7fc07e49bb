"""GPTQ: quantize a linear layer's weight so that its *outputs* move least, not its weights.

Round-to-nearest (integer.int4_quantize) treats every weight alone. But a layer computes
y = x W^T, and what matters is the output error on the inputs the layer really sees. For one row
w of W (one output) and calibration inputs X (n, in), a change dw = w' - w costs

    E(dw) = ||X dw^T||^2 / n = dw (X^T X / n) dw^T = 1/2 * dw H dw^T,      H = 2 X^T X / n

and the rows are independent (every row shares the same H), so ||X W^T - X Q^T||_F^2 / n is the
sum over rows of this quadratic. H is the Hessian of the layer-wise loss. When the inputs are
correlated, H has large off-diagonal entries: an error in weight q can be *cancelled* by moving
the other weights that see correlated inputs. That is the Optimal Brain Surgeon step (Hassibi &
Stork 1993) that GPTQ (Frantar et al. 2022) applies column by column:

    quantize w_q to quant(w_q); with e = w_q - quant(w_q), move the not-yet-quantized weights F by
        delta_F = -e / [H_F^-1]_qq * [H_F^-1]_{F,q}     (dw H dw^T then rises by e^2 / [H_F^-1]_qq)

where H_F is H restricted to the columns still free (q and those after it): this delta minimises
E over the free weights given that w_q is now fixed. Quantized columns never move again.

Worked example (a grid of integers, scale 1). H = [[2, 1], [1, 2]], H^-1 = [[2, -1], [-1, 2]] / 3,
w = (1.4, 0.35). Round-to-nearest gives (1, 0): dw = (-0.4, -0.35), cost dw H dw^T = 0.32 + 0.28
+ 0.245 = 0.845. GPTQ rounds w_0 to 1 (e = 0.4) and moves w_1 by -0.4 / (2/3) * (-1/3) = +0.2 to
0.55 (cost so far 0.16 / (2/3) = 0.24), which rounds to 1: dw = (-0.4, 0.65), cost 0.32 - 0.52
+ 0.845 = 0.645. The second weight is rounded the "wrong" way on purpose: its input is correlated
with the first's, so its error partly cancels the first one's.

The inverse Hessian of the free columns, for every q, in one factorisation. Removing column q
from F is one step of Gaussian elimination on H^-1. All of those steps at once are the Cholesky
factorisation H^-1 = U^T U (U upper triangular): with V = U^-1, H = V V^T, and V being upper,
H_F = V_FF V_FF^T, so H_F^-1 = U_FF^T U_FF, whose first row is U_qq * U_{q,F}. Hence

    delta_F = -(e / U_qq) * U_{q,F}          (row q of U is all the step needs)

Dampening. With few samples or dead inputs H is singular; damp * mean(diag H) is added to its
diagonal (1 % by default), which also keeps the updates small. An input that is zero in every
sample (diag H = 0) cannot affect the loss: it gets diag mean(diag H) and no coupling, so it is
rounded to nearest and neither receives nor spreads error (the reference implementation zeroes
such weights instead; we keep them for inputs the calibration set did not show).

Groups. The output is the INT4 format of integer.py: codes in [-qmax, qmax] (qmax = 7 at 4 bits),
one float32 scale max|w_g| / qmax per row and group of g consecutive inputs, so `int4_dequantize`
reads it and GPTQ and round-to-nearest compare at equal bits and group size. A group's scale is
fixed when its first column is about to be quantized, from the weights as they are *then* (after
the error updates of the earlier columns), and then used for all the group's columns. At bits < 4
the codes use [-3, 3] (3 bits) or [-1, 1] (2 bits) in the same nibbles: the error of fewer
levels, not their storage.

Lazy blocks. Updating all later columns after every column moves out x in numbers per column;
instead columns are processed in blocks of B: inside a block the updates go to the block only,
and the block's scaled errors E = (e / U_qq) (out, B) reach the later columns in one product,
W[:, later] -= E @ U[block, later]. Same result up to float rounding, with matrix products.

act_order. Quantizing the columns with the largest diag H (the most active inputs) first leaves
them the most free columns to absorb their errors. With groups, the group still means g
consecutive inputs (so the format is unchanged): its scale is fixed when the first of its columns
is reached in the new order, from the current weights of all its columns (a group's members can
then lie in later blocks; their pending block updates are applied for the scale). (The reference
implementation instead groups g consecutive columns *of the new order*, which needs a group
index per column that this format does not store, or with "static groups" fixes all the scales
from the original weights first.)

With H a multiple of the identity (or any diagonal H: uncorrelated inputs) H^-1 is diagonal,
every delta is 0, and GPTQ is round-to-nearest exactly, with or without act_order.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .integer import GROUP_SIZES, pack_int4
from .qtensor import QTensor, as_float32, require_2d

BITS = (2, 3, 4)


def hessian(x) -> np.ndarray:
    """H = 2 X^T X / n in float64 for inputs x (..., in): every leading axis is a sample."""
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.ndim < 2 or not np.isfinite(x).all():
        raise UserError(f"calibration inputs must be finite real numbers (..., in), got "
                        f"{x.dtype} of shape {x.shape}.")
    x = x.reshape(-1, x.shape[-1]).astype(np.float64)
    return 2.0 * (x.T @ x) / x.shape[0]


def _check(w: np.ndarray, x, H, bits: int, group_size: int, damp: float, block_size: int):
    require_2d(w, "GPTQ")
    if (x is None) == (H is None):
        raise UserError("GPTQ needs exactly one of the calibration inputs x or the Hessian H.")
    if bits not in BITS:
        raise UserError(f"GPTQ writes INT4 codes; bits must be one of {list(BITS)}, got {bits}.")
    if group_size not in GROUP_SIZES or w.shape[1] % group_size:
        raise UserError(f"INT4 group size {group_size} must be one of {list(GROUP_SIZES)} and "
                        f"divide the row length {w.shape[1]}.")
    if not damp >= 0 or block_size < 1:
        raise UserError(f"GPTQ needs damp >= 0 and block_size >= 1, got {damp}, {block_size}.")
    if x is not None:
        xs = np.shape(x)
        if len(xs) < 2 or xs[-1] != w.shape[1]:
            raise UserError(f"calibration inputs of shape {xs} do not feed a weight of shape "
                            f"{w.shape}: their last axis must be {w.shape[1]}.")
        return hessian(x)
    H = np.asarray(H, dtype=np.float64)
    if H.shape != (w.shape[1], w.shape[1]) or not np.isfinite(H).all():
        raise UserError(f"the Hessian must be a finite ({w.shape[1]}, {w.shape[1]}) matrix, "
                        f"got shape {H.shape}.")
    return H


def prepare_hessian(H: np.ndarray, damp: float) -> np.ndarray:
    """Dead inputs decoupled, damp * mean(diag H) on the diagonal; returns a new float64 array."""
    H = (H + H.T) / 2  # a copy, exactly symmetric
    diag = np.diag(H).copy()
    mean = diag.mean()
    if mean <= 0:  # no input ever nonzero: nothing to compensate, round to nearest
        return np.eye(len(H))
    dead = diag <= 0
    H[dead, :], H[:, dead] = 0.0, 0.0
    H[dead, dead] = mean
    H[np.diag_indices_from(H)] += damp * mean
    return H


def inverse_cholesky(H: np.ndarray) -> np.ndarray:
    """Upper triangular U with H^-1 = U^T U (row q: the OBS update of column q). In float64
    PyTorch: its LAPACK calls are several times faster here than NumPy's on a busy machine."""
    import torch

    try:
        L = torch.linalg.cholesky(torch.from_numpy(H))  # H = L L^T
        Hinv = torch.cholesky_inverse(L)  # H^-1 = L^-T L^-1
        return torch.linalg.cholesky(Hinv, upper=True).numpy()
    except torch.linalg.LinAlgError:
        raise UserError("the damped Hessian is not positive definite; raise damp (e.g. 0.1) or "
                        "calibrate on more samples.") from None


def gptq_quantize(w, x=None, H=None, bits: int = 4, group_size: int = 128, damp: float = 0.01,
                  block_size: int = 128, act_order: bool = False) -> QTensor:
    """GPTQ of a 2-D (out, in) weight, as `F.linear` uses it, into the group-wise INT4 format.

    Give the calibration inputs x (n, in) (or (..., in)) or the Hessian H = 2 X^T X / n (in, in).
    Returns an "int4" QTensor (codes in [-qmax, qmax] packed in nibbles, float32 scales of shape
    (out, in / group_size)) that `int4_dequantize` reads, like `int4_quantize`'s."""
    w = as_float32(w, "the weight")
    H = _check(w, x, H, bits, group_size, damp, block_size)
    qmax = 2 ** (bits - 1) - 1
    out_f, in_f = w.shape
    g = group_size

    H = prepare_hessian(H, damp)
    order = (np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(in_f))
    where = np.argsort(order)  # where[c]: the step at which input column c is quantized
    U = inverse_cholesky(H[np.ix_(order, order)])
    W = w[:, order].astype(np.float64)  # columns in processing order, updated as we go

    codes = np.zeros((out_f, in_f), dtype=np.int8)  # in the original column order
    scales = np.zeros((out_f, in_f // g), dtype=np.float32)
    have_scale = np.zeros(in_f // g, dtype=bool)

    for b0 in range(0, in_f, block_size):
        b1 = min(b0 + block_size, in_f)
        Wb = W[:, b0:b1].copy()  # this block's columns, kept current
        Err = np.zeros((out_f, b1 - b0))  # scaled errors e / U_qq, for the lazy update
        for i in range(b1 - b0):
            step = b0 + i
            col = order[step]  # the input column quantized now
            grp = col // g
            if not have_scale[grp]:
                steps = where[grp * g:(grp + 1) * g]  # all >= step: none quantized yet
                # current weights of the group = W minus the updates pending in this block
                cur = W[:, steps] - Err[:, :i] @ U[b0:step, steps]
                scales[:, grp] = (np.abs(cur).max(axis=1).astype(np.float32) / np.float32(qmax))
                have_scale[grp] = True
            s = scales[:, grp]
            safe = np.where(s == 0, np.float32(1), s)
            q = np.clip(np.rint(Wb[:, i].astype(np.float32) / safe), -qmax, qmax)
            codes[:, col] = q
            # e / U_qq, with the dequantized value computed as int4_dequantize does
            err = (Wb[:, i] - q.astype(np.float32) * s) / U[step, step]
            Wb[:, i:] -= np.outer(err, U[step, step:b1])  # spread over the rest of the block
            Err[:, i] = err
        W[:, b0:b1] = Wb
        W[:, b1:] -= Err @ U[b0:b1, b1:]  # the block's updates reach the later columns at once

    return QTensor("int4", w.shape, pack_int4(codes), scales,
                   extra={"group_size": g, "bits": bits, "method": "gptq"})
