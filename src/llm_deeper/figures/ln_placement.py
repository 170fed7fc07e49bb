"""Pre-LN against post-LN: the computations behind lessons/03_modern/07_pre_vs_post_ln.py and
the figure pre_vs_post_ln.png (blocks.py), one code path for both.

The package's decoder is pre-LN (torch_engine/model.py):  x = x + Attn(LN(x)); x = x + MLP(LN(x)).
The original Transformer (Vaswani et al. 2017) put the norm after the residual addition:
x = LN(x + Attn(x)); x = LN(x + MLP(x)). Both blocks below are built from the torch engine's own
layers (norms.norm, attention.attention, ffn.ffn) and the same parameter names, so one parameter
dict runs either way; `placement="pre"` is the package's model exactly (the lesson checks the
logits equal TorchGPT's). Post-LN has no final norm (its last block ends in one): norm_f is
simply unused there.

Training goes through the package's loop (train.train with TorchTrainer) and batching; only the
block differs between the two runs of a pair.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ModelConfig
from ..params import init_params
from ..torch_engine.attention import attention
from ..torch_engine.context import StepContext
from ..torch_engine.ffn import ffn
from ..torch_engine.model import TorchGPT
from ..torch_engine.norms import norm


def pre_ln_block(cfg, x, p, i: int, ctx):
    """x + Attn(LN1(x)), then + MLP(LN2(.)): the stream is never normalised itself."""
    pre = f"h.{i}."
    x = x + attention(cfg, norm(cfg, x, p, pre + "norm1"), p, pre + "attn.", i, ctx)
    return x + ffn(cfg, norm(cfg, x, p, pre + "norm2"), p, pre + "ffn.", ctx)


def post_ln_block(cfg, x, p, i: int, ctx):
    """LN1(x + Attn(x)), then LN2(. + MLP(.)): the stream is re-normalised after every add."""
    pre = f"h.{i}."
    x = norm(cfg, x + attention(cfg, x, p, pre + "attn.", i, ctx), p, pre + "norm1")
    return norm(cfg, x + ffn(cfg, x, p, pre + "ffn.", ctx), p, pre + "norm2")


class PlacedGPT(TorchGPT):
    """TorchGPT (same parameters, same trainer) with the norm placed before ("pre", the
    package's block) or after ("post") each residual addition. Learned, sinusoidal or no
    positions, MHA/GQA; no dropout, no cache: what the comparison needs. After each forward,
    `stream` holds the mean norm of the residual stream per token: embeddings, then after each
    block."""

    def __init__(self, cfg: ModelConfig, params: dict, placement: str):
        if placement not in ("pre", "post"):
            raise ValueError(f"placement is 'pre' or 'post', not {placement!r}")
        super().__init__(cfg, params)
        self.placement, self.stream = placement, []

    def forward(self, ids, targets=None, cache=None):
        p, cfg = self.param_dict(), self.cfg
        ctx = StepContext(training=self.training)
        T = ids.shape[1]
        x = p["wte"][ids]
        if "wpe" in p:
            x = x + p["wpe"][:T]
        block = pre_ln_block if self.placement == "pre" else post_ln_block
        stream = [x.detach().norm(dim=-1).mean().item()]
        for i in range(cfg.n_layer):
            x = block(cfg, x, p, i, ctx)
            stream.append(x.detach().norm(dim=-1).mean().item())
        self.stream = stream
        if self.placement == "pre":
            x = norm(cfg, x, p, "norm_f")
        logits = F.linear(x, p["wte"] if cfg.tie_embeddings else p["lm_head"])
        loss = None if targets is None else F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def glorot_params(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """init_params with every block matrix drawn by Glorot & Bengio's rule (Xavier: std
    sqrt(2 / (fan_in + fan_out)), no 1/sqrt(2 n_layer) shrinking): the setting Xiong et al.
    analyse. Embeddings, norms and biases as init_params."""
    params = init_params(cfg, seed)
    rng = np.random.default_rng(seed + 10_000)
    for name, v in params.items():
        if name.startswith("h.") and v.ndim == 2:
            params[name] = rng.normal(0.0, math.sqrt(2.0 / sum(v.shape)), v.shape).astype(v.dtype)
    return params


def make_model(cfg: ModelConfig, placement: str, seed: int = 0, init: str = "gpt2") -> PlacedGPT:
    """init: "gpt2" (the package's init_params) or "glorot" (glorot_params)."""
    params = init_params(cfg, seed) if init == "gpt2" else glorot_params(cfg, seed)
    return PlacedGPT(cfg, params, placement)


def stack_config(n_layer: int, vocab_size: int = 84, d_model: int = 48,
                 context_length: int = 32) -> ModelConfig:
    """The comparison's model: GPT-2-style (LayerNorm, GELU, learned positions, tied head),
    4 heads."""
    return ModelConfig(vocab_size=vocab_size, context_length=context_length, n_layer=n_layer,
                       n_head=4, d_model=d_model, norm="layernorm", activation="gelu",
                       position="learned")


def works_corpus():
    """(CharTokenizer, train ids, validation ids) of Shakespeare's works, the package's split."""
    from ..data import load_text, split_train_val
    from ..tokenizers import CharTokenizer

    text = load_text("works")
    tok = CharTokenizer.train(text)
    return (tok, *split_train_val(np.array(tok.encode(text), dtype=np.int64)))


def gradient_profile(cfg: ModelConfig, placement: str, init: str, ids: np.ndarray,
                     seed: int = 0) -> tuple[list[float], list[float], float]:
    """At initialisation, on one batch ids (B, T + 1): the norm of the loss gradient of each
    block's parameters (block 0 = nearest the input), the residual stream's norm per token
    after the embeddings and each block, and the loss."""
    model = make_model(cfg, placement, seed, init)
    x, y = torch.from_numpy(ids[:, :-1]), torch.from_numpy(ids[:, 1:])
    _, loss = model(x, y)
    loss.backward()
    norms = [0.0] * cfg.n_layer
    for name, p in model.named_parameters():
        if name.startswith("h.") and p.grad is not None:
            norms[int(name.split(".")[1])] += float(p.grad.double().pow(2).sum())
    return [math.sqrt(v) for v in norms], model.stream, loss.item()


@dataclass
class Run:
    placement: str
    lr: float
    warmup: int
    seed: int
    val_loss: float
    train: list = field(default_factory=list)  # training loss per step

    def diverged(self, vocab_size: int) -> bool:
        """nan, or worse than guessing uniformly (ln vocab)."""
        return not math.isfinite(self.val_loss) or self.val_loss > math.log(vocab_size)


def train_pair(corpus, cfg: ModelConfig, lr: float, warmup: int, seed: int, steps: int,
               batch_size: int = 16, eval_batches: int = 20) -> dict[str, Run]:
    """Train the pre-LN and the post-LN model from the same initial parameters on the same
    batches (the package's loop: AdamW, warmup then cosine to lr/10, clipping at 1.0)."""
    from ..torch_engine.train import TorchTrainer
    from ..train import TrainConfig, train

    tok, train_ids, val_ids = corpus
    out = {}
    for placement in ("pre", "post"):
        tc = TrainConfig(steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                         warmup=warmup, eval_interval=steps, final_eval_iters=eval_batches,
                         seed=seed)
        with tempfile.TemporaryDirectory() as tmp:
            r = train(TorchTrainer(make_model(cfg, placement, seed)), tok, train_ids, val_ids,
                      tc, tmp, progress=False, log=lambda *_: None)
        out[placement] = Run(placement, lr, warmup, seed, float(r["val_loss"]),
                             [v for _, v in r["history"]["train"]])
    return out


def unigram_loss(ids: np.ndarray, vocab_size: int) -> float:
    """The cross-entropy of predicting every character by its frequency alone (nats): the
    plateau of a model that has learned nothing about context."""
    p = np.bincount(ids, minlength=vocab_size) / len(ids)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def profiles(n_layer: int, seeds, train_ids: np.ndarray, inits=("glorot", "gpt2"),
             batch_size: int = 16, cfg: ModelConfig | None = None) -> dict:
    """{init: {placement: (gradient per block, stream norm per depth, per-seed gradients)}}:
    gradient_profile averaged over `seeds` (each a fresh initialisation and batch)."""
    from ..data import Batcher

    cfg = cfg or stack_config(n_layer)
    out: dict = {}
    for init in inits:
        out[init] = {}
        for placement in ("pre", "post"):
            grads, streams = [], []
            for seed in seeds:
                x, y = Batcher(train_ids, batch_size, cfg.context_length, seed=seed).next()
                g, s, _ = gradient_profile(cfg, placement, init, np.concatenate([x, y[:, -1:]], 1),
                                           seed)
                grads.append(g)
                streams.append(s)
            out[init][placement] = (np.mean(grads, 0), np.mean(streams, 0), np.array(grads))
    return out


def sweep(corpus, cfg: ModelConfig, lrs, warmups, seeds, steps: int, log=None) -> list:
    """train_pair for every (peak lr, warmup steps, seed): a list of {"pre": Run, "post": Run}."""
    runs = []
    for lr in lrs:
        for warmup in warmups:
            for seed in seeds:
                runs.append(train_pair(corpus, cfg, lr, warmup, seed, steps))
                if log:
                    r = runs[-1]
                    log(f"lr {lr:g}, warmup {warmup}, seed {seed}: val loss pre-LN "
                        f"{r['pre'].val_loss:.3f}, post-LN {r['post'].val_loss:.3f}")
    return runs
