"""The native serving engine on small random models: the packed paged forward equals the plain
model, continuous batching and preemption give every request the answer it would get alone,
a request that goes away gives its KV blocks back, and LoRA adapters equal PEFT's."""

import time

import pytest
import torch

from llm_deeper.sampling import SamplingParams
from llm_deeper.serve.block_manager import BlockManager
from llm_deeper.serve.engine import GenRequest
from llm_deeper.serve.native import load_lora
from llm_deeper.serve.scheduler import Scheduler, Sequence
from llm_deeper.torch_engine.paged import PagedKVCache, SeqSlice, packed_forward
from native_helpers import (
    V,
    engine_for,
    greedy_alone,
    last_logits,
    run_concurrently,
    small_model,
    tokens,
)


@pytest.mark.parametrize("name", ["small", "baby"])  # RoPE + GQA + SwiGLU; learned + LayerNorm
def test_packed_forward_equals_the_model(name):
    """Prefills and decodes of several sequences packed in one step, block tables scattered,
    a prefill joining mid-way, and a prefill that continues a cached prefix."""
    g = torch.Generator().manual_seed(0)
    m = small_model(name)
    cache = PagedKVCache(m.cfg, 40, 4, torch.float64)
    seqs = [torch.randint(0, V, (n,), generator=g).tolist() for n in (7, 1, 13, 5)]
    tables = [[5, 1], [2], [3, 0, 6, 4], [7, 8]]
    free = iter(range(14, 40))
    logits = packed_forward(m, [SeqSlice(s, 0, t) for s, t in zip(seqs, tables)], cache)
    for s, z in zip(seqs, logits):
        assert torch.allclose(last_logits(m, s), z, atol=1e-10)
    late = torch.randint(0, V, (9,), generator=g).tolist()
    for step in range(6):
        nxt = [int(z.argmax()) for z in logits[:4]]
        batch = []
        for s, t, tok in zip(seqs, tables, nxt):
            if len(s) + 1 > 4 * len(t):
                t.append(next(free))
            batch.append(SeqSlice([tok], len(s), t))
            s.append(tok)
        if step == 2:
            batch.append(SeqSlice(late, 0, [9, 10, 11]))
        logits = packed_forward(m, batch, cache)
        for s, z in zip(seqs, logits):
            assert torch.allclose(last_logits(m, s), z, atol=1e-10)
        if step == 2:
            assert torch.allclose(last_logits(m, late), logits[4], atol=1e-10)
    s, t, extra = seqs[0], tables[0], [3, 4, 5]
    while len(s) + 3 > 4 * len(t):
        t.append(next(free))
    z = packed_forward(m, [SeqSlice(extra, len(s), t)], cache)[0]
    assert torch.allclose(last_logits(m, s + extra), z, atol=1e-10)








def test_continuous_batching_gives_each_request_its_own_answer():
    """12 requests of different lengths, at most 4 decoded together: admitted as others finish,
    each gets exactly the greedy answer it gets alone, in fewer steps than one at a time."""
    m = small_model()
    g = torch.Generator().manual_seed(1)
    jobs = [(torch.randint(0, V, (3 + 2 * i,), generator=g).tolist(), 4 + (i * 5) % 11)
            for i in range(12)]
    with engine_for(m, max_num_seqs=4) as engine:
        got = tokens(run_concurrently(engine, jobs))
    assert got == [greedy_alone(m, p, n) for p, n in jobs]
    assert engine.steps < sum(n for _, n in jobs)
    assert engine.kv_blocks_used == 0 and engine.running == 0


def test_preemption_when_blocks_run_out_keeps_every_answer():
    """A pool of 8 blocks of 16 slots (one context of 128) for 6 requests that want 3 blocks
    each: the newest running ones are preempted and recomputed later, answers unchanged."""
    m = small_model()
    g = torch.Generator().manual_seed(2)
    jobs = [(torch.randint(0, V, (20,), generator=g).tolist(), 24) for _ in range(6)]
    with engine_for(m, kv_cache_bytes=0, block_size=16) as engine:
        assert engine.cache.num_blocks == 8
        got = tokens(run_concurrently(engine, jobs))
    assert got == [greedy_alone(m, p, n) for p, n in jobs]
    assert engine.scheduler.preemptions > 0
    assert engine.kv_blocks_used == 0


def test_scheduler_admits_by_blocks_and_preempts_the_newest():
    blocks = BlockManager(num_blocks=4, block_size=4)
    s = Scheduler(blocks, max_num_seqs=8)
    mk = lambda n: Sequence(GenRequest(list(range(n)), SamplingParams()), list(range(n)), n)
    a, b, c = mk(7), mk(8), mk(3)  # 2 + 2 blocks; c does not fit
    for x in (a, b, c):
        s.add(x)
    assert s.schedule() == [a, b] and list(s.waiting) == [c] and blocks.used == 4
    for x in (a, b):
        x.n_cached = len(x.tokens)
        x.tokens.append(0)
    # a (8 tokens) still fits its 2 blocks; b needs a third: b itself is the newest, so it goes
    assert s.schedule() == [a] and list(s.waiting) == [b, c] and b.block_table == []
    assert b.preemptions == 1 and blocks.used == 2


def test_a_request_that_goes_away_frees_its_blocks():
    with engine_for(small_model(), max_num_seqs=4) as engine:
        req = GenRequest([1, 2, 3], SamplingParams(max_tokens=100, temperature=0.8, seed=0))
        gen = engine.generate(req)
        next(gen), next(gen)
        assert engine.kv_blocks_used > 0
        gen.close()  # the server closes it when the client disconnects
        deadline = time.time() + 10
        while engine.kv_blocks_used and time.time() < deadline:
            time.sleep(0.01)
        assert engine.kv_blocks_used == 0 and engine.running == 0


def test_closing_the_engine_stops_its_thread_and_fails_what_waits():
    """close() ends the engine's thread; a request still waiting gets an error, not a hang."""
    engine = engine_for(small_model(), max_num_seqs=1)
    thread = engine._thread
    busy = engine.generate(GenRequest([1, 2], SamplingParams(max_tokens=90, temperature=0)))
    next(busy)
    engine.close()
    assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="stopped"):
        list(busy)


def test_lora_adapters_in_one_step_equal_peft(tmp_path):
    """Base rows and adapter rows in the same packed step: each equals transformers + PEFT."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from llm_deeper.hf.models import random_lora
    from llm_deeper.pretrained.weights import export_hf

    m = small_model(dtype=torch.float32, tie_embeddings=True)
    params = {k: v.detach().numpy() for k, v in m.named_parameters()}
    export_hf(tmp_path / "hf", m.cfg, params)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    peft = random_lora(hf, rank=4, alpha=8, std=0.2)  # every linear layer
    peft.save_pretrained(tmp_path / "ad")
    lora = {"ad": load_lora(tmp_path / "ad", m.cfg, torch.float32, "cpu")}
    ids = [3, 1, 4, 1, 5, 9, 2, 6]
    cache = PagedKVCache(m.cfg, 8, 4)
    out = packed_forward(m, [SeqSlice(ids, 0, [0, 1], "ad"), SeqSlice(ids, 0, [2, 3])], cache,
                         lora)
    with torch.no_grad():
        with_ad = peft(torch.tensor([ids])).logits[0, -1]
        with peft.disable_adapter():
            base = peft(torch.tensor([ids])).logits[0, -1]
    assert (with_ad - base).abs().max() > 0.1  # the adapter matters
    assert torch.allclose(out[0], with_ad, atol=1e-4)
    assert torch.allclose(out[1], base, atol=1e-4)
