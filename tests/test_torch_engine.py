"""The PyTorch engine: KV caches for every attention kind, SDPA vs explicit attention, the fused
decode weights, one checkpoint format for both engines, training and exact resume."""

import json

import numpy as np
import pytest
import torch

from conftest import rel_err
from llm_deeper.checkpoint import load_checkpoint, save_checkpoint
from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.numpy_engine.train import TrainConfig
from llm_deeper.tokenizers import CharTokenizer
from llm_deeper.torch_engine.model import KVCache, TorchGPT
from llm_deeper.torch_engine.train import train_torch

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
    return train_torch(cfg, tok, ids[:3000], ids[3000:], tc, out, resume=resume, progress=False,
                       stop_after=stop_after, log=lambda *_: None)


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
