"""Training: AdamW, schedule and clipping against PyTorch; gradient accumulation; exact resume;
Ctrl-C keeps a checkpoint; corrupt checkpoints are one sentence."""

import json

import numpy as np
import pytest
import torch

from llm_deeper.checkpoint import load_checkpoint
from llm_deeper.config import ModelConfig
from llm_deeper.errors import UserError
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.numpy_engine.optim import AdamW, clip_grad_norm
from llm_deeper.numpy_engine.train import NumpyTrainer
from llm_deeper.tokenizers import CharTokenizer
from llm_deeper.train import TrainConfig, lr_at, train

from conftest import rel_err

TEXT = "".join(f"{i} little pigs went to market; {i * 7 % 13} came home.\n" for i in range(300))


def small_cfg(vocab, **kw):
    base = dict(vocab_size=vocab, context_length=16, n_layer=2, n_head=2, d_model=16,
                position="rope", norm="rmsnorm", activation="swiglu")
    return ModelConfig(**{**base, **kw})


def test_adamw_matches_torch():
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    opt = AdamW(params, ["w", "b"], lr=0.01, betas=(0.9, 0.99), weight_decay=0.1)
    tw, tb = (torch.tensor(params[k].copy(), requires_grad=True) for k in ("w", "b"))
    topt = torch.optim.AdamW([{"params": [tw], "weight_decay": 0.1},
                              {"params": [tb], "weight_decay": 0.0}], lr=0.01, betas=(0.9, 0.99),
                             eps=1e-8)
    for step in range(5):
        g = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
        opt.step(g, lr=0.01 * (step + 1) / 5)
        for grp in topt.param_groups:
            grp["lr"] = 0.01 * (step + 1) / 5
        tw.grad, tb.grad = torch.tensor(g["w"]), torch.tensor(g["b"])
        topt.step()
    assert rel_err(params["w"], tw.detach()) < 1e-10 and rel_err(params["b"], tb.detach()) < 1e-10


def test_schedule_and_clipping():
    assert lr_at(0, 1.0, 0.1, 10, 100) == pytest.approx(1 / 11)
    assert lr_at(10, 1.0, 0.1, 10, 100) == pytest.approx(1.0)
    assert lr_at(55, 1.0, 0.1, 10, 100) == pytest.approx(0.55)
    assert lr_at(100, 1.0, 0.1, 10, 100) == pytest.approx(0.1)
    rng = np.random.default_rng(1)
    g = {"a": rng.normal(size=(5, 5)), "b": rng.normal(size=7)}
    tg = [torch.tensor(g["a"], requires_grad=True), torch.tensor(g["b"], requires_grad=True)]
    for t_, k in zip(tg, ("a", "b")):
        t_.grad = torch.tensor(g[k])
    norm = clip_grad_norm(g, 1.0)
    tnorm = torch.nn.utils.clip_grad_norm_(tg, 1.0)
    assert norm == pytest.approx(tnorm.item())
    assert rel_err(g["a"], tg[0].grad) < 1e-6 and rel_err(g["b"], tg[1].grad) < 1e-6


def test_gradient_accumulation_equals_one_big_batch():
    cfg = small_cfg(11)
    model = GPT(cfg, seed=0, dtype=np.float64)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 11, (8, 16)), rng.integers(0, 11, (8, 16))
    _, big = model.loss_and_grads(x, y)
    _, g1 = model.loss_and_grads(x[:4], y[:4], scale=0.5)
    _, g2 = model.loss_and_grads(x[4:], y[4:], scale=0.5)
    for k in big:
        assert rel_err(g1[k] + g2[k], big[k]) < 1e-10


def _run(out, steps, stop_after=None, resume=False, dropout=0.1):
    tok = CharTokenizer.train(TEXT)
    ids = np.array(tok.encode(TEXT))
    cfg = small_cfg(tok.vocab_size, dropout=dropout)
    tc = TrainConfig(steps=steps, batch_size=4, grad_accum=2, warmup=3, eval_interval=4,
                     eval_iters=2, final_eval_iters=2, lr=3e-3)
    model = GPT(cfg, seed=tc.seed)
    return train(NumpyTrainer(model), tok, ids[:3000], ids[3000:], tc, out, resume=resume,
                 progress=False,
                 stop_after=stop_after, log=lambda *_: None)


def test_resume_gives_bit_identical_losses(tmp_path):
    full = _run(tmp_path / "a", 12)
    first = _run(tmp_path / "b", 12, stop_after=5)
    assert first["interrupted"] and first["step"] == 5
    second = _run(tmp_path / "b", 12, resume=True)
    assert second["step"] == 12
    assert second["history"]["train"] == full["history"]["train"]  # every loss, bit for bit
    assert second["history"]["val"] == full["history"]["val"]
    a = load_checkpoint(tmp_path / "a")[1]
    b = load_checkpoint(tmp_path / "b")[1]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert (tmp_path / "b" / "loss_curve.png").stat().st_size > 1000


def test_ctrl_c_saves_a_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = GPT.loss_and_grads

    def interrupting(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 7:  # in the 4th step (2 micro-batches per step)
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(GPT, "loss_and_grads", interrupting)
    r = _run(tmp_path / "c", 12)
    assert r["interrupted"] and r["step"] == 3
    state = json.loads((tmp_path / "c" / "trainer_state.json").read_text())
    assert state["step"] == 3
    monkeypatch.setattr(GPT, "loss_and_grads", real)
    assert _run(tmp_path / "c", 12, resume=True)["step"] == 12


def test_training_lowers_the_loss(tmp_path):
    r = _run(tmp_path / "d", 40, dropout=0.0)
    losses = [l for _, l in r["history"]["train"]]
    assert np.mean(losses[-5:]) < losses[0] - 0.4  # from ln(vocab) to what unigrams allow


def test_corrupt_or_missing_checkpoint_is_one_sentence(tmp_path):
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nothing")
    _run(tmp_path / "e", 4)
    (tmp_path / "e" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "e")
    (tmp_path / "e" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(tmp_path / "e")


def test_invalid_configs_name_the_problem():
    with pytest.raises(UserError, match="not divisible by n_head"):
        ModelConfig(d_model=30, n_head=4)
    with pytest.raises(UserError, match="not a multiple of n_kv_head"):
        ModelConfig(n_head=4, n_kv_head=3)
    from llm_deeper.config import preset

    with pytest.raises(UserError, match="unknown preset"):
        preset("gigantic")
