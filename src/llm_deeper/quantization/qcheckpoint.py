"""Quantized checkpoint directories: a model stored in any format of FORMATS, dequantized on load.

A checkpoint directory (checkpoint.py) with the float weights replaced by their quantized form:

    config.json              ModelConfig, as in every checkpoint
    quantization.json        {"format", "options", "source", "tensors": {name: {"fmt", "shape",
                              "extra"}}, "weight_bytes", "float32_bytes", ...}
    quantized.safetensors    per quantized matrix NAME: NAME.codes, NAME.scales (and NAME.zeros,
                              NAME.extra.KEY for the arrays a format keeps beside them, e.g. NF4's
                              second-level scales); every other tensor (norms, biases) float32
                              under its own name
    tokenizer.json           the tokenizer, when the source had one

Which matrices: `model.quantizable`, as in `fake_quantize`, so a directory loads to exactly the
parameters `fake_quantize` gives (the same quantizer, the same dequantizer). There is no
model.safetensors: a reader that knows nothing of quantization stops at "model.safetensors is
missing" instead of running on the wrong numbers. `checkpoint.load_checkpoint` sees
quantization.json and calls `load_quantized_params`, so every command that takes --checkpoint
(generate, eval perplexity, export, the MLX engine) runs a quantized directory, in float32.

A format this version cannot dequantize (a name not in FORMATS, e.g. written by a newer version)
is one sentence when the directory is loaded, not a KeyError.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import UserError
from .formats import FORMATS, dequantize, get_format, quantize
from .model import quantizable
from .qtensor import QTensor

META = "quantization.json"
WEIGHTS = "quantized.safetensors"


def is_quantized(ckpt_dir) -> bool:
    return (Path(ckpt_dir) / META).is_file()


def quantize_params(params: dict, fmt: str, log=None, **options) -> tuple[dict, dict]:
    """({name: QTensor} for every weight matrix, {name: float32 array} for the rest).
    A format's refusal (a group size that does not divide a row) names the tensor."""
    get_format(fmt)
    qtensors, floats = {}, {}
    for name, w in params.items():
        w = np.asarray(w, dtype=np.float32)
        if not quantizable(name, w):
            floats[name] = w
            continue
        try:
            qtensors[name] = quantize(w, fmt, **options)
        except UserError as exc:
            raise UserError(f"{name} {tuple(w.shape)}: {exc}") from None
        if log is not None:
            log(f"  {name} {tuple(w.shape)} -> {fmt}: {qtensors[name].bits_per_param:.3f} bits")
    return qtensors, floats


def _settings(extra: dict) -> dict:
    return {k: v for k, v in extra.items() if not isinstance(v, np.ndarray)}


def save_quantized(out_dir, cfg, qtensors: dict, floats: dict, tokenizer=None, *,
                   fmt: str, options: dict, source: str, extra_meta: dict | None = None) -> dict:
    """Write the directory atomically; returns quantization.json's content."""
    from safetensors.numpy import save_file

    from ..util.paths import atomic_dir

    tensors, table = {}, {}
    for name, q in qtensors.items():
        tensors[f"{name}.codes"] = q.codes
        tensors[f"{name}.scales"] = q.scales
        if q.zeros is not None:
            tensors[f"{name}.zeros"] = q.zeros
        for key, value in q.extra.items():
            if isinstance(value, np.ndarray):
                tensors[f"{name}.extra.{key}"] = value
        table[name] = {"fmt": q.fmt, "shape": list(q.shape), "extra": _settings(q.extra)}
    tensors.update(floats)
    n = sum(int(np.prod(q.shape)) for q in qtensors.values()) + sum(a.size for a in floats.values())
    weight_bytes = sum(q.nbytes for q in qtensors.values()) + sum(a.nbytes for a in floats.values())
    meta = {"format": fmt, "options": options, "source": source, "params": n,
            "weight_bytes": weight_bytes, "float32_bytes": 4 * n,
            "bits_per_param": 8 * weight_bytes / max(n, 1), **(extra_meta or {}), "tensors": table}
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(cfg.to_json())
        (tmp / META).write_text(json.dumps(meta, indent=1))
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / WEIGHTS),
                  metadata={"format": "llm-deeper-quantized"})
        if tokenizer is not None:
            (tmp / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
    return meta


def read_meta(ckpt_dir) -> dict:
    f = Path(ckpt_dir) / META
    try:
        meta = json.loads(f.read_text())
        meta["tensors"].items()
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise UserError(f"{f} is missing or corrupt ({exc}).") from None
    return meta


def load_qtensors(ckpt_dir) -> tuple[dict, dict, dict]:
    """(quantization.json, {name: QTensor}, {name: float array}) of a quantized directory."""
    from safetensors.numpy import load_file

    ckpt_dir = Path(ckpt_dir)
    meta = read_meta(ckpt_dir)
    unknown = sorted({t.get("fmt") for t in meta["tensors"].values()} - set(FORMATS))
    if unknown:
        raise UserError(f"{ckpt_dir} stores its weights as '{unknown[0]}', which this version "
                        f"cannot dequantize (it reads {', '.join(FORMATS)}); quantize the float "
                        "model again with this version.")
    try:
        arrays = load_file(str(ckpt_dir / WEIGHTS))
    except Exception as exc:  # missing, truncated, not safetensors: several kinds
        raise UserError(f"{ckpt_dir / WEIGHTS} is missing or corrupt ({exc}).") from None
    qtensors = {}
    for name, t in meta["tensors"].items():
        try:
            extra = dict(t.get("extra", {}))
            prefix = f"{name}.extra."
            extra.update({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
            qtensors[name] = QTensor(t["fmt"], tuple(t["shape"]), arrays[f"{name}.codes"],
                                     arrays[f"{name}.scales"], arrays.get(f"{name}.zeros"), extra)
        except KeyError as exc:
            raise UserError(f"{ckpt_dir / WEIGHTS} lacks {exc} of {name}; the directory is "
                            "incomplete.") from None
    parts = {f"{n}.{part}" for n in qtensors for part in ("codes", "scales", "zeros")}
    floats = {k: v for k, v in arrays.items() if k not in parts and not any(
        k.startswith(f"{n}.extra.") for n in qtensors)}
    return meta, qtensors, floats


def load_quantized_params(ckpt_dir) -> dict[str, np.ndarray]:
    """Every parameter of a quantized directory as float32: the matrices dequantized."""
    _, qtensors, floats = load_qtensors(ckpt_dir)
    params = {k: np.asarray(v, dtype=np.float32) for k, v in floats.items()}
    for name, q in qtensors.items():
        params[name] = np.asarray(dequantize(q), dtype=np.float32).reshape(q.shape)
    return params
