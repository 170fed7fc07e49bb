"""Chunked prefill and prefix caching in the native engine (serve/scheduler.py,
serve/block_manager.py), on small random float64 models: prompts fed in chunks of any size give
the logits and greedy tokens of one whole prefill, a cached prefix gives what a cold run gives
and is counted, every block comes back (completion, preemption, cancellation), and the block
manager's hashes, reference counts and LRU behave."""

import time

import pytest
import torch

from llm_deeper.sampling import SamplingParams
from llm_deeper.serve.block_manager import BlockManager
from llm_deeper.serve.engine import GenRequest
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


def _prompts(seed, lengths):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g).tolist() for n in lengths]


def _pool_is_whole(blocks: BlockManager) -> bool:
    free = blocks.free
    return (blocks.used == 0 and not any(blocks.ref) and len(free) == blocks.num_blocks
            and sorted(free) == list(range(blocks.num_blocks)))


# ---------------------------------------------------------------- chunked prefill
@pytest.mark.parametrize("chunk", [1, 3, 5, 16])
def test_a_prompt_fed_in_chunks_gives_the_logits_of_one_prefill(chunk):
    """Chunks of 1 (the decode path of paged.py, mid-prompt), 3 and 5 (not aligned to blocks of
    4) and 16: each chunk attends to the cached positions before it, the last gives the logits
    of the whole prompt."""
    m = small_model()
    (prompt,) = _prompts(0, [23])
    cache = PagedKVCache(m.cfg, 8, 4, torch.float64)
    table = [6, 2, 7, 0, 5, 1]
    for start in range(0, len(prompt), chunk):
        z = packed_forward(m, [SeqSlice(prompt[start:start + chunk], start, table)], cache)[0]
    assert torch.allclose(z, last_logits(m, prompt), atol=1e-10)


@pytest.mark.parametrize("budget", [3, 7, 20])
def test_chunked_prefill_gives_the_greedy_tokens_of_a_whole_prefill(budget):
    """Budgets smaller than most prompts (3, 7: chunks not aligned to blocks of 16) and than
    some (20): the same greedy answers as each prompt alone, and no step feeds more tokens than
    the budget, except the one token of each decode, which always runs. (How requests arrive
    from their threads varies, so step counts are not compared.)"""
    m = small_model()
    prompts = _prompts(1, [2, 9, 17, 30, 41])
    jobs = [(p, 6) for p in prompts]
    want = [greedy_alone(m, p, 6) for p in prompts]
    with engine_for(m, max_batched_tokens=4096, enable_prefix_caching=False) as whole:
        assert tokens(run_concurrently(whole, jobs)) == want
    with engine_for(m, max_batched_tokens=budget, enable_prefix_caching=False) as chunked:
        fed, step = [], chunked._step

        def spy(batch):  # the engine thread's step, recorded: (tokens fed, decodes)
            fed.append((sum(q.n_new for q in batch), sum(q.n_new == 1 for q in batch)))
            step(batch)

        chunked._step = spy
        assert tokens(run_concurrently(chunked, jobs)) == want
    assert all(n <= max(budget, decodes) for n, decodes in fed), fed
    assert max(n for n, _ in fed) > 1  # prompts were fed, in chunks of at most the budget
    assert _pool_is_whole(chunked.scheduler.blocks)


def test_the_scheduler_runs_decodes_first_and_chunks_prompts_within_the_budget():
    blocks = BlockManager(num_blocks=32, block_size=4)
    s = Scheduler(blocks, max_num_seqs=8, max_batched_tokens=8)
    mk = lambda n: Sequence(GenRequest(list(range(n)), SamplingParams()), list(range(n)), n)
    a, b, c = mk(3), mk(10), mk(6)
    s.add(a)
    assert s.schedule() == [a] and a.n_new == 3
    a.n_cached += 3
    a.tokens.append(0)
    for x in (b, c):
        s.add(x)
    fed = []
    for _ in range(3):
        step = s.schedule()
        assert step[0] is a and a.n_new == 1  # the decode first
        assert sum(q.n_new for q in step) <= 8
        fed.append([(q.n_new, q.n_cached) for q in step[1:]])
        for q in step:
            q.n_cached += q.n_new
            if q.n_cached == len(q.tokens):
                q.tokens.append(0)
    # b: 7 tokens, then its last 3 (+ 4 of c), then c's last 2 beside b's first decode
    assert fed == [[(7, 0)], [(3, 7), (4, 0)], [(1, 10), (2, 4)]]
    assert len(b.generated) == 2 and len(c.generated) == 1 and s.preemptions == 0


