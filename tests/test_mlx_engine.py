"""The MLX engine (mlx_engine/): from the same parameters it gives the NumPy engine's logits,
loss and gradients; its AdamW steps are the NumPy engine's; `train --engine mlx --preset baby`
through the CLI writes a checkpoint the NumPy engine reads back to the same validation loss;
resume is exact within the engine and refused across engines; what it lacks is refused in one
sentence. On Linux these run on MLX's CPU backend (mlx[cpu]); skipped where MLX is missing.

Tolerances (float32 both sides): logits within 1e-5 of the logits' largest magnitude (measured
~4e-7), loss within 1e-5, each gradient within 1e-4 relative + 1e-6 of the largest gradient.
"""

import dataclasses
import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="MLX is not installed (pip install 'mlx[cpu]')")

from llm_deeper.config import ModelConfig, preset  # noqa: E402
from llm_deeper.errors import UserError  # noqa: E402
from llm_deeper.mlx_engine.model import MlxGPT  # noqa: E402
from llm_deeper.mlx_engine.train import MlxTrainer  # noqa: E402
from llm_deeper.numpy_engine.model import GPT  # noqa: E402
from llm_deeper.numpy_engine.train import NumpyTrainer  # noqa: E402
from llm_deeper.params import init_params  # noqa: E402
from llm_deeper.train import TrainConfig  # noqa: E402

TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n"
               for i in range(400))

CONFIGS = {
    "baby": preset("baby", context_length=32),
    "llama": preset("small", context_length=32),  # rmsnorm, swiglu, rope, GQA
    "alibi-bias-untied-mqa": ModelConfig(vocab_size=30, context_length=16, n_layer=2, n_head=4,
                                         n_kv_head=1, d_model=32, position="alibi", bias=True,
                                         activation="relu", tie_embeddings=False),
    "sinusoidal-interleaved": ModelConfig(vocab_size=30, context_length=16, n_layer=2, n_head=4,
                                          d_model=32, position="sinusoidal", norm="rmsnorm"),
    "rope-interleaved": ModelConfig(vocab_size=30, context_length=16, n_layer=1, n_head=2,
                                    d_model=16, position="rope", rope_pairing="interleaved"),
}


def _params(cfg, seed=0):
    """init_params with the gains and biases moved off 1 and 0, so they are tested too."""
    p = init_params(cfg, seed)
    rng = np.random.default_rng(seed + 1)
    return {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) if v.ndim == 1 else v
            for k, v in p.items()}


def _batch(cfg, B=2, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, cfg.vocab_size, (B, cfg.context_length)),
            rng.integers(0, cfg.vocab_size, (B, cfg.context_length)))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_loss_and_gradients_equal_the_numpy_engines(name):
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    cfg = CONFIGS[name]
    p = _params(cfg)
    x, y = _batch(cfg)
    ref = GPT(cfg, {k: v.copy() for k, v in p.items()})
    ref_logits, ref_loss = ref.forward(x, y, keep=True)
    ref_grads = ref.backward()
    model = MlxGPT(cfg, p)
    logits, loss = model(x, y)
    assert np.abs(np.array(logits) - ref_logits).max() <= 1e-5 * np.abs(ref_logits).max()
    assert abs(loss.item() - ref_loss) < 1e-5
    loss2, grads = nn.value_and_grad(model, lambda a, b: model(a, b)[1])(x, y)
    grads = dict(tree_flatten(grads))
    assert set(grads) == set(ref_grads)
    top = max(np.abs(g).max() for g in ref_grads.values())
    for k, g in ref_grads.items():
        np.testing.assert_allclose(np.array(grads[k]), g, rtol=1e-4, atol=1e-6 * top, err_msg=k)


def test_adamw_steps_and_optimizer_state_match_the_numpy_engine():
    """Three steps of two micro-batches each, clipping active: the same losses, gradient norms,
    parameters and AdamW moments, saved under the same names."""
    cfg = CONFIGS["llama"]
    tc = TrainConfig(lr=3e-3, weight_decay=0.1, grad_clip=0.5)
    p = init_params(cfg, 0)
    ref = NumpyTrainer(GPT(cfg, {k: v.copy() for k, v in p.items()}))
    ours = MlxTrainer(MlxGPT(cfg, p))
    ref.setup(tc)
    ours.setup(tc)
    for s in range(3):
        mb = [_batch(cfg, 2, seed=10 * s + i) for i in range(2)]
        (l1, n1), (l2, n2) = ref.step(mb, 1e-3 * (s + 1)), ours.step(mb, 1e-3 * (s + 1))
        assert abs(l1 - l2) < 1e-5 and abs(n1 - n2) < 1e-4 * n1
    params, opt, rng = ours.state()
    ref_opt = ref.opt.state_dict()
    assert set(opt) == set(ref_opt) and int(opt["t"][0]) == 3 and rng is None
    for k, v in ref.model.params.items():  # the updates (3 steps) within 1 % of their size
        moved = np.abs(v - p[k]).max()
        assert np.abs(params[k] - v).max() <= 1e-2 * moved, (k, moved)
    for k, v in ref_opt.items():
        assert np.abs(opt[k] - v).max() <= 1e-3 * np.abs(v).max() + 1e-9, k


