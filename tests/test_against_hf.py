"""Both engines against HF transformers on tiny random models built from a config (litgpt-style).

HF builds a small GPT-2, Llama with grouped-query attention, DeepSeek-V3 (multi-head latent
attention) and MPT (ALiBi) from nothing but a config; we draw every parameter at random (norm gains
and biases too, so a swapped or dropped one shows), copy the weights into our names, and compare
full-sequence logits, logits decoded one token at a time through our KV cache, and greedy tokens
against HF `generate(do_sample=False)` (which decodes with HF's own cache). An external reference
for every attention kind, without the pretrained download; nothing here reaches a hub.

Precision. Everything runs in float64, where two correct implementations agree to ~1e-15. HF
rounds through float32 in a few places even in a `.double()` model: Llama's and DeepSeek's RMSNorm
cast their input to float32, and eager attention takes its softmax in float32 (together ~5e-7).
We run HF with SDPA attention (float64 on CPU) and with its RMSNorm modules computing in the
input's dtype (`_float64_rmsnorm`: the same formula, no cast), so that mistakes as small as a
wrong norm epsilon (~1e-5) are far above the noise. MPT's attention softmax is float32 inside its
forward; its test has a float32-sized tolerance, and ALiBi is checked again against the paper's
formula in float64.
"""

import math
import types

import numpy as np
import pytest
import torch

from llm_deeper.config import ModelConfig
from llm_deeper.numpy_engine.generate import greedy_batch as numpy_greedy
from llm_deeper.numpy_engine.model import GPT, KVCache
from llm_deeper.params import bias_name, check_params, param_shapes
from llm_deeper.torch_engine.generate import greedy_batch as torch_greedy
from llm_deeper.torch_engine.model import TorchGPT, make_cache

from conftest import rel_err

transformers = pytest.importorskip("transformers")

V, CTX = 97, 32  # vocabulary and context of every model here
T_FULL, T_PROMPT, N_NEW = CTX, 8, 16  # full-sequence length; greedy: prompt + new tokens
TOL = 1e-11  # float64 agreement, relative to the largest logit (observed: 1e-16 .. 3e-15)
# The NumPy engine computes RoPE's cos/sin in float32 on purpose (HF's angle rounding, see
# numpy_engine/positions.py), but NumPy's float32 pow and cos round differently from torch's in
# the last bit: its tables differ from HF's by up to ~2e-7, which caps its RoPE models near that
# (observed: Llama 1.5e-7, MLA 5e-8). 1e-6 still catches a norm epsilon of 1e-5 for 1e-6
# (1.8e-5 for Llama, 8e-6 for MLA) or rope_theta off by 0.01 % (2e-5).
NUMPY_ROPE_TOL = 1e-6


def tolerance(engine, cfg):
    return NUMPY_ROPE_TOL if engine == "numpy" and cfg.position == "rope" else TOL


# ------------------------------------------------------------------------------ HF models
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Every parameter drawn afresh: matrices N(0, 0.2^2), embeddings N(0, 1), norm gains
    1 + N(0, 0.2^2), biases N(0, 0.2^2). HF's init (gains 1, biases 0, std 0.02) would leave
    biases and gains untested and attention nearly uniform; these make attention peaked and every
    tensor matter. Tied tensors are drawn once (named_parameters lists them once)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim == 2:
                std = 1.0 if any(s in name for s in ("wte", "wpe", "embed")) else 0.2
                p.copy_(std * z)
            elif name.endswith("weight"):  # a norm's gain
                p.copy_(1.0 + 0.2 * z)
            else:
                p.copy_(0.2 * z)


def _float64_rmsnorm(self, x):
    """HF's RMSNorm without its float32 round trip (the same formula in the input's dtype)."""
    return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))


def _reference(model_cls, hf_cfg, seed: int):
    """An HF model from its config, float64, eval mode, random weights (see module docstring)."""
    torch.manual_seed(seed)
    hf_cfg._attn_implementation = "sdpa" if model_cls._supports_sdpa else "eager"
    model = model_cls(hf_cfg).double().eval()
    _randomize(model, seed)
    for m in model.modules():
        if type(m).__name__.endswith("RMSNorm"):
            m.forward = types.MethodType(_float64_rmsnorm, m)
    model.generation_config.eos_token_id = None  # greedy runs all N_NEW steps
    model.generation_config.pad_token_id = 0
    return model