# ---------------------------------------------------------------- prefix caching
def test_a_cached_prefix_gives_the_cold_answer_and_is_counted():
    """The same prompt twice, then two prompts sharing a 40-token system prefix: identical
    tokens and log-probabilities with the cache as without, and the hits counted."""
    m = small_model()
    system, q1, q2 = _prompts(2, [40, 7, 5])
    same = system[:37]  # 2 full blocks of 16, then 5 tokens
    runs = [[(same, 5)], [(same, 5)], [(system + q1, 5)], [(system + q2, 5)]]
    cold = []
    with engine_for(m, enable_prefix_caching=False) as engine:
        for jobs in runs:
            cold += run_concurrently(engine, jobs, top_logprobs=3)
        assert engine.prefix_cache_hit_tokens == 0
    warm, hits = [], []
    with engine_for(m) as engine:
        for jobs in runs:
            before = engine.prefix_cache_hit_tokens
            warm += run_concurrently(engine, jobs, top_logprobs=3)
            hits.append(engine.prefix_cache_hit_tokens - before)
        assert engine.prompt_tokens == 37 + 37 + 47 + 45
    assert hits == [0, 32, 32, 32]  # the second prompt: both full blocks of `same`; then 40 -> 32
    assert tokens(warm) == tokens(cold) == [greedy_alone(m, p, n) for (p, n), in runs]
    for w, c in zip(warm, cold):
        assert torch.allclose(torch.tensor([s.logprob for s in w]),
                              torch.tensor([s.logprob for s in c]), atol=1e-5)


def test_an_answer_continues_from_cached_generated_blocks():
    """A multi-turn chat: the second turn's prompt is the first prompt + its answer + more; the
    blocks the first answer filled are found too."""
    m = small_model()
    first, more = _prompts(3, [12, 6])
    with engine_for(m) as engine:
        (a,) = tokens(run_concurrently(engine, [(first, 30)]))
        before = engine.prefix_cache_hit_tokens
        second = first + a + more  # 48 tokens: 2 of its 3 full blocks may be shared
        (b,) = tokens(run_concurrently(engine, [(second, 4)]))
        assert engine.prefix_cache_hit_tokens - before == 32
    assert b == greedy_alone(m, second, 4)


# ---------------------------------------------------------------- every block comes back
def test_preemption_with_shared_prefixes_keeps_every_answer_and_block():
    """8 blocks of 16 for 6 requests sharing a 20-token prefix, each wanting 3 or 4 blocks, fed
    within 24 tokens a step (one prompt gets a 1-token chunk): preempted, recomputed from what
    is still cached, answers unchanged."""
    m = small_model()
    system, *tails = _prompts(4, [20, 3, 5, 7, 2, 4, 6])
    jobs = [(system + t, 24) for t in tails]
    with engine_for(m, kv_cache_bytes=0, block_size=16, max_batched_tokens=24) as engine:
        assert engine.cache.num_blocks == 8
        got = tokens(run_concurrently(engine, jobs))
    assert got == [greedy_alone(m, p, n) for p, n in jobs]
    assert engine.scheduler.preemptions > 0 and engine.prefix_cache_hit_tokens > 0
    assert _pool_is_whole(engine.scheduler.blocks)


def test_cancelled_requests_give_every_shared_block_back():
    m = small_model()
    (system,) = _prompts(5, [40])
    with engine_for(m, max_num_seqs=4) as engine:
        gens = []
        for tail in ([1, 2], [3], [4, 5, 6]):
            req = GenRequest(system + tail, SamplingParams(max_tokens=60, temperature=0))
            gens.append(engine.generate(req))
            next(gens[-1])
        assert engine.kv_blocks_used > 0 and engine.prefix_cache_hit_tokens >= 32
        for g in gens:
            g.close()  # the client went away
        deadline = time.time() + 10
        while engine.kv_blocks_used and time.time() < deadline:
            time.sleep(0.01)
        assert engine.running == 0 and _pool_is_whole(engine.scheduler.blocks)
        assert engine.scheduler.blocks.cached  # the prefix is still findable


def test_a_sequence_finished_mid_prefill_gives_its_blocks_back():
    blocks = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    s = Scheduler(blocks, max_num_seqs=4, max_batched_tokens=6)
    seq = Sequence(GenRequest(list(range(20)), SamplingParams()), list(range(20)), 20)
    s.add(seq)
    for _ in range(2):
        (x,) = s.schedule()
        x.n_cached += x.n_new
    assert seq.n_cached == 12 and blocks.used == 3
    s.finish(seq)  # cancelled half-way through its prompt
    assert _pool_is_whole(blocks) and len(blocks.cached) == 3  # its computed blocks stay cached


