"""Number formats for weights: a float tensor stored as small codes plus a few scales.

Quantization replaces each weight w by a code q from a small set and keeps what is needed to map
q back: w' = scale * value(q) (+ an offset in asymmetric formats). Fewer bits per weight means a
smaller model and, when decoding is bound by memory bandwidth, faster tokens; the price is the
reconstruction error w - w'. The formats here, each written from its definition and checked
against a reference (tests/test_quantization_formats.py):

    integer.py      INT8 symmetric and with a zero point (per tensor, per row), group-wise INT4
    gguf_blocks.py  GGUF's Q8_0, Q4_0, Q4_1: the bytes of the `gguf` package, bit for bit
    nf4.py          QLoRA's NormalFloat4 and double quantization
    fp8.py          FP8 E4M3 and E5M2, bit by bit, as PyTorch casts them
    floats.py       bf16 (rounded by hand on the bits) and fp16
    formats.py      every format by name (FORMATS) and `error_report` to compare them
    model.py        a whole model through a format (simulated: quantize, dequantize, run)
    gptq.py, gptq_model.py    GPTQ for one matrix, and layer by layer for a whole model
    gguf_write.py, qcheckpoint.py    saving: GGUF files, quantized checkpoint directories
    torch_int8.py   the INT8 decoder of the PyTorch engine (`--quant int8`)
    torch_nf4.py    NF4 weights in the PyTorch engine, for QLoRA
"""

from .formats import FORMATS, dequantize, error_report, get_format, quantize
from .gptq import gptq_quantize
from .qtensor import QTensor

__all__ = ["FORMATS", "QTensor", "dequantize", "error_report", "get_format", "gptq_quantize",
           "quantize"]