class _Weights:
    """HF state dict that hands each tensor out once, as a float64 NumPy array; `rest()` lists
    what no mapping took (must be nothing: a weight we ignore is a weight we do not test)."""

    def __init__(self, model):
        self.sd = dict(model.state_dict())

    def __call__(self, name):
        return self.sd.pop(name).detach().double().numpy().copy()

    def tied(self, name, to):
        """HF's state dict lists a tied head separately; it must be the embedding itself."""
        assert np.array_equal(self(name), to)

    def rest(self):
        return sorted(self.sd)


# ------------------------------------------------------------------------------ GPT-2
def gpt2_to_ours(model, n_layer: int) -> dict:
    """GPT-2 -> our names. Layout differences: GPT-2's Conv1D stores weights (in, out), ours
    (out, in) like nn.Linear, so every matrix is transposed; `c_attn` fuses q|k|v along its
    output (columns), so its weight and bias split in three; the head is tied to wte."""
    w = _Weights(model)
    p = {"wte": w("transformer.wte.weight"), "wpe": w("transformer.wpe.weight"),
         "norm_f.weight": w("transformer.ln_f.weight"), "norm_f.bias": w("transformer.ln_f.bias")}
    for i in range(n_layer):
        hf, o = f"transformer.h.{i}.", f"h.{i}."
        for ours, theirs in (("norm1", "ln_1"), ("norm2", "ln_2")):
            p[f"{o}{ours}.weight"] = w(f"{hf}{theirs}.weight")
            p[f"{o}{ours}.bias"] = w(f"{hf}{theirs}.bias")
        qkv, bqkv = w(hf + "attn.c_attn.weight").T, w(hf + "attn.c_attn.bias")  # (3d, d), (3d,)
        for n, wn, bn in zip("qkv", np.split(qkv, 3), np.split(bqkv, 3)):
            p[f"{o}attn.w{n}"], p[f"{o}attn.b{n}"] = wn, bn
        for ours, theirs in (("attn.wo", "attn.c_proj"), ("ffn.w1", "mlp.c_fc"),
                             ("ffn.w2", "mlp.c_proj")):
            p[o + ours] = w(f"{hf}{theirs}.weight").T
            p[bias_name(o + ours)] = w(f"{hf}{theirs}.bias")  # h.0.attn.wo -> h.0.attn.bo
    w.tied("lm_head.weight", p["wte"])
    assert w.rest() == [], w.rest()
    return {k: np.ascontiguousarray(v) for k, v in p.items()}


def build_gpt2(seed=0):
    hf_cfg = transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=CTX, vocab_size=V, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new", layer_norm_epsilon=1e-5,
        bos_token_id=None, eos_token_id=None)
    hf = _reference(transformers.GPT2LMHeadModel, hf_cfg, seed)
    cfg = ModelConfig(vocab_size=V, context_length=CTX, n_layer=2, n_head=4, d_model=32,
                      d_ff=128, norm="layernorm", activation="gelu", position="learned",
                      attention="mha", bias=True, tie_embeddings=True, norm_eps=1e-5)
    return hf, cfg, gpt2_to_ours(hf, cfg.n_layer)


# ------------------------------------------------------------------------------ Llama (GQA)
LLAMA_LAYER = {  # HF name inside model.layers.{i}. -> ours inside h.{i}.
    "input_layernorm.weight": "norm1.weight", "self_attn.q_proj.weight": "attn.wq",
    "self_attn.k_proj.weight": "attn.wk", "self_attn.v_proj.weight": "attn.wv",
    "self_attn.o_proj.weight": "attn.wo", "post_attention_layernorm.weight": "norm2.weight",
    "mlp.gate_proj.weight": "ffn.w1", "mlp.up_proj.weight": "ffn.w3",
    "mlp.down_proj.weight": "ffn.w2",
}


def llama_to_ours(model, n_layer: int, tied: bool) -> dict:
    """Llama -> our names: nn.Linear on both sides, so no transposes. HF's q_proj/k_proj rows are
    in half-split RoPE order (feature i rotates with i + head_dim/2), which is our rope_pairing
    "half": no row permutation (that is only for llama.cpp's GGUF, see pretrained/weights.py).
    SwiGLU: gate -> w1, up -> w3, down -> w2."""
    w = _Weights(model)
    p = {"wte": w("model.embed_tokens.weight"), "norm_f.weight": w("model.norm.weight")}
    for i in range(n_layer):
        for theirs, ours in LLAMA_LAYER.items():
            p[f"h.{i}.{ours}"] = w(f"model.layers.{i}.{theirs}")
    if tied:
        w.tied("lm_head.weight", p["wte"])
    else:
        p["lm_head"] = w("lm_head.weight")
    assert w.rest() == [], w.rest()
    return p


