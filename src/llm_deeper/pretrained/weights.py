"""Real weights in and out: GGUF files (read with the `gguf` package) and HF directories.

GGUF -> our names. llama.cpp's converter stores Llama's query and key projections with the rows
of each head permuted so that RoPE rotates *adjacent* pairs (x0, x1), (x2, x3), ...; HF and this
project rotate *half-split* pairs (x_i, x_{i + head_dim/2}). `unpermute_rope_rows` undoes that, so
the dequantized matrices are exactly the ones transformers builds from the same file.

    token_embd.weight              -> wte
    blk.N.attn_norm.weight         -> h.N.norm1.weight
    blk.N.attn_q/k/v.weight        -> h.N.attn.wq/wk/wv
    blk.N.attn_output.weight       -> h.N.attn.wo
    blk.N.ffn_norm.weight          -> h.N.norm2.weight
    blk.N.ffn_gate/up/down.weight  -> h.N.ffn.w1/w3/w2
    output_norm.weight             -> norm_f.weight
    output.weight                  -> lm_head (untied models)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import ModelConfig
from ..errors import UserError

GGUF_NAMES = {
    "attn_norm.weight": "norm1.weight", "attn_q.weight": "attn.wq", "attn_k.weight": "attn.wk",
    "attn_v.weight": "attn.wv", "attn_output.weight": "attn.wo", "ffn_norm.weight": "norm2.weight",
    "ffn_gate.weight": "ffn.w1", "ffn_up.weight": "ffn.w3", "ffn_down.weight": "ffn.w2",
}


@dataclass
class Pretrained:
    config: ModelConfig
    params: dict[str, np.ndarray]
    tokenizer: object
    chat_template: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    source: str = ""
    metadata: dict = field(default_factory=dict)


def unpermute_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of each head from adjacent-pair order (llama.cpp) to half-split order (HF)."""
    out_f = w.shape[0]
    hd = out_f // n_heads
    return w.reshape(n_heads, hd // 2, 2, -1).transpose(0, 2, 1, 3).reshape(out_f, -1)


def gguf_config(meta: dict) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UserError(f"this GGUF's architecture is '{arch}'; the engines run 'llama' "
                        "(Llama, SmolLM, Mistral-style) models.")
    if meta.get(f"{arch}.rope.scaling.type") not in (None, "none"):
        raise UserError("this GGUF uses RoPE scaling, which the engines do not implement yet.")
    g = lambda k, d=None: meta.get(f"{arch}.{k}", d)
    n_head = int(g("attention.head_count"))
    d_model = int(g("embedding_length"))
    vocab = int(g("vocab_size", len(meta.get("tokenizer.ggml.tokens", [])) or 0))
    return ModelConfig(
        vocab_size=vocab, context_length=int(g("context_length")), n_layer=int(g("block_count")),
        n_head=n_head, n_kv_head=int(g("attention.head_count_kv", n_head)), d_model=d_model,
        d_ff=int(g("feed_forward_length")), norm="rmsnorm", activation="swiglu",
        position="rope", attention="gqa", tie_embeddings=True, bias=False,
        rope_theta=float(g("rope.freq_base", 10000.0)),
        norm_eps=float(g("attention.layer_norm_rms_epsilon", 1e-5)))


def load_gguf(path, dtype=np.float32) -> Pretrained:
    """Read a Llama-architecture GGUF: config, dequantized float weights, tokenizer, template."""
    from gguf.quants import dequantize

    from ..tokenizers.pretrained import from_gguf, gguf_metadata, open_gguf

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no GGUF file at {path}.")
    reader = open_gguf(path)  # parsed once, for both the metadata and the tensors
    meta = gguf_metadata(path, reader)
    cfg = gguf_config(meta)
    params: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        try:
            w = dequantize(t.data, t.tensor_type)
        except NotImplementedError:
            raise UserError(f"tensor {t.name} is stored as {t.tensor_type.name}, which the "
                            "gguf package cannot dequantize.") from None
        w = np.asarray(w, dtype=np.float32)
        name = t.name
        if name == "token_embd.weight":
            ours = "wte"
        elif name == "output_norm.weight":
            ours = "norm_f.weight"
        elif name == "output.weight":
            ours = "lm_head"
        elif name.startswith("blk."):
            _, i, rest = name.split(".", 2)
            if rest not in GGUF_NAMES:
                raise UserError(f"GGUF tensor {name} has no counterpart in the engines "
                                f"(an architecture feature they lack).")
            ours = f"h.{i}.{GGUF_NAMES[rest]}"
            if rest == "attn_q.weight":
                w = unpermute_rope_rows(w, cfg.n_head)
            elif rest == "attn_k.weight":
                w = unpermute_rope_rows(w, cfg.n_kv_head)
        else:
            continue  # e.g. rope_freqs: derived, not a parameter
        params[ours] = w.astype(dtype, copy=False)
    if "lm_head" in params:
        cfg = cfg.replace(tie_embeddings=False)
    if cfg.vocab_size != params["wte"].shape[0]:
        cfg = cfg.replace(vocab_size=params["wte"].shape[0])
    tok = from_gguf(path, meta)
    return Pretrained(config=cfg, params=params, tokenizer=tok,
                      chat_template=meta.get("tokenizer.chat_template"),
                      bos_id=meta.get("tokenizer.ggml.bos_token_id"),
                      eos_id=meta.get("tokenizer.ggml.eos_token_id"), source=str(path),
                      metadata={k: v for k, v in meta.items()
                                if not k.startswith("tokenizer.ggml.")})


# ------------------------------------------------------------------------------ HF export
HF_LAYER_NAMES = {
    "norm1.weight": "input_layernorm.weight", "attn.wq": "self_attn.q_proj.weight",
    "attn.wk": "self_attn.k_proj.weight", "attn.wv": "self_attn.v_proj.weight",
    "attn.wo": "self_attn.o_proj.weight", "norm2.weight": "post_attention_layernorm.weight",
    "ffn.w1": "mlp.gate_proj.weight", "ffn.w3": "mlp.up_proj.weight",
    "ffn.w2": "mlp.down_proj.weight",
}


def hf_name(name: str) -> str:
    if name == "wte":
        return "model.embed_tokens.weight"
    if name == "norm_f.weight":
        return "model.norm.weight"
    if name == "lm_head":
        return "lm_head.weight"
    _, i, rest = name.split(".", 2)
    return f"model.layers.{i}.{HF_LAYER_NAMES[rest]}"


def hf_config(cfg: ModelConfig, bos_id=None, eos_id=None) -> dict:
    """A LlamaConfig that transformers 4 and 5, vLLM and mlx-lm all read the same way:
    `rope_theta` at the top level (where vLLM and mlx-lm look) and in `rope_parameters` (where
    transformers 5 looks)."""
    missing = [what for what, ok in (
        ("RMSNorm", cfg.norm == "rmsnorm"), ("SwiGLU", cfg.activation == "swiglu"),
        ("RoPE positions", cfg.position == "rope"), ("no biases", not cfg.bias))
        if not ok]
    if missing:
        raise UserError(f"HF export writes Llama-architecture models; this config lacks "
                        f"{', '.join(missing)} (use a Llama-style preset: small, medium, large).")
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff, "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.n_kv_head,
        "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length, "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_scaling": None, "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "bos_token_id": bos_id, "eos_token_id": eos_id, "torch_dtype": "float32",
        "dtype": "float32", "use_cache": True,
    }


