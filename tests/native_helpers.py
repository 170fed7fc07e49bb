"""Small random models behind the native engine, shared by tests/test_native_engine.py and
tests/test_serve_prefix_cache.py: the model, its answer without any engine, an engine around it
and requests sent at once from threads."""

import threading
from types import SimpleNamespace

import torch

from llm_deeper.config import preset
from llm_deeper.sampling import SamplingParams
from llm_deeper.serve.engine import GenRequest
from llm_deeper.serve.native import NativeEngine
from llm_deeper.torch_engine.model import TorchGPT

V = 50


def small_model(name="small", dtype=torch.float64, **kw):
    cfg = preset(name, vocab_size=V, **kw)
    return TorchGPT(cfg, seed=1, dtype=dtype).eval().fuse_for_inference()


def last_logits(m, ids):
    """The plain model's next-token logits after ids (no cache, no engine)."""
    with torch.no_grad():
        return m(torch.tensor([ids]))[0][0, -1]


def engine_for(m, **kw):
    tok = SimpleNamespace(eos_token_id=None, chat_template=None)
    return NativeEngine("tiny", torch_model=m, tokenizer=tok, **kw)


def greedy_alone(m, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(last_logits(m, ids).argmax()))
    return ids[len(prompt):]


def run_concurrently(engine, jobs, top_logprobs=None):
    """jobs: [(prompt, max_tokens)] -> the steps of each, all submitted at once."""
    out = [None] * len(jobs)

    def work(i, prompt, n):
        req = GenRequest(prompt, SamplingParams(max_tokens=n, temperature=0),
                         top_logprobs=top_logprobs)
        out[i] = list(engine.generate(req))

    threads = [threading.Thread(target=work, args=(i, *j)) for i, j in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return out


def tokens(steps):
    return [[s.token for s in run] for run in steps]
