# %% [markdown]
# # Grouped-query attention: memory against quality
#
# GQA (Ainslie et al. 2023) lets G query heads share one key/value head. The KV cache shrinks by
# n_head / n_kv_head; the question is what it costs in quality. We train the same model with
# 4, 2 and 1 KV heads on the sonnets, character level, and compare.

# %%
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llm_deeper.config import ModelConfig
from llm_deeper.data import load_text, shakespeare, split_train_val
from llm_deeper.params import init_params
from llm_deeper.tokenizers import CharTokenizer
from llm_deeper.torch_engine.model import TorchGPT
from llm_deeper.torch_engine.train import TorchTrainer
from llm_deeper.train import TrainConfig, train

from _common import OUT, QUICK, check

if not shakespeare.is_cached():
    raise SystemExit("run 'llm-deeper data pull shakespeare' first")
tok = CharTokenizer.train(load_text("works"))
train_ids, val_ids = split_train_val(np.array(tok.encode(load_text("sonnets"))))
steps = 40 if QUICK else 400
rows = []
for kv in (4, 2, 1):
    cfg = ModelConfig(vocab_size=tok.vocab_size, context_length=64, n_layer=3, n_head=4,
                      n_kv_head=kv, d_model=64, d_ff=176, norm="rmsnorm", activation="swiglu",
                      position="rope")
    tc = TrainConfig(steps=steps, batch_size=16, eval_interval=steps, eval_iters=10,
                     final_eval_iters=20, warmup=steps // 10, lr=3e-3)
    r = train(TorchTrainer(TorchGPT(cfg, init_params(cfg, tc.seed))), tok, train_ids, val_ids,
              tc, OUT / f"gqa-{kv}", progress=False, log=lambda *_: None)
    rows.append((kv, cfg.n_params(), 4 * cfg.kv_cache_numbers_per_token(), r["val_loss"]))
    print(f"n_kv_head {kv}: {cfg.n_params():,} parameters, KV cache {rows[-1][2]:,} bytes/token, "
          f"val loss {r['val_loss']:.3f}")
check("KV cache shrinks with the number of KV heads", rows[0][2] == 4 * rows[2][2])
check("every variant learned", all(r[3] < np.log(tok.vocab_size) - 0.5 for r in rows))
