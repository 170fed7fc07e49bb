"""The KV-cache timing helper (bench/kv_cache.py) and the figures of figures/kv.py and
figures/mla.py: the statistics, the rounds' arithmetic (with a fake clock, so no test depends on
wall-clock time), the bytes against the engines' caches, and the drawings."""

import argparse
import itertools

import pytest
import torch

from llm_deeper import sizing
from llm_deeper.bench.kv_cache import growth, measure, stats
from llm_deeper.config import ModelConfig
from llm_deeper.figures import FIGURES, kv, mla
from llm_deeper.torch_engine.model import TorchGPT, make_cache

TINY = ModelConfig(vocab_size=32, context_length=64, n_layer=1, n_head=2, n_kv_head=1,
                   d_model=16, d_ff=32, norm="rmsnorm", activation="swiglu", position="rope")


def test_stats_are_median_and_quartiles():
    assert stats([5.0]) == (5.0, 5.0, 5.0)
    assert stats([1, 2, 3, 4, 100]) == (3.0, 2.0, 4.0)  # one slow round moves nothing
    assert stats([1, 2, 3, 4]) == (2.5, 1.75, 3.25)
    rows = [{"length": 8, "cached": [1, 1], "uncached": [2, 2]},
            {"length": 16, "cached": [1, 3], "uncached": [8, 8]}]
    assert growth(rows, "cached") == 2.0 and growth(rows, "uncached") == 4.0


def _ticks():
    """A clock that advances by one second each time it is read."""
    counter = itertools.count()
    return lambda: float(next(counter))


@pytest.mark.parametrize("min_round, per_token", [(0.0, 1 / 2), (3.0, 1 / 4), (5.0, 1 / 6)])
def test_rounds_repeat_the_tokens_until_min_round(min_round, per_token):
    """Each timed round reads the clock twice. With tokens=2 the warm-up call takes 1 tick, so a
    round makes ceil(min_round / 2) passes over the 2 tokens: 1, 2 and 3 passes here."""
    model = TorchGPT(TINY, seed=0).eval()
    rows = measure(model, TINY, (4, 8), tokens=2, repeats=3, warmup=1, min_round=min_round,
                   clock=_ticks())
    assert [r["length"] for r in rows] == [4, 8]
    for r in rows:
        assert r["cached"] == r["uncached"] == [per_token] * 3


def test_measure_with_the_real_clock_and_rewinding_leaves_the_model_correct():
    model = TorchGPT(TINY, seed=0).eval()
    rows = measure(model, TINY, (8, 16), tokens=3, repeats=2, warmup=1, min_round=0.001)
    assert all(len(r["cached"]) == len(r["uncached"]) == 2 for r in rows)
    assert all(t > 0 for r in rows for t in r["cached"] + r["uncached"])
    # a rewound cache decodes the same logits as a fresh one
    ids = torch.randint(0, 32, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        cache = make_cache(TINY, 1, max_len=12)
        model(ids[:, :10], cache=cache)
        first = model(ids[:, 10:12], cache=cache)[0]
        cache.pos = 10
        again = model(ids[:, 10:12], cache=cache)[0]
        full = model(ids)[0][:, 10:12]
    assert torch.equal(first, again) and torch.allclose(first, full, atol=1e-5)


def test_kv_bytes_of_the_figure_equal_the_engines_caches():
    rows = {kind.split(" (")[0] + " " + m: b for m, kind, _, _, b in kv.kv_variants("bf16")}
    llama, ds = kv.LLAMA3_8B, kv.DEEPSEEK_V2_LITE
    for name, n_kv in (("MHA", 32), ("GQA", 8), ("MQA", 1)):
        cfg = ModelConfig(vocab_size=llama["vocab_size"], context_length=8192, n_layer=32,
                          n_head=32, n_kv_head=n_kv, d_model=4096, d_ff=14336)
        cache = make_cache(cfg, 1, max_len=1, dtype=torch.bfloat16, device="meta")
        assert rows[f"{name} Llama-3-8B"] == cache.nbytes_per_token() == 2 * 32 * n_kv * 128 * 2
    mla_cfg = ModelConfig(vocab_size=ds["vocab_size"], context_length=4096, n_layer=27,
                          n_head=16, d_model=2048, d_ff=10944, position="rope", attention="mla",
                          kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128,
                          v_head_dim=128)
    latent = make_cache(mla_cfg, 1, max_len=1, dtype=torch.bfloat16, device="meta")
    assert rows["MLA DeepSeek-V2-Lite"] == latent.nbytes_per_token() == 27 * (512 + 64) * 2
    assert rows["MHA DeepSeek-V2-Lite"] == 27 * 16 * (128 + 64 + 128) * 2
    arch = sizing.from_hf(ds)
    assert sizing.params(arch)["total"] == pytest.approx(15.7e9, rel=0.01)  # the real model


def test_figures_are_registered_and_draw(tmp_path):
    for name, page in (("kv_cache_time.png", "docs/generation.md"),
                       ("kv_bytes.png", "docs/torch-engine.md"),
                       ("mla_dataflow.png", "docs/torch-engine.md")):
        assert FIGURES[name].page == page
    assert FIGURES["kv_cache_time.png"].needs == "smollm2"
    kv.kv_bytes(tmp_path / "kv_bytes.png", True)
    mla.mla_dataflow(tmp_path / "mla_dataflow.png", True)
    rows = measure(TorchGPT(TINY, seed=0).eval(), TINY, (4, 8), tokens=1, repeats=2)
    kv.draw_times(rows, tmp_path / "times.png", "a tiny model", "1 token per round")
    for f in ("kv_bytes.png", "mla_dataflow.png", "times.png"):
        data = (tmp_path / f).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_bench_kv_cache_takes_repeats_and_warmup():
    from llm_deeper.commands import bench

    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["kv-cache", "--lengths", "64,128", "--repeats", "3", "--warmup", "0"])
    assert (args.repeats, args.warmup, args.tokens) == (3, 0, 4)
    assert p.parse_args(["kv-cache"]).repeats == 5
