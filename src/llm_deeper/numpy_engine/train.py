"""The NumPy engine's side of the training loop (train.py): the hand-written backward pass,
gradient accumulation, global-norm clipping and AdamW, all in NumPy.

    r = train(NumpyTrainer(GPT(cfg, seed=tc.seed)), tokenizer, train_ids, val_ids, tc, out_dir)
"""

from __future__ import annotations

import numpy as np

from ..train import TrainConfig
from .model import GPT
from .optim import AdamW, clip_grad_norm
from .speed import tune_malloc


class NumpyTrainer:
    name = "numpy"
    world, rank = 1, 0

    def __init__(self, model: GPT):
        self.model, self.cfg = model, model.cfg
        self.opt: AdamW | None = None
        self.drop_rng: np.random.Generator | None = None
        self.grad_clip = 1.0

    def setup(self, tc: TrainConfig) -> None:
        tune_malloc()  # training allocates large temporaries every step: see speed.py
        trainable = [k for k in self.model.params if k not in self.model.frozen]
        self.opt = AdamW(self.model.params, trainable, lr=tc.lr, betas=(tc.beta1, tc.beta2),
                         weight_decay=tc.weight_decay)
        self.grad_clip = tc.grad_clip
        self.drop_rng = np.random.default_rng(tc.seed + 1) if self.cfg.dropout > 0 else None

    def step(self, micro_batches, lr: float) -> tuple[float, float]:
        n = len(micro_batches)
        grads, loss = None, 0.0
        for x, y in micro_batches:  # the gradient of the mean loss: each part scaled by 1/n
            micro_loss, g = self.model.loss_and_grads(x, y, rng=self.drop_rng, scale=1.0 / n)
            loss += micro_loss / n
            if grads is None:
                grads = g
            else:
                for k in grads:
                    grads[k] += g[k]
        norm = clip_grad_norm(grads, self.grad_clip)
        self.opt.step(grads, lr)
        return loss, norm

    def loss(self, x, y) -> float:
        return float(self.model.forward(x, y)[1])

    def state(self):
        rng = self.drop_rng.bit_generator.state if self.drop_rng is not None else None
        return self.model.params, self.opt.state_dict(), rng

    def load_state(self, params: dict, optimizer: dict, rng_state) -> None:
        from ..errors import UserError

        missing = [k for k in self.model.params if k not in params]
        if missing:
            raise UserError(f"the checkpoint lacks {missing[0]}; it is not a checkpoint of "
                            "this run.")
        for k in self.model.params:
            self.model.params[k][...] = params[k]
        self.opt.load_state_dict(optimizer)
        if self.drop_rng is not None and rng_state is not None:
            self.drop_rng.bit_generator.state = rng_state
