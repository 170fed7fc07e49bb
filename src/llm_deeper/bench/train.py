"""`llm-deeper bench train`: training tokens/s of the NumPy engine, the PyTorch engine and (when
MLX is installed) the MLX engine on the same model (the **baby** config by default), in the same
run, and MFU against a measured matmul peak.

A step is what training does: forward, backward, global-norm clipping and an AdamW update.
The engines start from the same weights and see the same batches; they take turns, round after
round, so a busy machine slows them alike. MLX evaluates lazily: its step ends with `mx.eval`
and reads the loss, so the time is that of the finished step. FLOPs per token follow
Kaplan et al./PaLM: 6 x (matmul parameters, LM head included) + 12 x n_layer x T x d_model for
attention scores and values.
"""

from __future__ import annotations

import numpy as np

from ..config import preset
from ..errors import UserError
from .common import alternate, json_line, matmul_peak_gflops, median


def flops_per_token(cfg) -> float:
    from ..params import param_shapes

    matmul = sum(int(np.prod(s)) for k, s in param_shapes(cfg).items()
                 if len(s) == 2 and k not in ("wte", "wpe"))
    matmul += cfg.vocab_size * cfg.d_model  # the LM head, tied or not
    return 6.0 * matmul + 12.0 * cfg.n_layer * cfg.context_length * cfg.d_model


def mlx_step_fn(cfg, params: dict, batches):
    """One MLX training step per call (MlxTrainer: value_and_grad, clipping, AdamW), or None
    where MLX is not installed."""
    try:
        from ..mlx_engine.model import MlxGPT
        from ..mlx_engine.train import MlxTrainer
    except ImportError:
        return None
    from ..train import TrainConfig

    trainer = MlxTrainer(MlxGPT(cfg, params))
    trainer.setup(TrainConfig(lr=1e-3, beta2=0.99, weight_decay=0.1, grad_clip=1.0))
    k = [0]

    def step():
        trainer.step([batches[k[0] % len(batches)]], 1e-3)
        k[0] += 1

    return step


def mlx_matmul_gflops(n: int = 512, repeats: int = 3) -> float:
    """MLX's fp32 matmul throughput (n small: on Linux, mlx[cpu] may call the reference BLAS)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((n, n))
    mx.eval(a @ a)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mx.eval(a @ a)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def run(preset_name: str = "baby", batch_size: int = 12, rounds: int = 5,
        steps_per_round: int = 6, torch_threads: int | None = None, log=print,
        engines: tuple = ("numpy", "torch", "mlx")) -> dict:
    from ..numpy_engine.model import GPT
    from ..numpy_engine.optim import AdamW, clip_grad_norm
    from ..numpy_engine.speed import tune_malloc

    try:
        import torch
    except ImportError:
        raise UserError("bench train compares with PyTorch; install it with "
                        "'uv sync --extra torch' (or pip install torch).") from None
    from ..torch_engine.model import TorchGPT

    if torch_threads:
        torch.set_num_threads(torch_threads)
    tune_malloc()  # as training does (numpy_engine/train.py)
    cfg = preset(preset_name, dropout=0.0)
    B, T = batch_size, cfg.context_length
    rng = np.random.default_rng(0)
    batches = [(rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T)))
               for _ in range(8)]
    np_model = GPT(cfg, seed=0)
    opt = AdamW(np_model.params, list(np_model.params), lr=1e-3, betas=(0.9, 0.99))
    t_model = TorchGPT(cfg, {k: v.copy() for k, v in np_model.params.items()})
    t_opt = torch.optim.AdamW(t_model.parameters(), lr=1e-3, betas=(0.9, 0.99),
                              weight_decay=0.1)
    t_batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in batches]
    k = {"numpy": 0, "torch": 0}
    mlx_step = mlx_step_fn(cfg, {n: v.copy() for n, v in np_model.params.items()}, batches) \
        if "mlx" in engines else None

    def np_step():
        x, y = batches[k["numpy"] % len(batches)]
        k["numpy"] += 1
        _, grads = np_model.loss_and_grads(x, y)
        clip_grad_norm(grads, 1.0)
        opt.step(grads)

    def torch_step():
        x, y = t_batches[k["torch"] % len(t_batches)]
        k["torch"] += 1
        _, loss = t_model(x, y)
        t_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t_model.parameters(), 1.0)
        t_opt.step()

    fns = {"numpy": np_step, "torch": torch_step}
    if mlx_step is not None:
        fns["mlx"] = mlx_step
    elif "mlx" in engines:
        log("MLX is not installed (pip install mlx, or 'mlx[cpu]' on Linux): timing NumPy and "
            "PyTorch only")
    log(f"bench train: {preset_name} ({cfg.n_params():,} parameters), batch {B} x {T} tokens, "
        f"{rounds} alternating rounds of {steps_per_round} steps; torch threads "
        f"{torch.get_num_threads()}")
    alternate(fns, 1, 3)  # warm-up
    times = alternate(fns, rounds, steps_per_round)
    peak = matmul_peak_gflops()
    peak_best = max(peak.values())
    if mlx_step is not None:
        peak["mlx (n=512)"] = mlx_matmul_gflops()
    fpt = flops_per_token(cfg)
    rows = {}
    for name, ts in times.items():
        step = median(ts)
        rate = B * T / step
        rows[name] = {"ms_per_step": 1e3 * step, "tokens_per_s": rate,
                      "mfu": fpt * rate / (peak_best * 1e9)}
    ratio = rows["numpy"]["tokens_per_s"] / rows["torch"]["tokens_per_s"]
    log(f"{'engine':<8}{'ms/step':>10}{'tokens/s':>12}{'MFU':>8}")
    for name, r in rows.items():
        log(f"{name:<8}{r['ms_per_step']:>10.1f}{r['tokens_per_s']:>12,.0f}{100 * r['mfu']:>7.1f}%")
    tps = {name: r["tokens_per_s"] for name, r in rows.items()}
    if "mlx" in rows:
        log(f"MLX / NumPy tokens/s: {tps['mlx'] / tps['numpy']:.2f}x, MLX / PyTorch: "
            f"{tps['mlx'] / tps['torch']:.2f}x")
    log(f"NumPy / PyTorch tokens/s: {ratio:.2f}x   (matmul peak: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
        + f"; {fpt / 1e6:.2f} MFLOP per token)")
    result = {"bench": "train", "preset": preset_name, "batch_size": B, "context_length": T,
              "numpy_tokens_per_s": round(rows["numpy"]["tokens_per_s"], 1),
              "torch_tokens_per_s": round(rows["torch"]["tokens_per_s"], 1),
              "ratio_numpy_over_torch": round(ratio, 3),
              "numpy_ms_per_step": round(rows["numpy"]["ms_per_step"], 2),
              "torch_ms_per_step": round(rows["torch"]["ms_per_step"], 2),
              "mfu_numpy": round(rows["numpy"]["mfu"], 4),
              "mfu_torch": round(rows["torch"]["mfu"], 4),
              "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
              "torch_threads": torch.get_num_threads()}
    if "mlx" in rows:
        result.update(mlx_tokens_per_s=round(rows["mlx"]["tokens_per_s"], 1),
                      mlx_ms_per_step=round(rows["mlx"]["ms_per_step"], 2),
                      mfu_mlx=round(rows["mlx"]["mfu"], 4),
                      ratio_mlx_over_numpy=round(tps["mlx"] / tps["numpy"], 3),
                      ratio_mlx_over_torch=round(tps["mlx"] / tps["torch"], 3))
    log(json_line(result))
    return result
