"""`ModelConfig`: one dataclass that describes every decoder in the learning path.

GPT-2-style models (learned positions, LayerNorm, GELU, tied embeddings) and Llama-style models
(RoPE, RMSNorm, SwiGLU, grouped-query attention) are points in the same space, so the NumPy
engine, the PyTorch engine and the checkpoints all read this one description.

The parameters each config calls for (names, shapes, initialisation) are in params.py.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from . import params
from .errors import UserError

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "relu", "swiglu")
POSITIONS = ("learned", "sinusoidal", "rope", "alibi", "none")


@dataclass
class ModelConfig:
    vocab_size: int = 84
    context_length: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None = n_head (MHA); 1 = MQA; in between = GQA
    d_model: int = 128
    d_ff: int | None = None  # None = 4 * d_model
    norm: str = "layernorm"
    activation: str = "gelu"
    position: str = "learned"
    attention: str = "mha"  # mha|gqa|mqa (names for n_kv_head) or mla (latent attention)
    tie_embeddings: bool = True
    bias: bool = False
    rope_theta: float = 10000.0
    rope_pairing: str = "half"  # half: x_i with x_{i+d/2} (Llama/HF); interleaved: x_2i with x_2i+1
    # Multi-head latent attention (DeepSeek-V2), attention="mla" only:
    kv_lora_rank: int = 0  # size of the cached latent c_KV
    q_lora_rank: int = 0  # 0: queries straight from x; > 0: through a compressed latent too
    qk_rope_head_dim: int = 0  # the decoupled RoPE part of each query/key head
    qk_nope_head_dim: int = 0  # the position-free part of each query/key head
    v_head_dim: int = 0
    norm_eps: float = 1e-5
    dropout: float = 0.0

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = {"mqa": 1}.get(self.attention, self.n_head)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def rope_dim(self) -> int:
        """How many features of each query/key head RoPE rotates."""
        return self.qk_rope_head_dim if self.attention == "mla" else self.head_dim

    def kv_cache_numbers_per_token(self) -> int:
        """Numbers the KV cache stores per token, all layers: K and V of every KV head, or for
        MLA the latent c_KV and the shared RoPE key."""
        if self.attention == "mla":
            return self.n_layer * (self.kv_lora_rank + self.qk_rope_head_dim)
        return 2 * self.n_layer * self.n_kv_head * self.head_dim

    def check_input(self, ids, pos0: int = 0, vocab: bool = True) -> None:
        """The checks both engines make before a forward pass: the sequence fits the context,
        and (vocab=True) every token id is in the vocabulary. ids: (B, T) integers, NumPy or
        torch (the torch engine skips the vocabulary check on a GPU, where it would wait for
        the device)."""
        T = ids.shape[-1]
        if pos0 + T > self.context_length:
            raise UserError(f"the sequence ({pos0 + T} tokens) is longer than the model's "
                            f"context_length ({self.context_length}); shorten the prompt or "
                            "--max-tokens.")
        if vocab and T and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            bad = int(ids.max()) if int(ids.max()) >= self.vocab_size else int(ids.min())
            raise UserError(f"token id {bad} is outside the vocabulary (0..{self.vocab_size - 1}).")

    def validate(self) -> None:
        def bad(msg: str):
            raise UserError(f"invalid model config: {msg}.")

        for name in ("vocab_size", "context_length", "n_layer", "n_head", "n_kv_head",
                     "d_model", "d_ff"):
            if int(getattr(self, name)) <= 0:
                bad(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.d_model % self.n_head:
            bad(f"d_model ({self.d_model}) is not divisible by n_head ({self.n_head}); "
                "pick d_model = n_head * head_dim")
        if self.n_head % self.n_kv_head:
            bad(f"n_head ({self.n_head}) is not a multiple of n_kv_head ({self.n_kv_head}); "
                "each key/value head must serve a whole group of query heads")
        if self.norm not in NORMS:
            bad(f"norm '{self.norm}' is not one of {', '.join(NORMS)}")
        if self.activation not in ACTIVATIONS:
            bad(f"activation '{self.activation}' is not one of {', '.join(ACTIVATIONS)}")
        if self.position not in POSITIONS:
            bad(f"position '{self.position}' is not one of {', '.join(POSITIONS)}")
        if self.attention not in ("mha", "gqa", "mqa", "mla"):
            bad(f"attention '{self.attention}' is not one of mha, gqa, mqa, mla")
        if self.attention == "mla":
            for f in ("kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim"):
                if getattr(self, f) <= 0:
                    bad(f"attention 'mla' needs {f} > 0")
            if self.qk_rope_head_dim % 2:
                bad(f"qk_rope_head_dim must be even, got {self.qk_rope_head_dim}")
            if self.position != "rope":
                bad("attention 'mla' carries its positions in the decoupled RoPE key; "
                    "set position='rope'")
        elif self.position == "rope" and self.head_dim % 2:
            bad(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.rope_pairing not in ("half", "interleaved"):
            bad(f"rope_pairing '{self.rope_pairing}' is not one of half, interleaved")
        if self.position == "sinusoidal" and self.d_model % 2:
            bad(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")

    # --- serialisation: config.json -------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        if not d.get("extra", True):  # an empty field that checkpoints before 0.2 carry
            d = {k: v for k, v in d.items() if k != "extra"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"config has fields this version does not know: {', '.join(unknown)}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def n_params(self) -> int:
        """Number of parameters, counted from the shapes the engines create (params.py)."""
        return params.n_params(self)


# --- presets ---------------------------------------------------------------------------------
# Char-level presets assume the works corpus (84 characters); training replaces vocab_size
# with the tokenizer's. Parameter counts below are with that vocabulary.
PRESETS: dict[str, dict] = {
    # 2,453 parameters, enough to learn to sort 9 digits from {0, 1, 2} (toy.py): the input
    # and its sorted copy make 18 tokens, so the context is 17.
    "tinygpt": dict(vocab_size=3, context_length=17, n_layer=1, n_head=2, d_model=10, d_ff=83,
                    norm="layernorm", activation="gelu", position="learned", bias=True),
    # nanoGPT's CPU config (BENCHMARKS.md): 0.80M parameters.
    "baby": dict(vocab_size=84, context_length=64, n_layer=4, n_head=4, d_model=128,
                 norm="layernorm", activation="gelu", position="learned", bias=False),
    # Llama-style siblings: RoPE, RMSNorm, SwiGLU, grouped-query attention. tiny (97,856
    # parameters) starts the ladder the scaling sweep climbs (5.6x, 3.7x, 4x a step to large;
    # scaling.py): one family, so only the size changes along it.
    "tiny": dict(vocab_size=84, context_length=128, n_layer=2, n_head=4, n_kv_head=2,
                 d_model=64, d_ff=176, norm="rmsnorm", activation="swiglu", position="rope"),
    "small": dict(vocab_size=84, context_length=128, n_layer=4, n_head=4, n_kv_head=2,
                  d_model=112, d_ff=288, norm="rmsnorm", activation="swiglu", position="rope"),
    "medium": dict(vocab_size=84, context_length=128, n_layer=6, n_head=4, n_kv_head=2,
                   d_model=176, d_ff=464, norm="rmsnorm", activation="swiglu", position="rope"),
    "large": dict(vocab_size=84, context_length=256, n_layer=8, n_head=8, n_kv_head=4,
                  d_model=304, d_ff=800, norm="rmsnorm", activation="swiglu", position="rope"),
    # nanoGPT's GPU config: 10.65M parameters.
    "shakespeare-char": dict(vocab_size=84, context_length=256, n_layer=6, n_head=6, d_model=384,
                             norm="layernorm", activation="gelu", position="learned",
                             bias=False, dropout=0.2),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}.")
    return ModelConfig(**{**PRESETS[name], **overrides})
