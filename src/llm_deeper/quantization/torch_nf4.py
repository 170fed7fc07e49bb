"""NF4 weights for the PyTorch engine: 4-bit codes in memory, floats only for one product.

QLoRA (Dettmers et al. 2023) trains LoRA adapters on top of a base model whose weights are
stored in NF4 (nf4.py: 16 levels at the quantiles of N(0, 1), one absmax per block of 64). The
base is frozen, so its weights never need a gradient, and they never need to exist in float
either, except for the instant a layer multiplies by them.

Dequantizing. A weight W (out x in), flattened, is cut into blocks of 64 values; block k keeps
its absmax c_k (float32) and 64 4-bit indices i_j into the codebook NF4 (packed two per byte,
element 2m in the low nibble of byte m). Then

    W[j] = NF4[i_j] * c_k          for every j of block k

On a byte b both nibbles are looked up at once through a 256 x 2 table PAIRS[b] = (NF4[b & 15],
NF4[b >> 4]), made from the one codebook of nf4.py (no second copy of the 16 levels).

Forward and backward without a float copy. The layer computes y = x W^T (+ b). Its gradients:

    dL/dx = dL/dy W              (out -> in: needed, the layers below learn through it)
    dL/dW = (dL/dy)^T x          (never computed: W is frozen)
    dL/db = sum of dL/dy over the batch and sequence

The only thing the backward pass needs from the forward pass is W itself, and W is a function of
the codes we keep anyway. So `NF4Matmul` saves nothing: forward dequantizes W, multiplies, and
drops it; backward dequantizes W again from the codes and forms dL/dy W. Not even x is saved,
since x only appears in dL/dW. (Autograd through `F.linear(x, W_float)` would keep W_float alive
until the backward pass, which for a whole model is the float copy QLoRA exists to avoid.)

Why memory falls. A frozen float32 matrix costs 32 bits per weight for the whole run; in NF4 it
costs 4 bits of code plus 32 / 64 = 0.5 bits of absmax (4.127 with double quantization), 7.1x
(7.75x) less. At any moment one float matrix exists: the one being multiplied (SmolLM2's largest,
1536 x 576, 3.5 MB), plus the integer indices that address the table. What does not fall: the
activations that the LoRA factors, norms and attention save for their own backward passes, the
adapters with their AdamW moments, the float embedding (a lookup, not a product; it is also the
tied LM head, which QLoRA keeps in float too). The price is time: every product dequantizes its
matrix twice per step, once forward and once backward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError
from .nf4 import NF4, nf4_quantize

# Byte b -> (level of its low nibble, level of its high nibble): the codebook of nf4.py, indexed.
PAIRS = torch.from_numpy(np.stack([NF4[np.arange(256) & 15], NF4[np.arange(256) >> 4]], 1))


class NF4Weight:
    """A frozen weight (out x in) held as packed NF4 codes (uint8) and per-block scales.

    `linear(x, b)` is the product x W^T (+ b) that torch_engine/ffn.py's `matmul` calls for any
    weight that is not a tensor; it dequantizes W on the fly, forward and backward (NF4Matmul).
    The scales are float32 absmax values, or with double quantization int8 codes times a float32
    scale per `dq_block_size` constants plus one float32 mean (nf4.py)."""

    def __init__(self, codes, absmax, shape, block_size: int, dq=None, dq_block_size: int = 256):
        self.codes, self.absmax, self.dq = codes, absmax, dq  # dq: (scales, mean) or None
        self.shape, self.block_size, self.dq_block_size = tuple(shape), block_size, dq_block_size

    @classmethod
    def from_float(cls, w, block_size: int = 64, double_quant: bool = False,
                   dq_block_size: int = 256) -> NF4Weight:
        """Quantize a float matrix (tensor or array) with nf4.py's NumPy quantizer."""
        a = w.detach().cpu().float().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
        if a.ndim != 2:
            raise UserError(f"an NF4 weight is a 2-D (out, in) matrix, got shape {a.shape}.")
        q = nf4_quantize(a, block_size, double_quant, dq_block_size)
        t = torch.from_numpy
        dq = (t(q.extra["dq_scales"]), t(q.extra["dq_mean"])) if double_quant else None
        return cls(t(q.codes), t(q.scales), a.shape, block_size, dq, dq_block_size)

    @property
    def device(self):
        return self.codes.device

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nbytes(self) -> int:
        """Bytes held: codes + scales (+ the second level of double quantization)."""
        extra = sum(t.numel() * t.element_size() for t in self.dq) if self.dq else 0
        return (self.codes.numel() * self.codes.element_size()
                + self.absmax.numel() * self.absmax.element_size() + extra)

    def to(self, device) -> NF4Weight:
        move = lambda t: t.to(device)  # noqa: E731
        return NF4Weight(move(self.codes), move(self.absmax), self.shape, self.block_size,
                         tuple(map(move, self.dq)) if self.dq else None, self.dq_block_size)

    def constants(self) -> torch.Tensor:
        """The absmax of every block as float32 (undoing double quantization: q * s + mean)."""
        if self.dq is None:
            return self.absmax
        scales, mean = self.dq
        s = scales.repeat_interleave(self.dq_block_size)[: self.absmax.numel()]
        return self.absmax.float() * s + mean

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        """W = NF4[index] * absmax of its block, as a fresh (out, in) tensor of `dtype`."""
        table = PAIRS.to(self.device)
        levels = table.index_select(0, self.codes.int())  # (bytes, 2): low, high nibble
        w = levels.view(-1, self.block_size) * self.constants()[:, None]
        return w.view(-1)[: self.numel].view(self.shape).to(dtype)

    def linear(self, x, b=None):
        return NF4Matmul.apply(x, b, self)

    def __repr__(self) -> str:
        dq = ", double_quant" if self.dq else ""
        return (f"NF4Weight({self.shape[0]}x{self.shape[1]}, block {self.block_size}{dq}, "
                f"{8 * self.nbytes / self.numel:.3f} bits/param)")


class NF4Matmul(torch.autograd.Function):
    """y = x W^T (+ b) with W dequantized from NF4 in forward and again in backward; nothing
    saved for backward but a reference to the codes (which the model holds anyway)."""

    @staticmethod
    def forward(ctx, x, b, weight: NF4Weight):
        ctx.weight = weight
        return F.linear(x, weight.dequantize(x.dtype), b)  # the float W is freed on return

    @staticmethod
    def backward(ctx, grad_y):
        grad_x = grad_b = None
        if ctx.needs_input_grad[0]:  # dL/dx = dL/dy W, with W rebuilt from the codes
            grad_x = grad_y @ ctx.weight.dequantize(grad_y.dtype)
        if ctx.needs_input_grad[1]:  # dL/db = dL/dy summed over every row
            grad_b = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return grad_x, grad_b, None


def quantize_params(params: dict, names, block_size: int = 64, double_quant: bool = False,
                    log=None) -> dict:
    """`params` with each weight in `names` replaced by an NF4Weight (in place, and returned):
    the float matrix is dropped as soon as its codes exist, so the float copies of a model are
    never all alive beside the quantized ones."""
    for name in names:
        params[name] = NF4Weight.from_float(params[name], block_size, double_quant)
        if log is not None:
            log(f"  {name} -> {params[name]!r}")
    return params