def export_hf(out_dir, cfg: ModelConfig, params: dict, tokenizer=None, *, chat_template=None,
              bos_id=None, eos_id=None) -> Path:
    """Write an HF directory: config.json, model.safetensors, tokenizer files,
    generation_config.json. Atomic: the directory appears complete or not at all."""
    import json

    from safetensors.numpy import save_file

    from ..util.paths import atomic_dir

    config = hf_config(cfg, bos_id, eos_id)
    tensors = {hf_name(k): np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()
               if not k.endswith((".lora_A", ".lora_B"))}
    with atomic_dir(out_dir) as tmp:
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        gen = {"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2))
        if tokenizer is not None and getattr(tokenizer, "kind", "") == "bpe":
            (tmp / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
            by_id = {i: s for s, i in tokenizer.special_tokens.items()}
            tc = {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces":
                  False, "model_max_length": cfg.context_length,
                  "bos_token": by_id.get(bos_id), "eos_token": by_id.get(eos_id),
                  "pad_token": by_id.get(eos_id)}
            if chat_template:
                tc["chat_template"] = chat_template
            (tmp / "tokenizer_config.json").write_text(json.dumps(tc, indent=2))
    return Path(out_dir)


# ------------------------------------------------------------------------------ PEFT adapters
def read_peft_adapter(path) -> tuple[dict, dict[str, np.ndarray], float]:
    """(adapter_config.json, its tensors, scale) of a PEFT LoRA adapter directory, checked: a
    missing or corrupt config or weights file, or a config without a positive rank and an alpha,
    is one sentence. Cheap (adapters are small): the server checks every adapter this way before
    it spends seconds loading the model."""
    import json
    import math

    from safetensors.numpy import load_file

    path = Path(path)
    try:
        conf = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError):
        raise UserError(f"{path} is not a PEFT adapter directory (no readable "
                        "adapter_config.json).") from None
    kind = conf.get("peft_type", "LORA") if isinstance(conf, dict) else "LORA"
    if kind != "LORA":
        raise UserError(f"{path} is a {kind} adapter; our engines apply LoRA adapters only "
                        "(--engine hf runs prompt and prefix tuning through PEFT).")
    r, alpha = conf.get("r") if isinstance(conf, dict) else None, None
    if isinstance(conf, dict):
        alpha = conf.get("lora_alpha")
    if not isinstance(r, int) or r < 1 or not isinstance(alpha, (int, float)):
        raise UserError(f"{path}/adapter_config.json needs a rank 'r' >= 1 and a 'lora_alpha' "
                        f"(it has r={r!r}, lora_alpha={alpha!r}).")
    weights = path / "adapter_model.safetensors"
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # missing, truncated, not safetensors: safetensors raises several
        raise UserError(f"{weights} is missing or corrupt ({str(exc)[:120]}).") from None
    if not tensors:
        raise UserError(f"{weights} holds no tensors.")
    scale = alpha / math.sqrt(r) if conf.get("use_rslora") else alpha / r
    return conf, tensors, scale


def read_peft_lora(path, cfg: ModelConfig) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """A PEFT LoRA adapter directory -> {our weight name: (A (r, in), B (out, r), alpha / r)}
    (alpha / sqrt(r) with rsLoRA). Refuses, in one sentence, what the engines cannot apply."""
    conf, tensors, scale = read_peft_adapter(path)
    for key, ok in (("use_dora", False), ("fan_in_fan_out", False), ("modules_to_save", None)):
        if conf.get(key) not in (ok, None, [] if ok is None else ok):
            raise UserError(f"{path}: adapters with {key}={conf[key]} are not served by the "
                            "native engine (--engine hf serves them).")
    if conf.get("bias", "none") != "none":
        raise UserError(f"{path}: LoRA biases are not served by the native engine.")
    ours = {}
    for i in range(cfg.n_layer):
        for n in ("attn.wq", "attn.wk", "attn.wv", "attn.wo", "ffn.w1", "ffn.w2", "ffn.w3"):
            ours[hf_name(f"h.{i}.{n}").removesuffix(".weight")] = f"h.{i}.{n}"
    factors: dict = {}
    for key, t in tensors.items():
        module, _, kind = key.removeprefix("base_model.model.").rpartition(".lora_")
        name = ours.get(module)
        if name is None or kind not in ("A.weight", "B.weight"):
            raise UserError(f"{path}: the native engine cannot place '{key}'.")
        factors.setdefault(name, {})[kind[0]] = t
    incomplete = sorted(n for n, w in factors.items() if set(w) != {"A", "B"})
    if incomplete:
        raise UserError(f"{path}: {incomplete[0]} has only one of its two LoRA factors.")
    return {n: (w["A"], w["B"], scale) for n, w in factors.items()}
