"""Resolve a model name to an HF directory that transformers can load offline.

Registry names (smollm2-135m) are exported once from their GGUF into the cache
(`<cache>/models/<name>/hf`) with weights.export_hf; a local directory is used as is; anything
else is taken for a hub id, which needs the network (and says so when it is not there).
"""

from __future__ import annotations

from pathlib import Path

from .. import models
from ..errors import UserError


def hf_dir(model: str) -> str:
    if model in models.REGISTRY:
        out = models.model_path(model).parent / "hf"
        if not (out / "config.json").is_file():
            from ..weights import export_hf, load_gguf

            pre = load_gguf(models.require(model))
            export_hf(out, pre.config, pre.params, pre.tokenizer, chat_template=pre.chat_template,
                      bos_id=pre.bos_id, eos_id=pre.eos_id)
        return str(out)
    p = Path(model)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{p} has no config.json; it is not an HF model directory.")
        return str(p)
    return model  # a hub id: transformers fetches it when online


def load(model: str, adapter: str | None = None, dtype=None):
    """(model, tokenizer) with transformers (and PEFT when an adapter is given)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = hf_dir(model)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    except OSError as exc:
        raise UserError(f"cannot load '{model}' ({str(exc).splitlines()[0]}); for a registry "
                        f"model run 'llm-deeper models pull {model}', for a hub id be online.") \
            from None
    if adapter:
        from peft import PeftModel

        m = PeftModel.from_pretrained(m, adapter)
    return m.eval(), tok