def build_llama(tied: bool, seed=1):
    hf_cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=CTX,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 50000.0},
        tie_word_embeddings=tied, attention_bias=False, mlp_bias=False, eos_token_id=None)
    hf = _reference(transformers.LlamaForCausalLM, hf_cfg, seed)
    cfg = ModelConfig(vocab_size=V, context_length=CTX, n_layer=2, n_head=6, n_kv_head=2,
                      d_model=48, d_ff=80, norm="rmsnorm", activation="swiglu", position="rope",
                      attention="gqa", rope_theta=50000.0, tie_embeddings=tied, bias=False,
                      norm_eps=1e-6)
    return hf, cfg, llama_to_ours(hf, cfg.n_layer, tied)


# ------------------------------------------------------------------------------ DeepSeek-V3 (MLA)
MLA_LAYER = {  # HF name inside model.layers.{i}. -> ours inside h.{i}.
    "input_layernorm.weight": "norm1.weight", "post_attention_layernorm.weight": "norm2.weight",
    "self_attn.q_a_proj.weight": "attn.wq_a",
    "self_attn.q_a_layernorm.weight": "attn.q_norm.weight",
    "self_attn.q_b_proj.weight": "attn.wq_b", "self_attn.q_proj.weight": "attn.wq",
    "self_attn.kv_a_proj_with_mqa.weight": "attn.wkv_a",
    "self_attn.kv_a_layernorm.weight": "attn.kv_norm.weight",
    "self_attn.kv_b_proj.weight": "attn.wkv_b", "self_attn.o_proj.weight": "attn.wo",
    "mlp.gate_proj.weight": "ffn.w1", "mlp.up_proj.weight": "ffn.w3",
    "mlp.down_proj.weight": "ffn.w2",
}


def deepseek_to_ours(model, n_layer: int) -> dict:
    """DeepSeek-V3 -> our names, one for one, no transposes. The layouts agree: each query head is
    [nope | rope]; kv_a_proj_with_mqa outputs [kv_lora_rank latent | qk_rope_head_dim key];
    kv_b_proj outputs per head [nope key | value]. With `rope_interleave` HF rotates adjacent
    pairs (x0, x1), (x2, x3), ... (our "interleaved") and writes the rotated features out
    de-interleaved, evens then odds; queries and keys get the same permutation, so the scores are
    those of ours, which keeps the pairs in place. Without it, half-split (our "half")."""
    w = _Weights(model)
    p = {"wte": w("model.embed_tokens.weight"), "norm_f.weight": w("model.norm.weight"),
         "lm_head": w("lm_head.weight")}
    for i in range(n_layer):
        for theirs, ours in MLA_LAYER.items():
            if f"model.layers.{i}.{theirs}" in w.sd:  # q_proj, or q_a_proj/q_a_layernorm/q_b_proj
                p[f"h.{i}.{ours}"] = w(f"model.layers.{i}.{theirs}")
    assert w.rest() == [], w.rest()
    return p


MLA_CASES = {  # name -> (q_lora_rank, HF rope_interleave)
    "q_lora-interleaved": (24, True),  # DeepSeek-V2/V3 as released: compressed queries
    "no_q_lora-interleaved": (None, True),  # V2-Lite: queries straight from x (our wq)
    "q_lora-half": (24, False),
}


def build_mla(case: str, seed=2):
    q_lora, interleave = MLA_CASES[case]
    n_layer = 2
    hf_cfg = transformers.DeepseekV3Config(
        vocab_size=V, hidden_size=48, intermediate_size=80, num_hidden_layers=n_layer,
        first_k_dense_replace=n_layer,  # every layer dense: no mixture of experts
        num_attention_heads=4, num_key_value_heads=4, q_lora_rank=q_lora, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10, max_position_embeddings=CTX,
        rms_norm_eps=1e-6,  # HF's q_a/kv_a norms use 1e-6 whatever this says; ours use norm_eps
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rope_interleave=interleave, tie_word_embeddings=False, attention_bias=False,
        bos_token_id=None, eos_token_id=None)
    hf = _reference(transformers.DeepseekV3ForCausalLM, hf_cfg, seed)
    cfg = ModelConfig(vocab_size=V, context_length=CTX, n_layer=n_layer, n_head=4, d_model=48,
                      d_ff=80, norm="rmsnorm", activation="swiglu", position="rope",
                      attention="mla", q_lora_rank=q_lora or 0, kv_lora_rank=16,
                      qk_rope_head_dim=8, qk_nope_head_dim=12, v_head_dim=10,
                      rope_pairing="interleaved" if interleave else "half",
                      tie_embeddings=False, bias=False, norm_eps=1e-6)
    return hf, cfg, deepseek_to_ours(hf, n_layer)


