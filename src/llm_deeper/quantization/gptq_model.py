"""GPTQ on a whole model: every weight matrix quantized to INT4 against the inputs it really sees.

`gptq_quantize` (gptq.py) needs, for one weight W (out, in), the Hessian H = 2 X^T X / n of the
inputs X that reach it. Here calibration text runs through our PyTorch engine (torch_engine/
model.py `forward`), and each product x W^T of a layer goes through a *recorder* standing in for
the weight (torch_engine/ffn.py `matmul` calls `w.linear(x, b)` for any non-tensor weight, the
same hook quantization/torch_int8.py calibrates with): it adds x^T x to its sum and returns the
float product. Products that read the same input share one Hessian:

    q, k, v        <- norm1(x)                     one H (576 x 576 on SmolLM2)
    o              <- the attention output          its own
    gate, up       <- norm2(x)                     one H
    down           <- silu(gate) * up               its own (1536 x 1536)
    LM head        <- norm_f(x), the last layer's output   (the tied embedding, when tied)

Sequential, layer by layer, as in the paper (Frantar et al. 2022, section 4 / the reference
code): the hidden states of the calibration text are kept between layers; layer i's inputs are
the outputs of layers 0..i-1 *already quantized*, so each layer corrects for the error that
reaches it. For each layer, one pass with its float weights and recorders gives its Hessians (all
its products see inputs of float weights of this layer: not the reference's "true sequential"
option); its matrices are quantized; a second pass with the quantized weights gives the next
layer's inputs. The layer loop is the engine's own (the step context's `block` hook skips the
layers already done), so rotary positions, attention and norms are exactly the model's.
The tied embedding. It is quantized last, as the LM head, against the final norm's output (the
layers were calibrated on float embeddings). But the same matrix is also the input embedding,
whose lookup reads a row as it is: for it, the best rounding of a row is the nearest one (its
"Hessian" is the identity), and GPTQ's head-optimal moves hurt it. Measured on SmolLM2's first
two layers (KL of the logits from the float model's on works val, g32): as a head alone GPTQ
beats round-to-nearest (0.047 vs 0.068), as a lookup alone it loses (0.057 vs 0.022). Both costs
are quadratics in the row's change, head H plus a multiple of I, which is GPTQ's dampening:
the tied matrix gets damp = `tied_damp` (1.0: mean(diag H) added to the diagonal) instead of
0.01. Measured: tied embedding alone 0.079 (GPTQ, damp 1.0) / 0.092 (damp 0.1) / 0.088 (damp
10) vs 0.086 (round-to-nearest); the whole two-layer model 0.129 vs 0.152.
A 2-D weight that no product reads (learned positions `wpe`) is rounded to nearest in the same
INT4 format.

Cost on SmolLM2-135M: two block passes per layer over the calibration tokens, then a Cholesky
factorisation and a loop over the input columns per matrix; about a minute on one CPU thread
(1,024-2,048 tokens; with 2 threads on 2 busy cores, 7 minutes). Calibrate on text the model will
not be scored on (eval and bench quant: the works' train split).
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError
from .gptq import gptq_quantize
from .integer import int4_dequantize, int4_quantize
from .model import quantizable

TIED_DAMP = 1.0  # see "The tied embedding" in the module docstring
SHARED = {"attn.wk": "attn.wq", "attn.wv": "attn.wq", "ffn.w3": "ffn.w1"}  # same input as


class _Stop(Exception):
    """Raised to end a calibration pass once what it came for has been recorded."""


class _Recorder:
    """Stands in for a weight: adds x^T x (float64) of its inputs to a sum and computes the float
    product, or with `stop` ends the pass after recording (the LM head: no logits needed)."""

    def __init__(self, w, record: bool = True, stop: bool = False):
        self.w, self.record, self.stop = w, record, stop
        self.xtx, self.n = None, 0

    def linear(self, x, b=None):
        import torch.nn.functional as F

        if self.record:
            x2 = x.detach().reshape(-1, x.shape[-1]).double()
            xtx = x2.T @ x2
            self.xtx = xtx if self.xtx is None else self.xtx + xtx
            self.n += x2.shape[0]
        if self.stop:
            raise _Stop
        return F.linear(x, self.w, b)

    def hessian(self) -> np.ndarray:
        return (2.0 * self.xtx / self.n).numpy()


def calibration_ids(tokenizer, text: str, n_tokens: int = 2048) -> list[int]:
    """The first n_tokens tokens of `text` (pass the train split, never the scored text)."""
    ids = tokenizer.encode(text[:12 * n_tokens])
    if len(ids) < n_tokens:
        ids = tokenizer.encode(text)
    if len(ids) < min(n_tokens, 64):
        raise UserError(f"GPTQ calibration needs at least {min(n_tokens, 64)} tokens of text, "
                        f"got {len(ids)}.")
    return ids[:n_tokens]


def _layer_names(cfg, params, i: int) -> list[str]:
    pre = f"h.{i}."
    return [n for n in params if n.startswith(pre) and quantizable(n, params[n])]


def gptq_model(cfg, params: dict, calib_ids, group_size: int = 64, bits: int = 4,
               damp: float = 0.01, act_order: bool = False, seq_len: int = 512,
               tied_damp: float = TIED_DAMP, log=None) -> tuple[dict, int]:
    """(params with every weight matrix GPTQ-quantized to INT4 and dequantized, bytes the weights
    take), like `fake_quantize(params, "int4", group_size=...)` but with GPTQ's rounding.

    `calib_ids`: calibration token ids (1-D), cut into sequences of `seq_len` (the last partial
    one dropped unless it is the only one). Sequential: see the module docstring."""
    import torch

    from ..torch_engine.context import StepContext
    from ..torch_engine.model import forward

    if cfg.attention == "mla":
        raise UserError("GPTQ of a whole model runs MHA/GQA/MQA decoders; MLA's latent "
                        "projections are not handled here.")
    ids = np.asarray(calib_ids, dtype=np.int64).reshape(-1)
    seq_len = min(seq_len, cfg.context_length, len(ids))
    n_seq = max(1, len(ids) // seq_len)
    if seq_len < 2:
        raise UserError("GPTQ calibration needs at least 2 tokens.")
    batch = torch.from_numpy(ids[:n_seq * seq_len].reshape(n_seq, seq_len).copy())

    out = {n: np.array(w, dtype=np.float32) for n, w in params.items()}  # copies: writable
    p = {n: torch.from_numpy(w) for n, w in out.items()}  # the engine's view, updated in place
    nbytes, done = 0, set()

    def quantize(name, H, damp=damp):
        nonlocal nbytes
        w = out[name]
        # LAPACK on a 576 x 576 matrix: extra threads only wait on each other (cholesky_inverse
        # was measured 160x slower with 2 threads than with 1 on 2 busy cores)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            q = (int4_quantize(w, group_size) if H is None else
                 gptq_quantize(w, H=H, bits=bits, group_size=group_size, damp=damp,
                               act_order=act_order))
        except UserError as exc:
            raise UserError(f"{name} {tuple(w.shape)}: {exc}") from None
        finally:
            torch.set_num_threads(threads)
        out[name] = int4_dequantize(q).reshape(w.shape)
        p[name] = torch.from_numpy(out[name])
        nbytes += q.nbytes
        done.add(name)
        if log is not None:
            log(f"  {name} {tuple(w.shape)} -> int4 g{group_size} "
                f"{'gptq' if H is not None else 'round-to-nearest'}")

    class Layerwise(StepContext):
        """Skips the layers before `layer`, whose output is already in `hidden`; runs `layer`
        and stops (or, with layer = n_layer, goes on to the final norm and the LM head)."""

        layer, hidden, result = 0, None, None

        @classmethod
        def at(cls, layer, hidden):
            ctx = cls()
            ctx.layer, ctx.hidden = layer, hidden
            return ctx

        def block(self, fn, cfg_, x, p_, layer):
            if layer < self.layer:
                return self.hidden if layer == self.layer - 1 else x
            self.result = fn(cfg_, x, p_, layer, self)
            raise _Stop

    def run(ctx, weights):
        try:
            with torch.no_grad():
                forward(weights, cfg, batch, ctx=ctx)
        except _Stop:
            pass

    hidden = None
    for i in range(cfg.n_layer):
        names = _layer_names(cfg, out, i)
        recorders = {}
        for n in names:
            suffix = n.split(".", 2)[2]
            recorders[n] = _Recorder(p[n], record=suffix not in SHARED)
        ctx = Layerwise.at(i, hidden)
        run(ctx, {**p, **recorders})
        for n in names:
            suffix = n.split(".", 2)[2]
            owner = f"h.{i}.{SHARED[suffix]}" if suffix in SHARED else n
            quantize(n, recorders[owner].hessian() if recorders[owner].n else None)
        ctx = Layerwise.at(i, hidden)
        run(ctx, p)  # the quantized layer's outputs: the next layer's inputs
        hidden = ctx.result

    head = "wte" if cfg.tie_embeddings else "lm_head"
    if head in out and quantizable(head, out[head]):
        rec = _Recorder(p[head], stop=True)
        run(Layerwise.at(cfg.n_layer, hidden),
            {**p, "lm_head.quant": rec})  # output_head() takes this product
        quantize(head, rec.hessian(), tied_damp if cfg.tie_embeddings else damp)
    for n, w in out.items():
        if n in done:
            continue
        if quantizable(n, w):
            quantize(n, None)
        else:
            nbytes += w.nbytes
    return out, nbytes