def _train(out, steps, cfg, *, stop_after=None, resume=False):
    from llm_deeper.tokenizers import CharTokenizer
    from llm_deeper.train import train

    tok = CharTokenizer.train(TEXT)
    ids = np.asarray(tok.encode(TEXT))
    tc = TrainConfig(steps=steps, batch_size=2, grad_accum=2, warmup=2, eval_interval=3,
                     eval_iters=1, final_eval_iters=1, lr=3e-3)
    trainer = MlxTrainer(MlxGPT(cfg.replace(vocab_size=tok.vocab_size), init_params(
        cfg.replace(vocab_size=tok.vocab_size), tc.seed)))
    return train(trainer, tok, ids[:3000], ids[3000:], tc, out, resume=resume, progress=False,
                 stop_after=stop_after, log=lambda *_: None)


def test_resume_gives_the_same_losses_with_dropout(tmp_path):
    cfg = ModelConfig(context_length=16, n_layer=1, n_head=2, d_model=16, dropout=0.1)
    full = _train(tmp_path / "a", 6, cfg)
    _train(tmp_path / "b", 6, cfg, stop_after=2)
    resumed = _train(tmp_path / "b", 6, cfg, resume=True)
    assert resumed["history"] == full["history"]
    state = json.loads((tmp_path / "b" / "trainer_state.json").read_text())
    assert state["engine"] == "mlx" and state["dropout_rng"]["mlx_dropout_draws"] == 12


def test_what_the_engine_lacks_is_one_sentence():
    from llm_deeper.engines import make_trainer

    mla = ModelConfig(vocab_size=20, context_length=8, n_layer=1, n_head=2, d_model=16,
                      attention="mla", position="rope", kv_lora_rank=8, qk_rope_head_dim=4,
                      qk_nope_head_dim=4, v_head_dim=8)
    with pytest.raises(UserError, match="no multi-head latent attention") as e:
        make_trainer("mlx", mla, 0)
    assert str(e.value).count(". ") == 0 and "\n" not in str(e.value)
    cfg = CONFIGS["rope-interleaved"]
    lora = {**init_params(cfg), "h.0.attn.wq.lora_A": np.zeros((2, 16), np.float32)}
    with pytest.raises(UserError, match="LoRA"):
        MlxGPT(cfg, lora)


# --- the command line: train --engine mlx --preset baby, then the NumPy engine reads it --------

@pytest.fixture(scope="module")
def baby_run(tmp_path_factory):
    """`train --engine mlx --preset baby --steps 30` through cli.main, batch 2. The final
    validation estimate is 4 batches instead of TrainConfig's 200 (which would take ~30 s on the
    CPU backend's reference BLAS): the same code, fewer batches."""
    import llm_deeper.train as loop
    from llm_deeper.cli import main

    @dataclasses.dataclass
    class QuickFinal(TrainConfig):
        final_eval_iters: int = 4

    d = tmp_path_factory.mktemp("mlx-cli")
    (d / "text.txt").write_text(TEXT)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(d)
        mp.setattr(loop, "TrainConfig", QuickFinal)
        code = main(["train", "--engine", "mlx", "--preset", "baby", "--data", "text.txt",
                     "--steps", "30", "--batch-size", "2", "--warmup", "5", "--lr", "3e-3",
                     "--eval-interval", "10", "--eval-iters", "4", "--no-progress",
                     "--out", "ck"])
    assert code == 0
    return d


def test_cli_mlx_checkpoint_gives_the_numpy_engines_validation_loss(baby_run):
    from llm_deeper.checkpoint import load_checkpoint
    from llm_deeper.data import split_train_val
    from llm_deeper.train import estimate_loss

    ck = load_checkpoint(baby_run / "ck")
    assert ck.state["engine"] == "mlx" and ck.state["step"] == 30
    assert ck.state["preset"] == "baby" and ck.config.n_layer == 4 and ck.config.d_model == 128
    val = [v for _, v in ck.state["history"]["val"]]
    assert len(val) == 3 and val[-1] < val[0]  # steps 10, 20, 30
    # the NumPy engine, from the checkpoint, on the loop's validation batches: MLX's number
    _, val_ids = split_train_val(np.asarray(ck.tokenizer.encode(TEXT), dtype=np.int64))
    again = estimate_loss(NumpyTrainer(GPT(ck.config, ck.params)), val_ids, 4, 2,
                          ck.state["train_config"]["seed"] + 2)
    assert abs(again - val[-1]) < 1e-5
    x, _ = _batch(ck.config, 1)
    ours = np.array(MlxGPT(ck.config, ck.params)(x)[0])
    theirs = GPT(ck.config, ck.params).forward(x)[0]
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()


def test_cli_resume_with_another_engine_is_refused(baby_run, monkeypatch, capsys):
    from llm_deeper.cli import main

    monkeypatch.chdir(baby_run)
    before = (baby_run / "ck" / "trainer_state.json").read_text()
    code = main(["train", "--resume", "--out", "ck", "--engine", "numpy", "--steps", "40",
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "was trained by the mlx engine, not numpy" in err
    assert (baby_run / "ck" / "trainer_state.json").read_text() == before


def test_cli_generate_greedy_is_the_same_in_both_engines(baby_run, monkeypatch, capsys):
    from llm_deeper.cli import main

    monkeypatch.chdir(baby_run)
    texts = {}
    for engine in ("numpy", "mlx"):
        assert main(["generate", "--checkpoint", "ck", "--engine", engine, "--prompt", "Line 1",
                     "--temperature", "0", "--max-tokens", "24"]) == 0
        texts[engine] = capsys.readouterr().out
    assert texts["mlx"] == texts["numpy"] and len(texts["mlx"]) > len("Line 1")