# ---------------------------------------------------------------- the block manager
def _seq(tokens, adapter=None):
    return Sequence(GenRequest(list(tokens), SamplingParams(), adapter), list(tokens),
                    len(tokens))


def _computed(blocks, tokens, adapter=None):
    """A sequence admitted with whatever prefix is cached, then fully computed."""
    seq = _seq(tokens, adapter)
    prefix = blocks.cached_prefix(seq)
    assert blocks.can_admit(seq, prefix, len(tokens))
    blocks.admit(seq, prefix, len(tokens))
    seq.n_cached = len(tokens)
    blocks.commit(seq)
    return seq


def test_block_hashes_chain_the_whole_prefix():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    a = bm.block_hashes(_seq([1, 2, 3, 4, 9, 9, 9, 9]), 2)
    b = bm.block_hashes(_seq([5, 2, 3, 4, 9, 9, 9, 9]), 2)
    c = bm.block_hashes(_seq([1, 2, 3, 4, 9, 9, 9, 9, 7]), 2)
    assert a == c  # the same prefix: the same names
    assert a[0] != b[0] and a[1] != b[1]  # same tokens 9 9 9 9, other beginning: another hash
    assert bm.block_hashes(_seq([1, 2, 3, 4], "ad"), 1) != a[:1]  # the adapter is in the root


def test_shared_blocks_are_reference_counted():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    a = _computed(bm, range(10))  # blocks 0..3, 4..7 full and registered; 8, 9 private
    b = _computed(bm, [*range(8), 42, 43, 44])
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert [bm.ref[x] for x in a.block_table] == [2, 2, 1] and bm.used == 4
    assert bm.hit_tokens == 8 and bm.prompt_tokens == 21
    bm.release(a)
    assert [bm.ref[x] for x in b.block_table] == [1, 1, 1] and bm.used == 3
    bm.release(b)
    assert bm.used == 0 and len(bm.evictable) == 2 and len(bm.cached) == 2


def test_at_least_the_last_prompt_token_is_computed():
    bm = BlockManager(8, 4, enable_prefix_caching=True)
    bm.release(_computed(bm, range(8)))
    again = _seq(range(8))  # 2 full blocks, both cached: only the first is taken
    assert len(bm.cached_prefix(again)) == 1
    assert len(bm.cached_prefix(_seq(range(9)))) == 2


def test_adapters_never_share_blocks_with_the_base_or_each_other():
    bm = BlockManager(16, 4, enable_prefix_caching=True)
    base = _computed(bm, range(9))
    assert bm.cached_prefix(_seq(range(9), "ad")) == []
    ad = _computed(bm, range(9), "ad")
    assert not set(ad.block_table) & set(base.block_table)
    assert bm.cached_prefix(_seq(range(9), "other")) == []
    assert len(bm.cached_prefix(_seq(range(9), "ad"))) == 2


def test_free_cached_blocks_are_evicted_least_recently_used_first():
    """Never-used blocks go first; then cached ones, the oldest released first and, within a
    sequence, its tail before its head; a block found again is fresh again."""
    bm = BlockManager(6, 2, enable_prefix_caching=True)
    a = _computed(bm, [1, 2, 3, 4, 5])  # 2 full blocks + 1 partial
    b = _computed(bm, [6, 7, 8, 9, 10])
    a_blocks, b_blocks = a.block_table[:2], b.block_table[:2]
    bm.release(a)
    bm.release(b)
    assert list(bm.evictable) == [a_blocks[1], a_blocks[0], b_blocks[1], b_blocks[0]]
    again = _computed(bm, [1, 2, 3, 4, 11])  # finds a's blocks: they leave the LRU...
    assert again.block_table[:2] == a_blocks and bm.hit_tokens == 4
    bm.release(again)  # ...and come back as the most recently used
    assert list(bm.evictable) == [b_blocks[1], b_blocks[0], a_blocks[1], a_blocks[0]]
    taken = _computed(bm, [20, 21, 22, 23, 24, 25, 26, 27])  # 4 blocks: 2 fresh, then b's two
    assert set(taken.block_table) >= set(b_blocks)
    assert len(bm.cached_prefix(_seq([6, 7, 8, 9, 10]))) == 0  # b's prefix is forgotten
    assert len(bm.cached_prefix(_seq([1, 2, 3, 4, 5]))) == 2  # a's is not
