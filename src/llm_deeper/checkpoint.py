"""Checkpoints: a directory every engine reads, never a pickle.

    config.json            ModelConfig
    model.safetensors      parameters by name (the same names in every engine)
    tokenizer.json         char vocabulary, or byte-level BPE in HF's tokenizer.json format
    optimizer.safetensors  AdamW moments (training checkpoints only)
    trainer_state.json     step, RNG states, loss history, training settings
    loss_curve.png         the losses so far

A quantized checkpoint (`llm-deeper quantize --out DIR`, quantization/qcheckpoint.py) has
quantized.safetensors and quantization.json instead of model.safetensors; `load_checkpoint`
dequantizes it, so every --checkpoint command runs it.

The directory is written to a temporary sibling and swapped into place (util/paths.py:
atomic_dir), so a crash or Ctrl-C mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .config import ModelConfig
from .errors import UserError
from .util.paths import atomic_dir


def save_checkpoint(out_dir, cfg: ModelConfig, params: dict, tokenizer=None, *,
                    optimizer_state: dict | None = None, trainer_state: dict | None = None,
                    extra_files: dict | None = None) -> Path:
    from safetensors.numpy import save_file

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(cfg.to_json())
        save_file({k: np.ascontiguousarray(v) for k, v in params.items()},
                  str(tmp / "model.safetensors"), metadata={"format": "llm-deeper"})
        if tokenizer is not None:
            (tmp / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
        if optimizer_state is not None:
            save_file({k: np.ascontiguousarray(v) for k, v in optimizer_state.items()},
                      str(tmp / "optimizer.safetensors"))
        if trainer_state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
    return out_dir


def read_config(ckpt_dir) -> ModelConfig:
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"no checkpoint at {ckpt_dir}; train one with 'llm-deeper train "
                        f"--out {ckpt_dir}' or pass the right --checkpoint.")
    f = ckpt_dir / "config.json"
    if not f.is_file():
        raise UserError(f"{ckpt_dir} is not a checkpoint (config.json is missing).")
    try:
        return ModelConfig.from_dict(json.loads(f.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise UserError(f"{f} is corrupt ({exc}).") from None


def read_tensors(path, what: str = "tensors") -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing.")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises several kinds
        raise UserError(f"{path} is corrupt or not a safetensors file ({exc}).") from None


class Checkpoint(NamedTuple):
    config: ModelConfig
    params: dict  # name -> array, shapes checked against the config
    tokenizer: object | None
    state: dict  # trainer_state.json, {} for a model without a training run


def load_checkpoint(ckpt_dir, dtype=np.float32) -> Checkpoint:
    """Config, parameters, tokenizer and trainer state of a checkpoint directory, read once."""
    from .params import LORA_SUFFIXES, check_params, param_shapes
    from .tokenizers import load_tokenizer

    ckpt_dir = Path(ckpt_dir)
    cfg = read_config(ckpt_dir)
    if (ckpt_dir / "quantization.json").is_file():  # `llm-deeper quantize`: dequantized here
        from .quantization.qcheckpoint import load_quantized_params

        params, where = load_quantized_params(ckpt_dir), f"{ckpt_dir}/quantized.safetensors"
    else:
        params = read_tensors(ckpt_dir / "model.safetensors", "parameters")
        where = f"{ckpt_dir}/model.safetensors"
    check_params(cfg, params, where)
    expected = param_shapes(cfg)
    params = {k: v.astype(dtype, copy=False) for k, v in params.items()
              if k in expected or k.endswith(LORA_SUFFIXES)}
    tok = load_tokenizer(ckpt_dir) if (ckpt_dir / "tokenizer.json").is_file() else None
    state = {}
    if (ckpt_dir / "trainer_state.json").is_file():
        try:
            state = json.loads((ckpt_dir / "trainer_state.json").read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{ckpt_dir}/trainer_state.json is corrupt ({exc}).") from None
    return Checkpoint(cfg, params, tok, state)
