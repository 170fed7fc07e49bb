"""Resolve a model name to an HF directory that transformers can load offline.

Names are read by models.resolve. Registry names (smollm2-135m) are exported once from their
GGUF into the cache (`<cache>/models/<name>/hf`) with weights.export_hf; a local directory is
used as is; anything else is taken for a hub id, which needs the network (and says so when it
is not there).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..pretrained import models


def hf_dir(model: str) -> str:
    """A directory (or hub id) transformers can load: a registry model is exported once from
    its GGUF into the cache; an HF directory is used as is; a hub id is passed on."""
    src = models.resolve(model)
    if src.kind == "hf":
        return str(src.path)
    if src.kind == "hub":
        return model  # transformers fetches it when online
    if model not in models.REGISTRY:
        raise UserError(f"{model} is a GGUF file; transformers runs it with --engine hf in "
                        "chat, or export it first: llm-deeper models export-hf FILE --out DIR.")
    out = src.path.parent / "hf"
    if not (out / "config.json").is_file():
        from ..pretrained.weights import export_hf, load_gguf

        pre = load_gguf(src.path)
        export_hf(out, pre.config, pre.params, pre.tokenizer, chat_template=pre.chat_template,
                  bos_id=pre.bos_id, eos_id=pre.eos_id)
    return str(out)


def load(model: str, adapter: str | None = None, dtype=None):
    """(model, tokenizer) with transformers (and PEFT when an adapter is given)."""
    import torch

    tok, m = from_pretrained(model, dtype=dtype or torch.float32)
    if adapter:
        from peft import PeftModel

        if not (Path(adapter) / "adapter_config.json").is_file():
            raise UserError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json).")
        m = PeftModel.from_pretrained(m, adapter)
    return m.eval(), tok


def from_pretrained(model: str, **kwargs):
    """(tokenizer, model) with transformers; a model that cannot be had gets one sentence."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = hf_dir(model)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        m = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise UserError(f"cannot load '{model}' ({str(exc).splitlines()[0][:200]}); a registry "
                        f"model needs 'llm-deeper models pull NAME' (known: "
                        f"{', '.join(models.REGISTRY)}), a hub id needs the network.") from None
    return tok, m


def merge(model: str, adapter: str, out: str) -> str:
    """Fold a LoRA adapter into the base weights (W + B A * alpha/r) and write a plain HF model
    that loads without PEFT. Written to a temporary sibling and swapped into place."""
    if not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json).")
    m, tok = load(model, adapter=adapter)
    save_model(m.merge_and_unload(), tok, out)
    return str(out)


def save_model(model, tok, out) -> None:
    """save_pretrained, atomically, with a config every consumer reads the same way."""
    import json

    from ..util.paths import atomic_dir

    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = Path(tmp) / "config.json"
        cfg = json.loads(cfg_path.read_text())
        # transformers 5 writes rope_theta only inside rope_parameters; vLLM and mlx-lm read the
        # top-level key (mlx-lm silently falls back to 10000 and produces garbage for SmolLM2).
        theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
        if theta is not None and "rope_theta" not in cfg:
            cfg["rope_theta"] = theta
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


class TextTokenizer:
    """An HF tokenizer with the small interface the generation loop uses: encode(text) without
    added special tokens (the chat template already wrote them) and decode(ids)."""

    def __init__(self, tok):
        self.hf = tok

    def encode(self, text: str) -> list[int]:
        return self.hf(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=True)


def next_logits_fn(model, device="cpu"):
    """next_logits(ids, state) for generation.stream and the server, through transformers: the
    KV cache is its past_key_values, kept as generation.cached_next_logits keeps every cache."""
    import torch

    from ..generation import cached_next_logits

    # A prompt- or prefix-tuning adapter (PEFT) puts its virtual tokens in front of whatever it
    # is given, cache or not: it runs on the first call only, which leaves them in the cache,
    # and the base model continues from there. They take room in the context.
    peft = getattr(model, "active_peft_config", None)
    virtual = peft.num_virtual_tokens if getattr(peft, "is_prompt_learning", False) else 0
    base = model.get_base_model() if virtual else model

    @torch.inference_mode()
    def step(new_ids, past):
        out = (base if past is not None else model)(
            input_ids=torch.tensor([new_ids], device=device), past_key_values=past,
            use_cache=True)
        return out.logits[0, -1].float().cpu().numpy(), out.past_key_values

    config = getattr(model, "config", None)
    context = int(getattr(config, "max_position_embeddings", None) or 1 << 30) - virtual
    return cached_next_logits(step, context)


def engine(model: str, adapter: str | None = None):
    """(next_logits, tokenizer, chat_template, stop_ids) through transformers (+ PEFT)."""
    m, tok = load(model, adapter=adapter)
    eos = m.generation_config.eos_token_id
    stop = [eos] if isinstance(eos, int) else list(eos or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in stop:
        stop.append(tok.eos_token_id)
    return next_logits_fn(m), TextTokenizer(tok), tok.chat_template, stop


def random_lora(model, rank: int = 8, alpha: float = 16.0, targets="all-linear",
                std: float = 0.03, seed: int = 0):
    """The model wrapped in a PEFT LoRA adapter whose A and B are random (normal, `std`) rather
    than B = 0: an adapter that visibly changes the output without training, for checking the
    plumbing (conversion, serving, merging) in lessons and tests."""
    import torch
    from peft import LoraConfig, get_peft_model

    peft = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets,
                                            init_lora_weights=False, task_type="CAUSAL_LM"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return peft
