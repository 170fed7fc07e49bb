"""`ModelConfig`: one dataclass that describes every decoder in the learning path.

GPT-2-style models (learned positions, LayerNorm, GELU, tied embeddings) and Llama-style models
(RoPE, RMSNorm, SwiGLU, grouped-query attention) are points in the same space, so the NumPy
engine, the PyTorch engine and the checkpoints all read this one description.

Parameter names are shared by every engine and by checkpoints (`config.json` +
`model.safetensors`); weights of linear layers are stored `(out_features, in_features)` as in
PyTorch, so `y = x @ W.T`:

    wte                     (vocab_size, d_model)       token embedding
    wpe                     (context_length, d_model)   learned positions only
    h.{i}.norm1.weight/.bias                            pre-attention norm (bias: LayerNorm + bias)
    h.{i}.attn.wq/.wk/.wv/.wo (+ .bq/.bk/.bv/.bo)       attention projections
    h.{i}.norm2.weight/.bias                            pre-FFN norm
    h.{i}.ffn.w1 (+ .b1)    (d_ff, d_model)             up (GELU/ReLU) or gate (SwiGLU)
    h.{i}.ffn.w3            (d_ff, d_model)             up (SwiGLU only)
    h.{i}.ffn.w2 (+ .b2)    (d_model, d_ff)             down
    norm_f.weight/.bias                                 final norm
    lm_head                 (vocab_size, d_model)       untied head only
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .errors import UserError

NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "relu", "swiglu")
POSITIONS = ("learned", "sinusoidal", "rope", "none")


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
    attention: str = "mha"  # mha|gqa|mqa: a name for n_kv_head (mla arrives with the torch engine)
    tie_embeddings: bool = True
    bias: bool = False
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.n_kv_head is None:
            self.n_kv_head = {"mqa": 1}.get(self.attention, self.n_head)
        if self.d_ff is None:
            self.d_ff = 4 * self.d_model
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

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
        if self.attention not in ("mha", "gqa", "mqa"):
            bad(f"attention '{self.attention}' is not supported by this engine "
                "(mha, gqa, mqa; set n_kv_head to choose the grouping)")
        if self.position == "rope" and self.head_dim % 2:
            bad(f"RoPE needs an even head_dim, got {self.head_dim}")
        if self.position == "sinusoidal" and self.d_model % 2:
            bad(f"sinusoidal positions need an even d_model, got {self.d_model}")
        if not 0.0 <= self.dropout < 1.0:
            bad(f"dropout must be in [0, 1), got {self.dropout}")

    # --- serialisation: config.json -------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"config has fields this version does not know: {', '.join(unknown)}.")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    def n_params(self) -> int:
        """Number of parameters, counted from the shapes the engines create."""
        from .numpy_engine.model import param_shapes

        return sum(int(_prod(s)) for s in param_shapes(self).values())


def _prod(shape) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


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
    # Llama-style siblings: RoPE, RMSNorm, SwiGLU, grouped-query attention.
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
