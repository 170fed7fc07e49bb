"""PEFT LoRA adapters -> mlx-lm adapters, and greedy generation under mlx-lm.

The two libraries store the same low-rank update differently. For a linear layer y = x W^T:

    PEFT     y += (x A^T) B^T * alpha / r      lora_A.weight: (r, in)   lora_B.weight: (out, r)
    mlx-lm   y += (x a) b * scale              lora_a: (in, r)          lora_b: (r, out)

so a = A^T, b = B^T and scale = alpha / r (alpha / sqrt(r) with rsLoRA). Names change too:
PEFT's `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight` is mlx-lm's
`model.layers.3.self_attn.q_proj.lora_a`. mlx-lm reads `adapter_config.json` (the rank, the scale,
which modules of each block: `keys`, and how many of the last blocks: `num_layers`) and
`adapters.safetensors`.

The base model for mlx-lm is an HF directory (`llm-deeper models export-hf`), which mlx-lm
converts on load; on Linux it runs on MLX's CPU backend (`pip install "mlx[cpu]" mlx-lm`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from ..errors import UserError

_KEY = re.compile(r"^(?:base_model\.model\.)?(.*?)\.layers\.(\d+)\.(.+)\.lora_([AB])\.weight$")


def peft_to_mlx_adapter(adapter_dir: str, out_dir: str) -> str:
    from safetensors.numpy import load_file, save_file

    from ..util.paths import atomic_dir

    src = Path(adapter_dir)
    cfg_path, weights_path = src / "adapter_config.json", src / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights_path.is_file():
        raise UserError(f"{src} is not a PEFT adapter directory (adapter_config.json and "
                        "adapter_model.safetensors expected).")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type") != "LORA":
        raise UserError("only LoRA adapters convert to mlx-lm; this one is "
                        f"{cfg.get('peft_type')}.")
    for field in ("rank_pattern", "alpha_pattern"):
        if cfg.get(field):
            raise UserError(f"the adapter sets {field}; mlx-lm has one rank and scale for all "
                            "layers.")
    if cfg.get("use_dora") or cfg.get("modules_to_save") or cfg.get("bias", "none") != "none":
        raise UserError("the adapter uses DoRA, modules_to_save or trained biases, which this "
                        "conversion does not map.")
    r, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r

    out, keys, layers = {}, set(), set()
    for name, w in load_file(str(weights_path)).items():
        m = _KEY.match(name)
        if not m:
            raise UserError(f"cannot place the adapter tensor '{name}' in a transformer block.")
        prefix, layer, module, ab = m.groups()
        keys.add(module)
        layers.add(int(layer))
        out[f"{prefix}.layers.{layer}.{module}.lora_{ab.lower()}"] = w.T.copy()
    if not out:
        raise UserError(f"{weights_path} holds no LoRA tensors.")
    if sorted(layers) != list(range(min(layers), max(layers) + 1)):
        raise UserError("the adapter skips blocks; mlx-lm adapts a contiguous run of last blocks.")
    mlx_cfg = {"fine_tune_type": "lora", "num_layers": len(layers),
               "lora_parameters": {"rank": r, "scale": scale, "dropout": 0.0,
                                   "keys": sorted(keys)},
               "converted_from": {"peft_adapter": str(src), "lora_alpha": alpha,
                                  "base_model": cfg.get("base_model_name_or_path")}}
    with atomic_dir(out_dir) as tmp:
        save_file(out, str(Path(tmp) / "adapters.safetensors"), metadata={"format": "mlx"})
        (Path(tmp) / "adapter_config.json").write_text(json.dumps(mlx_cfg, indent=2) + "\n")
    return str(out_dir)


def mlx_greedy(model_dir: str, prompts: list[str], max_tokens: int = 32,
               adapter_dir: str | None = None) -> list[list[int]]:
    """Greedy continuation token ids of each (already templated) prompt under mlx-lm."""
    try:
        import mlx.core as mx
        from mlx_lm import load
        from mlx_lm.generate import generate_step
    except ImportError:
        raise UserError("this needs mlx-lm: uv sync --extra mlx (on Linux it installs "
                        "'mlx[cpu]').") from None
    model, tok = load(str(model_dir), adapter_path=adapter_dir)
    eos = set(tok.eos_token_ids)
    outs = []
    for p in prompts:
        ids = tok.encode(p, add_special_tokens=False)
        toks = []
        for t, _ in generate_step(mx.array(ids), model, max_tokens=max_tokens):
            t = int(t)
            if t in eos:
                break
            toks.append(t)
        outs.append(toks)
    return outs
