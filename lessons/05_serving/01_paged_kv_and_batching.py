# %% [markdown]
# # Serving many requests: a paged KV cache and continuous batching
#
# A server answers many people at once. Two ideas make that cheap, and the native engine of
# `llm-deeper serve` is built from both (src/llm_deeper/serve/native.py,
# src/llm_deeper/torch_engine/paged.py):
#
# 1. **Paged KV cache** (PagedAttention, Kwon et al. 2023). Instead of one contiguous cache per
#    request, sized for the longest answer it might give, the cache is a pool of small blocks
#    (here 16 token slots). A request holds a *block table*; token t lives in block
#    `table[t // 16]` at offset `t % 16`. Memory grows a block at a time and a finished request
#    returns its blocks at once.
# 2. **Continuous batching** (Orca, Yu et al. 2022). The scheduler decides *every step* who
#    takes part: running requests decode one token each, waiting ones are admitted when there is
#    room, finished ones leave. All their new tokens go through the model in one packed pass, so
#    the weights are read once per step for everybody.
#
# This lesson runs both on a small random model, where every number can be printed.

# %%
import sys
import threading
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
from llm_deeper.torch_engine.paged import PagedKVCache, SeqSlice, packed_forward

from _common import QUICK, check

torch.set_grad_enabled(False)
cfg = preset("small", vocab_size=64)  # RoPE, RMSNorm, SwiGLU, 4 query heads sharing 2 KV heads
model = TorchGPT(cfg, seed=0, dtype=torch.float64).eval()
print(f"model: {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads / "
      f"{cfg.n_kv_head} KV heads, context {cfg.context_length}")

# %% [markdown]
# ## Block tables: where each token's keys and values live
#
# Three requests of 5, 11 and 3 tokens, blocks of 4 slots. Each takes ceil(n / 4) blocks from
# the free pool; the slot of token t is `table[t // 4] * 4 + t % 4`.