# ------------------------------------------------------------------------------ the comparisons
BUILDERS = {
    "gpt2": build_gpt2,
    "llama-gqa-untied": lambda: build_llama(tied=False),
    "llama-gqa-tied": lambda: build_llama(tied=True),
    **{f"mla-{c}": (lambda c=c: build_mla(c)) for c in MLA_CASES},
}
_BUILT: dict = {}


def built(name):
    """(hf_model, cfg, params, ids, hf_logits, hf_greedy), built once per module."""
    if name not in _BUILT:
        hf, cfg, params = BUILDERS[name]()
        check_params(cfg, params, f"the {name} mapping")
        g = torch.Generator().manual_seed(123)
        ids = torch.randint(0, V, (2, T_FULL), generator=g)
        with torch.no_grad():
            logits = hf(ids).logits.numpy()
            prompt = ids[:, :T_PROMPT]
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              use_cache=True, max_new_tokens=N_NEW, min_new_tokens=N_NEW)
        assert out.shape == (2, T_PROMPT + N_NEW)
        _BUILT[name] = (hf, cfg, params, ids, logits, out[:, T_PROMPT:].numpy())
    return _BUILT[name]


class Engine:
    """One interface over both engines: full logits, logits step by step through the KV cache,
    greedy tokens."""

    def __init__(self, kind, cfg, params):
        self.kind = kind
        if kind == "numpy":
            self.m = GPT(cfg, {k: np.asarray(v, np.float64) for k, v in params.items()})
        else:
            self.m = TorchGPT(cfg, params, dtype=torch.float64).eval()
            self.m.use_sdpa = kind == "torch"  # "torch-explicit": softmax(QK^T/sqrt(d)) V

    def logits(self, ids):
        if self.kind == "numpy":
            return self.m.forward(ids.numpy())[0]
        with torch.no_grad():
            return self.m(ids)[0].numpy()

    def stepwise(self, ids, k):
        """Prefill ids[:, :k], then feed the rest one token at a time through the cache."""
        B, T = ids.shape
        if self.kind == "numpy":
            cache = KVCache(self.m.cfg, B, dtype=np.float64)
            run = lambda x: self.m.forward(x.numpy(), kv_cache=cache)[0]
        else:
            cache = make_cache(self.m.cfg, B, dtype=torch.float64)
            run = lambda x: self.m(x, cache=cache)[0].numpy()
        with torch.no_grad():
            parts = [run(ids[:, :k])] + [run(ids[:, t:t + 1]) for t in range(k, T)]
        return np.concatenate(parts, axis=1)

    def greedy(self, prompt, n):
        if self.kind == "numpy":
            return numpy_greedy(self.m, prompt.numpy(), n)
        return torch_greedy(self.m, prompt, n).numpy()


def _check(ours, ref, tol, what):
    err = rel_err(ours, ref)
    print(f"{what}: max abs {np.abs(ours - ref).max():.2e}, rel {err:.2e} (tol {tol:.0e})")
    assert err < tol, f"{what}: relative error {err:.3e} > {tol:.0e}"


