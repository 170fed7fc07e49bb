"""A whole model through a format: what its quality would be if its weights were stored that way.

"Fake" (simulated) quantization: every weight matrix is quantized with the format and
dequantized back to float32 at once; the model then runs in float32 on those numbers. The
results (perplexity, greedy answers) are exactly those of a model stored in the format and
dequantized on load, which is how SmolLM2's Q4_1 GGUF is already used here. Only the speed is
not that of a quantized kernel. Weight bytes are counted as the format stores them.

Which tensors: every 2-D weight of the decoder (attention and MLP projections, the token
embedding, the LM head when untied), as llama.cpp's quantized files do; norms and biases stay
float32 (a few thousand numbers).
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .formats import dequantize, get_format, quantize


def quantizable(name: str, value) -> bool:
    return np.ndim(value) == 2 and name.rsplit(".", 1)[-1] in (
        "wq", "wk", "wv", "wo", "w1", "w2", "w3", "wte", "lm_head", "wpe")


def parse_options(pairs: list[str]) -> dict:
    """['group_size=32', 'per_channel=true'] -> {'group_size': 32, 'per_channel': True}."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--quant-option takes NAME=VALUE (e.g. group_size=32), got '{pair}'.")
        low = value.lower()
        out[key] = (True if low == "true" else False if low == "false"
                    else int(value) if value.lstrip("-").isdigit() else value)
    return out


def fake_quantize(params: dict, fmt: str, log=None, **options) -> tuple[dict, int]:
    """(params with every weight matrix quantized and dequantized, bytes the weights take in
    `fmt`: quantized matrices at their stored size, the rest as float32)."""
    get_format(fmt)  # an unknown name: one sentence
    out, nbytes = {}, 0
    for name, w in params.items():
        w = np.asarray(w, dtype=np.float32)
        if not quantizable(name, w):
            out[name] = w
            nbytes += w.nbytes
            continue
        try:
            q = quantize(w, fmt, **options)
        except UserError as exc:
            raise UserError(f"{name} {tuple(w.shape)}: {exc}") from None
        out[name] = np.asarray(dequantize(q), dtype=np.float32).reshape(w.shape)
        nbytes += q.nbytes
        if log is not None:
            log(f"  {name} {tuple(w.shape)} -> {fmt}: {8 * q.nbytes / w.size:.3f} bits/param")
    return out, nbytes