# %%
blocks = BlockManager(num_blocks=8, block_size=4)
seqs = [Sequence(GenRequest([], SamplingParams()), list(range(n)), n) for n in (5, 11, 3)]
for s in seqs:
    blocks.grow(s, len(s.tokens))
    slots = [s.block_table[t // 4] * 4 + t % 4 for t in range(len(s.tokens))]
    print(f"{len(s.tokens):2d} tokens -> blocks {s.block_table}, slots {slots}")
print(f"free blocks: {list(blocks.free)}  (used {blocks.used} of {blocks.num_blocks})")
wasted = sum(len(s.block_table) * 4 - len(s.tokens) for s in seqs)
print(f"empty slots in partly filled blocks: {wasted} (at most block_size - 1 per request)")
check("each request holds ceil(n / block_size) blocks",
      [len(s.block_table) for s in seqs] == [2, 3, 1] and blocks.used == 6)
blocks.release(seqs[1])
check("a finished request gives its blocks back", blocks.used == 3)

# %% [markdown]
# ## One packed step for everybody equals each request on its own
#
# Request A prefills 7 tokens while request B, already 12 tokens in, decodes one. Their 8 new
# tokens are laid end to end, (8, d_model): each projection and MLP is one matrix product over
# the 8 rows. Attention alone is per request, through each block table. The logits must equal
# the plain model run on each request's whole sequence.

# %%
g = torch.Generator().manual_seed(0)
a = torch.randint(0, 64, (7,), generator=g).tolist()
b = torch.randint(0, 64, (13,), generator=g).tolist()
cache = PagedKVCache(cfg, num_blocks=16, block_size=4, dtype=torch.float64)
table_a, table_b = [3, 9], [0, 5, 12, 7]  # any free blocks, in any order
packed_forward(model, [SeqSlice(b[:12], 0, table_b)], cache)  # B's first 12 tokens, earlier
logits = packed_forward(model, [SeqSlice(a, 0, table_a), SeqSlice(b[12:], 12, table_b)], cache)
ref_a = model(torch.tensor([a]))[0][0, -1]
ref_b = model(torch.tensor([b]))[0][0, -1]
err = max((logits[0] - ref_a).abs().max().item(), (logits[1] - ref_b).abs().max().item())
print(f"packed step vs the plain model, largest difference: {err:.1e}")
check("packed paged step == the plain model (float64)", err < 1e-10)

# %% [markdown]
# ## The scheduler, step by step
#
# A pool of 6 blocks of 4 slots (24 token slots) and four requests that each want 9 prompt
# tokens and 6 more: 15 tokens, 4 blocks each, so at most one fits whole. Watch requests being
# admitted, decoding together, being *preempted* when the pool runs dry (the newest gives its
# blocks back and waits, to be recomputed later), and finishing.

# %%
sched = Scheduler(BlockManager(num_blocks=6, block_size=4), max_num_seqs=4)
reqs = [Sequence(GenRequest(list(range(9)), SamplingParams(max_tokens=6)), list(range(9)), 9)
        for _ in range(4)]
names = {id(s): "ABCD"[i] for i, s in enumerate(reqs)}
for s in reqs:
    sched.add(s)
finished, step = [], 0
while sched.running or sched.waiting:
    batch = sched.schedule()
    step += 1
    line = ", ".join(f"{names[id(s)]}+{len(s.tokens) - s.n_cached}" for s in batch)
    for s in batch:  # pretend the model ran: every sequence gains one token
        s.n_cached = len(s.tokens)
        s.tokens.append(0)
        if len(s.generated) == s.req.params.max_tokens:
            sched.finish(s)
            finished.append(names[id(s)])
    print(f"step {step:2d}: [{line}]  waiting {''.join(names[id(s)] for s in sched.waiting)}"
          f"  free blocks {len(sched.blocks.free)}")
print(f"finished in order {finished}; preemptions: {sched.preemptions}")
check("everyone finishes, the pool is whole again",
      sorted(finished) == list("ABCD") and sched.blocks.used == 0)
check("the pool ran dry: some request was preempted", sched.preemptions > 0)

# %% [markdown]
# `A+9` is a prefill (9 new tokens), `A+1` a decode step. A preempted request comes back with
# all its tokens so far as one prefill, and carries on where it stopped: nothing it already
# sent is lost or sent twice.
#
# ## Batching pays: tokens per second against the number of requests in flight
#
# The real engine (a thread running the loop above with the model) serving 1, 4 and 16
# requests at once. A decode step reads every weight once whatever the batch size, so more
# requests per step means more tokens per second, until compute catches up with memory.

# %%
import time

engine = NativeEngine("lesson", torch_model=TorchGPT(preset("medium", vocab_size=512), seed=0),
                      tokenizer=type("Tok", (), {"eos_token_id": None, "chat_template": None}))
new_tokens = 16 if QUICK else 48


def serve_at_once(n: int) -> float:
    def one(i):
        req = GenRequest([i % 512] * 8, SamplingParams(max_tokens=new_tokens, temperature=0))
        for _ in engine.generate(req):
            pass
    t0 = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n * new_tokens / (time.perf_counter() - t0)


rates, steps = {}, {}
with engine:  # the engine's thread stops when the block ends
    serve_at_once(2)  # warm-up
    for n in (1, 4, 16):
        before = engine.steps
        rates[n] = serve_at_once(n)
        steps[n] = engine.steps - before
    blocks_left = engine.kv_blocks_used
for n, r in rates.items():
    print(f"{n:2d} requests at once: {r:8.0f} tokens/s  ({r / rates[1]:.1f}x), "
          f"{steps[n]} model steps for {n * new_tokens} tokens")
# Timings vary from machine to machine; the step counts do not. Requests that arrive together
# share steps, so 16 requests take about as many steps as one, not 16 times as many.
check("one request: one step per token", steps[1] == new_tokens)
check("16 requests share their steps (fewer than 2x the steps of one)",
      steps[16] < 2 * new_tokens)
check("every block is back after the runs", blocks_left == 0)
# %% [markdown]
# With SmolLM2-135M on a 2-core CPU, `llm-deeper bench serve` measures the same effect through
# the HTTP server: see docs/serving.md for the figures.

# %% [markdown]
# ## Exercises
# 1. Redo the block tables with blocks of 8 slots: how many blocks does each request of 5, 11
#    and 3 tokens hold, and how many slots stay empty? (Answer: 1, 2 and 1 blocks; 3 + 5 + 5 =
#    13 empty slots: bigger blocks mean fewer table entries and more waste.)
# 2. Give the scheduler 8 blocks instead of 6, then 12. Predict the preemptions before running.
#    (Answer: 8 blocks: none, since two requests run at a time and grow to 4 blocks each; 12
#    blocks: one, because all four are admitted with 3 blocks each and the pool runs dry when
#    they need their 4th. More memory can mean more preemption when admission is greedy.)
# 3. The packed step equals the plain model to 1e-10, not bit for bit. Why? (The same float64
#    arithmetic in a different order: one matrix product over the 8 packed rows instead of one
#    per request, and attention over blocks gathered from the pool.)
