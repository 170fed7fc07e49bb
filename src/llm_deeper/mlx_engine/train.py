"""The MLX engine's side of the training loop (train.py): `mlx.nn.value_and_grad` for the
gradients, MLX's AdamW for the update, set up to be the NumPy engine's AdamW (optim.py):

* bias correction on (MLX's default is off): p -= lr m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)
* decay on the matrices only: two AdamWs in one `MultiOptimizer`, weight_decay for the
  parameters with ndim >= 2 and 0 for the norm gains and biases
* eps 1e-8, betas and weight decay from the TrainConfig, the loop's learning rate every step
* gradients summed over the micro-batches, each loss scaled by 1/n, then global-norm clipping
  (`mlx.optimizers.clip_grad_norm`: the same rule as numpy_engine/optim.py)

Nothing is computed until `mx.eval`: a step builds the graph of forward, backward, clipping and
update, and evaluates it once at the end, with the new parameters and moments.

The checkpoint is the other engines': parameters by params.py's names, AdamW's moments as
`m.<name>`, `v.<name>` and the step count `t`, so `--resume` continues a run exactly; the
dropout keys are derived from (seed, draws so far), and the count is what trainer_state.json
keeps of the RNG.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from ..errors import UserError
from ..train import TrainConfig
from .model import MlxGPT


def _decays(path: str, g) -> bool:
    """Weight decay on every matrix, not on biases and norm gains (numpy_engine/optim.py)."""
    return g.ndim >= 2


class MlxTrainer:
    name = "mlx"
    world, rank = 1, 0

    def __init__(self, model: MlxGPT):
        self.model, self.cfg = model, model.cfg
        self.opt: optim.MultiOptimizer | None = None
        self.grad_clip = 1.0
        self.drop_seed, self.drop_draws = None, 0

        def loss_fn(x, y, key):
            return self.model(x, y, key=key)[1]

        self.loss_and_grad = nn.value_and_grad(self.model, loss_fn)

    def setup(self, tc: TrainConfig) -> None:
        def adamw(wd):
            return optim.AdamW(learning_rate=tc.lr, betas=[tc.beta1, tc.beta2], eps=1e-8,
                               weight_decay=wd, bias_correction=True)

        self.opt = optim.MultiOptimizer([adamw(tc.weight_decay), adamw(0.0)], [_decays])
        self.opt.init(self.model.trainable_parameters())
        self.grad_clip = tc.grad_clip
        self.drop_seed = (tc.seed + 1) % 2 ** 31 if self.cfg.dropout > 0 else None
        self.drop_draws = 0

    def _key(self):
        """The next dropout key: a function of (seed, draws so far), so resuming repeats it."""
        if self.drop_seed is None:
            return None
        self.drop_draws += 1
        return mx.random.key((self.drop_seed << 32) + self.drop_draws)

    def grads(self, micro_batches):
        """(mean loss, gradients of the mean loss) over the micro-batches, not yet evaluated."""
        n = len(micro_batches)
        loss, grads = None, None
        for x, y in micro_batches:  # the gradient of the mean loss: each part scaled by 1/n
            micro_loss, g = self.loss_and_grad(x, y, self._key())
            g = tree_map(lambda a: a / n, g) if n > 1 else g
            loss = micro_loss / n if loss is None else loss + micro_loss / n
            grads = g if grads is None else tree_map(mx.add, grads, g)
        return loss, grads

    def step(self, micro_batches, lr: float) -> tuple[float, float]:
        loss, grads = self.grads(micro_batches)
        if self.grad_clip:
            grads, norm = optim.clip_grad_norm(grads, self.grad_clip)
        else:
            norm = mx.sqrt(sum(mx.sum(g * g) for _, g in tree_flatten(grads)))
        self.opt.learning_rate = lr
        self.opt.update(self.model, grads)
        mx.eval(self.model.parameters(), self.opt.state, loss, norm)
        return loss.item(), norm.item()

    def loss(self, x, y) -> float:
        return self.model(x, y)[1].item()

    def state(self):
        opt: dict[str, np.ndarray] = {}
        t = 0
        for o in self.opt.optimizers:
            st = dict(o.state)
            t = int(st.pop("step").item())
            st.pop("learning_rate", None)
            for path, arr in tree_flatten(st):  # 'h.0.attn.wq.m'
                name, which = path.rsplit(".", 1)
                opt[f"{which}.{name}"] = np.array(arr, dtype=np.float32)
        opt["t"] = np.array([t], dtype=np.int64)
        rng = None if self.drop_seed is None else {"mlx_dropout_draws": self.drop_draws}
        return self.model.numpy_params(), opt, rng

    def load_state(self, params: dict, optimizer: dict, rng_state) -> None:
        names = [k for k, _ in tree_flatten(self.model.parameters())]
        missing = [k for k in names if k not in params or f"m.{k}" not in optimizer]
        if missing:
            raise UserError(f"the checkpoint lacks {missing[0]} or its AdamW moments; it is not "
                            "a checkpoint of this run.")
        self.model.update(tree_unflatten([(k, mx.array(params[k])) for k in names]))
        t = int(optimizer["t"][0])
        for o, decayed in zip(self.opt.optimizers, (True, False)):
            moments = [(f"{k}.{w}", mx.array(optimizer[f"{w}.{k}"])) for k in names
                       if (np.ndim(params[k]) >= 2) == decayed for w in ("m", "v")]
            state = tree_unflatten(moments) if moments else {}
            state.update(step=mx.array(t, mx.uint64), learning_rate=o.learning_rate)
            o.state = state
        if self.drop_seed is not None and rng_state:
            self.drop_draws = int(rng_state.get("mlx_dropout_draws", 0))
        mx.eval(self.model.parameters(), self.opt.state)