ENGINES = ["numpy", "torch", "torch-explicit"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_logits_match_transformers(arch, engine):
    """Full-sequence logits (2 x 32 tokens, the whole context), and the same logits produced by a
    prefill of 5 tokens then single steps through the KV cache, equal HF's full forward to float64
    rounding (the NumPy engine's RoPE models: to its float32 RoPE tables, see NUMPY_ROPE_TOL)."""
    _, cfg, params, ids, ref, _ = built(arch)
    model, tol = Engine(engine, cfg, params), tolerance(engine, cfg)
    _check(model.logits(ids), ref, tol, f"{arch}/{engine} full")
    _check(model.stepwise(ids, 5), ref, tol, f"{arch}/{engine} cached")


@pytest.mark.parametrize("engine", ["numpy", "torch"])
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_greedy_matches_transformers_generate(arch, engine):
    """16 greedy tokens from an 8-token prompt (batch of 2) with our KV cache are HF generate's
    greedy tokens (HF decodes with its own cache)."""
    _, cfg, params, ids, _, ref = built(arch)
    ours = Engine(engine, cfg, params).greedy(ids[:, :T_PROMPT], N_NEW)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("case", list(MLA_CASES))
def test_mla_absorbed_decode_matches_transformers(case):
    """MLA's absorbed path (keys' and values' up-projections folded into the query and output,
    attention over the cached latents) gives HF's logits, full-sequence and step by step through
    the latent cache, and HF's greedy tokens. HF only runs the naive path (it expands K and V)."""
    _, cfg, params, ids, ref, ref_tokens = built(f"mla-{case}")
    model = Engine("torch", cfg, params)
    model.m.mla_absorb = True
    _check(model.logits(ids), ref, TOL, f"mla-{case}/absorbed full")
    _check(model.stepwise(ids, 5), ref, TOL, f"mla-{case}/absorbed cached")
    np.testing.assert_array_equal(model.greedy(ids[:, :T_PROMPT], N_NEW), ref_tokens)


def test_llama_mapping_is_the_export_mapping():
    """The HF names this file maps Llama with are the ones `llm-deeper export --hf` writes."""
    from llm_deeper.pretrained.weights import hf_name

    for theirs, ours in LLAMA_LAYER.items():
        assert hf_name(f"h.3.{ours}") == f"model.layers.3.{theirs}"
    assert hf_name("wte") == "model.embed_tokens.weight"
    assert hf_name("norm_f.weight") == "model.norm.weight"
    assert hf_name("lm_head") == "lm_head.weight"


# ------------------------------------------------------------------------------ ALiBi
def mpt_to_ours(model, n_layer: int) -> dict:
    """MPT -> our names. MPT has no position embedding (ALiBi), LayerNorms without bias, no
    linear biases, a head tied to wte; `Wqkv` is an nn.Linear fusing q|k|v along its output
    (rows): split in three."""
    w = _Weights(model)
    p = {"wte": w("transformer.wte.weight"), "norm_f.weight": w("transformer.norm_f.weight")}
    for i in range(n_layer):
        hf, o = f"transformer.blocks.{i}.", f"h.{i}."
        p[o + "norm1.weight"] = w(hf + "norm_1.weight")
        p[o + "norm2.weight"] = w(hf + "norm_2.weight")
        for n, wn in zip("qkv", np.split(w(hf + "attn.Wqkv.weight"), 3)):
            p[f"{o}attn.w{n}"] = wn
        p[o + "attn.wo"] = w(hf + "attn.out_proj.weight")
        p[o + "ffn.w1"] = w(hf + "ffn.up_proj.weight")
        p[o + "ffn.w2"] = w(hf + "ffn.down_proj.weight")
    w.tied("lm_head.weight", p["wte"])
    assert w.rest() == [], w.rest()
    return p


ALIBI_ENGINES = ["numpy", "torch", "torch-explicit"]


@pytest.mark.parametrize("engine", ALIBI_ENGINES)
def test_alibi_matches_transformers_mpt(engine):
    """Our ALiBi model equals HF's MPT: full logits, logits through the KV cache (where the bias
    must use absolute query positions), greedy tokens.

    Two concessions, both outside ALiBi: MPT's FFN uses exact (erf) GELU, ours the tanh form, so
    MPT's activation is swapped for the tanh form here; and MPT takes its attention softmax in
    float32 even in a float64 model, so the tolerance is float32-sized (observed 6e-8). Four
    heads: a power of two, where MPT's slopes are the paper's 2^(-8h/H) (for other head counts
    MPT, BLOOM and the paper's code interleave the slopes of the nearest power of two)."""
    n_layer, T = 2, 20
    hf_cfg = transformers.MptConfig(
        d_model=32, n_heads=4, n_layers=n_layer, expansion_ratio=4, max_seq_len=CTX,
        vocab_size=V, no_bias=True, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
        attn_config={"alibi": True, "alibi_bias_max": 8, "attn_pdrop": 0})
    hf = _reference(transformers.MptForCausalLM, hf_cfg, seed=3)
    for block in hf.transformer.blocks:
        block.ffn.act = torch.nn.GELU(approximate="tanh")
    cfg = ModelConfig(vocab_size=V, context_length=CTX, n_layer=n_layer, n_head=4, d_model=32,
                      d_ff=128, norm="layernorm", activation="gelu", position="alibi",
                      attention="mha", bias=False, tie_embeddings=True, norm_eps=1e-5)
    params = mpt_to_ours(hf, n_layer)
    check_params(cfg, params, "the MPT mapping")
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = hf(ids).logits.numpy()
        prompt = ids[:, :T_PROMPT]
        ref_tokens = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                                 use_cache=True, max_new_tokens=N_NEW, min_new_tokens=N_NEW)
    model = Engine(engine, cfg, params)
    _check(model.logits(ids), ref, 1e-6, f"mpt/{engine} full")
    _check(model.stepwise(ids, 5), ref, 1e-6, f"mpt/{engine} cached")
    np.testing.assert_array_equal(model.greedy(prompt, N_NEW), ref_tokens[:, T_PROMPT:].numpy())


