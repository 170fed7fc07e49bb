"""The PyTorch engine: KV caches for every attention kind, SDPA vs explicit attention, the fused
decode weights, one checkpoint format for both engines, training and exact resume."""

import json

import numpy as np
import pytest
import torch

from llm_deeper.checkpoint import load_checkpoint, save_checkpoint
from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.params import init_params
from llm_deeper.tokenizers import CharTokenizer
from llm_deeper.torch_engine.model import KVCache, TorchGPT
from llm_deeper.torch_engine.train import TorchTrainer
from llm_deeper.train import TrainConfig, train

from conftest import rel_err

KINDS = {"mha": dict(n_kv_head=4), "gqa": dict(n_kv_head=2), "mqa": dict(n_kv_head=1)}


def cfg_for(kind, **kw):
    base = dict(vocab_size=17, context_length=24, n_layer=2, n_head=4, d_model=32, d_ff=48,
                norm="rmsnorm", activation="swiglu", position="rope")
    return ModelConfig(**{**base, **KINDS[kind], **kw})


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_cached_logits_equal_uncached(kind, use_sdpa):
    cfg = cfg_for(kind)
    model = TorchGPT(cfg, seed=1, dtype=torch.float64).eval()
    model.use_sdpa = use_sdpa
    ids = torch.randint(0, 17, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids)[0]
        cache = KVCache(cfg, 2, dtype=torch.float64)
        parts = [model(ids[:, :5], cache=cache)[0], model(ids[:, 5:9], cache=cache)[0]]  # chunks
        parts += [model(ids[:, t:t + 1], cache=cache)[0] for t in range(9, 20)]  # then 1 by 1
    assert rel_err(torch.cat(parts, 1), full) < 1e-12


@pytest.mark.parametrize("kind", KINDS)
def test_sdpa_equals_explicit_and_numpy(kind):
    cfg = cfg_for(kind, position="learned", norm="layernorm", activation="gelu", bias=True)
    model = TorchGPT(cfg, seed=2, dtype=torch.float64).eval()
    ids = torch.randint(0, 17, (2, 24))
    with torch.no_grad():
        a = model(ids)[0]
        model.use_sdpa = False
        b = model(ids)[0]
    np_logits = GPT(cfg, {k: v.detach().numpy() for k, v in model.param_dict().items()}) \
        .forward(ids.numpy())[0]
    assert rel_err(a, b) < 1e-12 and rel_err(np_logits, a) < 1e-10


def test_fused_decode_weights_give_the_same_logits():
    cfg = cfg_for("gqa")
    model = TorchGPT(cfg, seed=3).eval()
    ids = torch.randint(0, 17, (1, 12))
    with torch.no_grad():
        ref = model(ids)[0]
        model.fuse_for_inference()
        cache = KVCache(cfg, 1)
        out = torch.cat([model(ids[:, :6], cache=cache)[0]] +
                        [model(ids[:, t:t + 1], cache=cache)[0] for t in range(6, 12)], 1)
    assert rel_err(out, ref) < 1e-5


TEXT = "".join(f"{i} little pigs went to market; {i * 7 % 13} came home.\n" for i in range(300))


def _train_torch(out, steps, stop_after=None, resume=False):
    tok = CharTokenizer.train(TEXT)
    ids = np.array(tok.encode(TEXT))
    cfg = cfg_for("gqa", vocab_size=tok.vocab_size, context_length=16)
    tc = TrainConfig(steps=steps, batch_size=4, grad_accum=2, warmup=2, eval_interval=4,
                     eval_iters=2, final_eval_iters=2, lr=3e-3)
    trainer = TorchTrainer(TorchGPT(cfg, init_params(cfg, tc.seed)))
    r = train(trainer, tok, ids[:3000], ids[3000:], tc, out, resume=resume, progress=False,
              stop_after=stop_after, log=lambda *_: None)
    return {**r, "model": trainer.model}


def test_torch_checkpoint_loads_in_numpy_and_back(tmp_path):
    r = _train_torch(tmp_path / "t", 8)
    losses = [l for _, l in r["history"]["train"]]
    assert losses[-1] < losses[0]
    cfg, params, tok, state = load_checkpoint(tmp_path / "t")
    assert state["engine"] == "torch"
    ids = np.array([tok.encode("12 little pigs")])
    np_logits = GPT(cfg, params).forward(ids)[0]
    with torch.no_grad():
        t_logits = r["model"].eval()(torch.from_numpy(ids))[0].numpy()
    assert np.abs(np_logits - t_logits).max() < 1e-4
    # and a NumPy checkpoint in the torch engine
    np_model = GPT(cfg, seed=5)
    save_checkpoint(tmp_path / "n", cfg, np_model.params, tok)
    cfg2, params2, _, _ = load_checkpoint(tmp_path / "n")
    with torch.no_grad():
        back = TorchGPT(cfg2, params2).eval()(torch.from_numpy(ids))[0].numpy()
    assert np.abs(back - np_model.forward(ids)[0]).max() < 1e-4


