# %% [markdown]
# # Prefix caching and chunked prefill
#
# Two refinements of the paged engine of lesson 01, both on by default in `llm-deeper serve`
# (src/llm_deeper/serve/block_manager.py, scheduler.py):
#
# 1. **Prefix caching** (vLLM's automatic prefix caching; SGLang's RadixAttention). Attention is
#    causal, so the keys and values of the first t tokens depend on those t tokens only: two
#    requests that begin alike (a system prompt, the earlier turns of a chat) have equal K/V
#    there. A full block of the cache is named by a hash of its tokens *chained* with the hash of
#    the block before, h_i = hash(h_(i-1), tokens of block i), so a hash names the whole prefix.
#    A new request looks its leading blocks up and shares the ones found: they are prefilled once.
# 2. **Chunked prefill** (Sarathi-Serve; vLLM). Every step has a budget of new tokens. Decodes go
#    first; prompts fill what is left, and a prompt longer than that is fed over several steps,
#    so one long prompt never makes every running stream wait for a huge step.
#
# Everything here runs on a small random model, where the bookkeeping can be printed.

# %%
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import preset
from llm_deeper.sampling import SamplingParams
from llm_deeper.serve.block_manager import BlockManager
from llm_deeper.serve.engine import GenRequest
from llm_deeper.serve.native import NativeEngine
from llm_deeper.serve.scheduler import Scheduler, Sequence
from llm_deeper.torch_engine.model import TorchGPT

from _common import QUICK, check

torch.set_grad_enabled(False)


def seq(tokens):
    return Sequence(GenRequest([], SamplingParams()), list(tokens), len(tokens))


# %% [markdown]
# ## Block hashes: a name for a whole prefix
#
# Blocks of 4 tokens. The system prompt is tokens 100..107 (two full blocks). Request A asks one
# question, B another; D changes only the first token of the system prompt.