def test_alibi_slopes_are_the_papers():
    """Press et al. 2022, section 3: for 8 heads the slopes are 1/2, 1/4, ..., 1/256; for 16,
    the geometric sequence from 2^-0.5 with ratio 2^-0.5. The engines keep them in float32 (as
    MPT and BLOOM do), exact for 8 heads, within float32 rounding for 16."""
    from llm_deeper.torch_engine.positions import alibi_slopes

    np.testing.assert_array_equal(alibi_slopes(8).numpy(), 2.0 ** -np.arange(1, 9))
    np.testing.assert_allclose(alibi_slopes(16).numpy(), 2.0 ** (-0.5 * np.arange(1, 17)),
                               rtol=1e-7)


def _layer_norm(x, p, name, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p[name + ".weight"] + p[name + ".bias"]


@pytest.mark.parametrize("engine", ALIBI_ENGINES)
def test_alibi_attention_equals_the_papers_formula(engine):
    """A 1-layer ALiBi model (8 heads) equals the model written out in float64 NumPy from the
    paper: per head h of H,
        score[i, j] = q_i . k_j / sqrt(d_head) - m_h (i - j)  for j <= i,  m_h = 2^(-8h/H),
    softmax over j, times V, heads concatenated, output projection; whole sequence and through
    the KV cache. The FFN's output weights are zero, so the block is x + attention(norm1(x)) and
    the logits are norm_f(that) @ wte^T: nothing but the formula and two LayerNorms."""
    H, d, T = 8, 64, 12
    hd = d // H
    cfg = ModelConfig(vocab_size=V, context_length=CTX, n_layer=1, n_head=H, d_model=d, d_ff=8,
                      norm="layernorm", activation="gelu", position="alibi", bias=True,
                      tie_embeddings=True)
    rng = np.random.default_rng(5)
    params = {k: (1.0 if k.endswith(".weight") else 0.0) + rng.normal(0.0, 0.3, s)
              for k, s in param_shapes(cfg).items()}
    params["h.0.ffn.w2"][:], params["h.0.ffn.b2"][:] = 0.0, 0.0
    ids = torch.from_numpy(rng.integers(0, V, (2, T)))
    # by hand
    x = params["wte"][ids.numpy()]
    h = _layer_norm(x, params, "h.0.norm1")

    def heads(n):  # (B, H, T, hd)
        y = h @ params[f"h.0.attn.w{n}"].T + params[f"h.0.attn.b{n}"]
        return y.reshape(2, T, H, hd).transpose(0, 2, 1, 3)

    q, k, v = heads("q"), heads("k"), heads("v")
    m = 2.0 ** (-8.0 * np.arange(1, H + 1) / H)
    i, j = np.arange(T)[:, None], np.arange(T)[None, :]
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd) - m[:, None, None] * (i - j)
    scores = np.where(j <= i, scores, -np.inf)
    att = np.exp(scores - scores.max(-1, keepdims=True))
    att /= att.sum(-1, keepdims=True)
    a = (att @ v).transpose(0, 2, 1, 3).reshape(2, T, d)
    x = x + a @ params["h.0.attn.wo"].T + params["h.0.attn.bo"]
    ref = _layer_norm(x, params, "norm_f") @ params["wte"].T
    # the engine
    model = Engine(engine, cfg, params)
    _check(model.logits(ids), ref, 1e-12, f"alibi formula/{engine} full")
    _check(model.stepwise(ids, 4), ref, 1e-12, f"alibi formula/{engine} cached")