def test_torch_resume_gives_the_same_losses(tmp_path):
    full = _train_torch(tmp_path / "a", 8)
    _train_torch(tmp_path / "b", 8, stop_after=3)
    resumed = _train_torch(tmp_path / "b", 8, resume=True)
    assert resumed["history"]["train"] == full["history"]["train"]
    assert json.loads((tmp_path / "b" / "trainer_state.json").read_text())["step"] == 8


def test_missing_device_is_one_sentence():
    from llm_deeper.torch_engine.train import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UserError, match="no CUDA device"):
        resolve_device("cuda")


def test_prompt_longer_than_context_names_both_lengths():
    model = TorchGPT(cfg_for("mha"))
    with pytest.raises(UserError, match=r"\(30 tokens\).*context_length \(24\)"):
        model(torch.zeros(1, 30, dtype=torch.long))


MLA = dict(attention="mla", kv_lora_rank=12, qk_rope_head_dim=4, qk_nope_head_dim=8,
           v_head_dim=6)


@pytest.mark.parametrize("q_lora_rank", [0, 10])
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_mla_cache_and_absorbed_path(q_lora_rank, use_sdpa):
    from llm_deeper.torch_engine.mla import LatentCache
    from llm_deeper.torch_engine.model import make_cache

    cfg = cfg_for("mha", q_lora_rank=q_lora_rank, **MLA)
    model = TorchGPT(cfg, seed=4, dtype=torch.float64).eval()
    model.use_sdpa = use_sdpa
    ids = torch.randint(0, 17, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)[0]  # naive path, no cache
        for absorb in (False, True):
            model.mla_absorb = absorb
            cache = make_cache(cfg, 2, dtype=torch.float64)
            assert isinstance(cache, LatentCache)
            parts = [model(ids[:, :6], cache=cache)[0]]
            parts += [model(ids[:, t:t + 1], cache=cache)[0] for t in range(6, 16)]
            assert rel_err(torch.cat(parts, 1), full) < 1e-10, absorb
    # the cache holds the latent and one RoPE key per token and layer, nothing per head
    assert cache.nbytes_per_token() == cfg.n_layer * (12 + 4) * 8
    assert cfg.kv_cache_numbers_per_token() == 2 * 16


def test_mla_trains():
    cfg = cfg_for("mha", **MLA)
    model = TorchGPT(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 17, (4, 16), generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(30):
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_alibi_cache_sdpa_and_slopes():
    from llm_deeper.torch_engine.positions import alibi_bias, alibi_slopes

    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(h + 1) for h in range(8)]))
    b = alibi_bias(2, 3, 3, 0, torch.float64, "cpu")
    assert b[0, 2, 0] == -2 * 2 ** -4 and b[0, 0, 1] == float("-inf")
    cfg = cfg_for("gqa", position="alibi")
    model = TorchGPT(cfg, seed=5, dtype=torch.float64).eval()
    ids = torch.randint(0, 17, (2, 20))
    with torch.no_grad():
        full = model(ids)[0]
        cache = KVCache(cfg, 2, dtype=torch.float64)
        parts = [model(ids[:, :8], cache=cache)[0]] + \
            [model(ids[:, t:t + 1], cache=cache)[0] for t in range(8, 20)]
        model.use_sdpa = False
        explicit = model(ids)[0]
    assert rel_err(torch.cat(parts, 1), full) < 1e-12 and rel_err(explicit, full) < 1e-12


def test_interleaved_rope_is_half_split_with_permuted_rows():
    """The two RoPE pairings are the same model up to a permutation of wq/wk rows — the one
    that weights.unpermute_rope_rows applies to GGUF files."""
    from llm_deeper.pretrained.weights import unpermute_rope_rows

    inter = cfg_for("gqa", rope_pairing="interleaved")
    half = cfg_for("gqa")
    params = TorchGPT(inter, seed=6, dtype=torch.float64).param_dict()
    params = {k: v.detach().numpy().copy() for k, v in params.items()}
    permuted = dict(params)
    for i in range(inter.n_layer):
        permuted[f"h.{i}.attn.wq"] = unpermute_rope_rows(params[f"h.{i}.attn.wq"], inter.n_head)
        permuted[f"h.{i}.attn.wk"] = unpermute_rope_rows(params[f"h.{i}.attn.wk"], inter.n_kv_head)
    ids = torch.randint(0, 17, (1, 12))
    with torch.no_grad():
        a = TorchGPT(inter, params, dtype=torch.float64)(ids)[0]
        b = TorchGPT(half, permuted, dtype=torch.float64)(ids)[0]
    assert rel_err(a, b) < 1e-12