# %%
B = 4
blocks = BlockManager(num_blocks=12, block_size=B, enable_prefix_caching=True)
system = list(range(100, 108))
A, Bq, D = seq(system + [1, 2, 3]), seq(system + [7, 8]), seq([99] + system[1:] + [5])
for name, s in (("A", A), ("B", Bq), ("D", D)):
    hs = blocks.block_hashes(s, (len(s.tokens)) // B)
    print(f"{name}: tokens {s.tokens}\n   full-block hashes {[h % 10_000 for h in hs]} (mod 10^4)")
check("A and B name their two system-prompt blocks alike",
      blocks.block_hashes(A, 2) == blocks.block_hashes(Bq, 2))
check("D's second block holds the same tokens as A's but another prefix: another hash",
      D.tokens[4:8] == A.tokens[4:8]
      and blocks.block_hashes(D, 2)[1] != blocks.block_hashes(A, 2)[1])

# %% [markdown]
# ## Sharing, reference counts and the last token
#
# A is admitted cold: nothing is cached, it gets 3 fresh blocks. Once its prompt is computed
# (here we just say so: `n_cached`), its *full* blocks are registered under their hashes. B then
# finds both and shares them (reference count 2); only B's own 2 tokens need computing. A request
# whose whole prompt is cached still computes its last token: the model's output at that token
# is the next-token distribution, so at most floor((n - 1) / B) blocks are shared.

# %%
prefix = blocks.cached_prefix(A)
blocks.admit(A, prefix, len(A.tokens))
A.n_cached = len(A.tokens)  # the engine's step computed its keys and values
blocks.commit(A)
prefix_b = blocks.cached_prefix(Bq)
blocks.admit(Bq, prefix_b, len(Bq.tokens))
print(f"A's block table {A.block_table}, B's {Bq.block_table}; B starts at n_cached = "
      f"{Bq.n_cached}")
print(f"reference counts of A's blocks: {[blocks.ref[b] for b in A.block_table]}")
check("B shares A's two system-prompt blocks", Bq.block_table[:2] == A.block_table[:2])
check("shared blocks are counted twice, A's own block once",
      [blocks.ref[b] for b in A.block_table] == [2, 2, 1])
C = seq(system)  # exactly the system prompt, 2 full blocks
check("a fully cached prompt still computes its last token: 1 block shared, not 2",
      len(blocks.cached_prefix(C)) == 1)
print(f"prompt tokens so far {blocks.prompt_tokens}, found in the cache {blocks.hit_tokens}")

# %% [markdown]
# ## Free, but still cached: an LRU of blocks
#
# When A and B finish, their blocks' reference counts fall to 0. The blocks are free, yet their
# K/V stay valid, so they wait on a least-recently-used list: a later request can still find
# them. Only when no never-used block is left is the oldest cached one taken over (its hash
# forgotten). A request frees its blocks tail first, so a prefix's tail goes before its head (a
# tail is useless without its head).

# %%
blocks.release(A)
blocks.release(Bq)
print(f"used {blocks.used}; free, never used: {list(blocks.fresh)}; free but cached (LRU "
      f"first): {list(blocks.evictable)}")
E = seq(system + [42])
blocks.admit(E, blocks.cached_prefix(E), len(E.tokens))
check("a later request still finds the system prompt", E.n_cached == 8)
blocks.release(E)
hog = seq(range(200, 200 + 4 * (blocks.num_free - 1)))  # takes all but one free block
blocks.admit(hog, blocks.cached_prefix(hog), len(hog.tokens))
print(f"after a request took {len(hog.block_table)} blocks: still cached "
      f"{sorted(blocks.cached.values())}")
check("fresh blocks went first, then the least recently used cached ones",
      len(blocks.cached) == 1)
blocks.release(hog)

# %% [markdown]
# ## The real engine: the same answer, fewer tokens computed
#
# A small random model behind the native engine (float64). The same 40-token "system prompt"
# starts three requests; the first computes it, the next find it.

# %%
model = TorchGPT(preset("small", vocab_size=64), seed=0, dtype=torch.float64).eval()
tok = type("Tok", (), {"eos_token_id": None, "chat_template": None})
g = torch.Generator().manual_seed(0)
sys_prompt = torch.randint(0, 64, (40,), generator=g).tolist()
questions = [torch.randint(0, 64, (5,), generator=g).tolist() for _ in range(3)]


def answer(engine, prompt, n=8):
    req = GenRequest(prompt, SamplingParams(max_tokens=n, temperature=0), top_logprobs=1)
    return [(s.token, s.logprob) for s in engine.generate(req)]


with NativeEngine("lesson", torch_model=model, tokenizer=tok, block_size=16,
                  enable_prefix_caching=False) as cold:
    want = [answer(cold, sys_prompt + q) for q in questions]
with NativeEngine("lesson", torch_model=model, tokenizer=tok, block_size=16) as warm:
    got = [answer(warm, sys_prompt + q) for q in questions]
    hits, total = warm.prefix_cache_hit_tokens, warm.prompt_tokens
    left = warm.kv_blocks_used
print(f"prompt tokens {total}, found in the cache {hits} ({100 * hits / total:.0f} %): the "
      f"2 full blocks of 16 of the 40-token prompt, for the 2nd and 3rd request")
check("cached prefixes give the cold answers",
      [[t for t, _ in a] for a in got] == [[t for t, _ in a] for a in want])
check("... with the same log-probabilities (float64 rounding)",
      max(abs(x[1] - y[1]) for a, b in zip(got, want) for x, y in zip(a, b)) < 1e-9)
check("2 requests x 32 tokens found", hits == 64)
check("every block back", left == 0)

# %% [markdown]
# ## Chunked prefill, step by step
#
# A budget of 8 new tokens per step. One request is decoding; a 10-token prompt P and a 6-token
# prompt Q arrive. The scheduler gives the decode its token first, then fills the budget with
# prompt chunks, oldest first. We play the engine's part: each scheduled sequence computes its
# `n_new` tokens, and one whose tokens are all computed gets a (fake) next token; from then on
# it decodes, one token a step (P from step 3).

# %%
sched = Scheduler(BlockManager(32, 4), max_num_seqs=8, max_batched_tokens=8)
running = seq([1, 2, 3])
sched.add(running)
for s in sched.schedule():  # its prompt
    s.n_cached += s.n_new
running.tokens.append(0)
P, Q = seq(range(10, 20)), seq(range(30, 36))
sched.add(P)
sched.add(Q)
plan = []
for step in range(4):
    batch = sched.schedule()
    plan.append([(("decode" if s is running else "P" if s is P else "Q"),
                  s.n_cached, s.n_cached + s.n_new) for s in batch])
    for s in batch:
        s.n_cached += s.n_new
        if s.n_cached == len(s.tokens):
            s.tokens.append(0)  # sampled
    print(f"step {step + 1}: " + ", ".join(f"{n} tokens[{a}:{b}]" for n, a, b in plan[-1]))
check("every step within the budget", all(sum(b - a for _, a, b in p) <= 8 for p in plan))
check("the decode runs in every step", all(p[0][0] == "decode" for p in plan))
check("P is split: its chunks cover it end to end",
      [(a, b) for p in plan for n, a, b in p if n == "P"][:2] == [(0, 7), (7, 10)])

# %% [markdown]
# And through the engine: a budget of 8 makes a 30-token prompt take 4 steps, with the same
# greedy answer as one whole prefill.

# %%
long_prompt = torch.randint(0, 64, (30,), generator=g).tolist()
answers, steps = {}, {}
for budget in (2048, 8):
    with NativeEngine("lesson", torch_model=model, tokenizer=tok,
                      max_batched_tokens=budget) as engine:
        answers[budget] = [t for t, _ in answer(engine, long_prompt, 6 if QUICK else 12)]
        steps[budget] = engine.steps
        print(f"budget {budget:4d}: {steps[budget]} steps for the prompt and "
              f"{len(answers[budget])} tokens (the step that ends the prompt gives the first)")
check("chunked prefill gives the answer of one whole prefill", answers[8] == answers[2048])
check("the prompt took 4 steps (8 + 8 + 8 + 6 tokens) instead of 1",
      steps[8] - steps[2048] == 3)

# %% [markdown]
# With SmolLM2-135M on the 2-core CPU, `llm-deeper bench serve --shared-prefix 400` measures
# what the cache buys: time to first token at 16 concurrent requests 10.8 s -> 1.9 s
# (docs/serving.md).
#
# ## Exercises
#
# 1. Give the first block's hash a root that depends on the LoRA adapter's name (it does:
#    `block_hashes`). Why must an adapter request never share blocks with the base model?
# 2. Set `max_batched_tokens=1` in the last cell. How many steps does the prompt take now, and
#    what would that cost in time to first token on a real model?
# 3. A chat's second turn resends the first turn's prompt and answer. Which of its blocks can be
#    found in the cache, and why not the last partial block of the first answer?
# 4. Two identical prompts arriving in the same step do not share (a block is registered only
#    once it is computed). Sketch a change that would let the second wait for the first's blocks.
