"""`llm-deeper generate`: text from a checkpoint of ours (NumPy or MLX engine) or an HF model
(transformers)."""

from __future__ import annotations

import sys

from ..errors import UserError
from .common import add_sampling, load_model, sampling

HELP = "generate text from a checkpoint or (--model) an HF model"


def add_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint of ours (any engine trained it)")
    src.add_argument("--model", help="an HF directory, registry name or hub id (transformers)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter directory (ours with --checkpoint, PEFT with --model)")
    p.add_argument("--engine", choices=("numpy", "mlx", "torch"), default=None,
                   help="with --checkpoint: run it in the NumPy engine, in MLX (Apple silicon, "
                   "or mlx[cpu] on Linux) or in our PyTorch engine (default: numpy); with --model "
                   "(a registry name or GGUF file): torch runs it in our PyTorch engine instead "
                   "of transformers")
    p.add_argument("--quant", choices=("int8",), default=None,
                   help="engine torch, CPU: INT8 weights and activations (docs/quantization.md)")
    p.add_argument("--prompt", default="\n",
                   help="the text to continue, \\n for a newline (default: a newline)")
    p.add_argument("--interactive", action="store_true", help="read prompts, stream answers")
    p.add_argument("--no-cache", action="store_true", help="recompute everything every token")
    add_sampling(p)


def run(args) -> int:
    params = sampling(args)
    if args.model and args.engine not in (None, "torch"):
        raise UserError("--engine chooses the engine of a --checkpoint; an HF --model runs in "
                        "transformers (or, a registry name or GGUF file, --engine torch).")
    if args.quant and args.engine != "torch":
        raise UserError(f"--quant {args.quant} runs in our PyTorch engine: add --engine torch.")
    if args.model or args.engine == "torch":  # the shared generation loop over a logits function
        from ..generation import stream as stream_ids

        fn, tok, stop = _logits_fn(args)

        def pieces(prompt):
            return stream_ids(fn, tok, tok.encode(prompt), params, stop)
    elif args.engine == "mlx":
        stream, model, tok = _mlx_model(args.checkpoint, args.adapter)

        def pieces(prompt):
            return stream(model, tok, prompt, params, use_cache=not args.no_cache)
    else:
        from ..numpy_engine.generate import stream

        model, tok = load_model(args.checkpoint, args.adapter)

        def pieces(prompt):
            return stream(model, tok, prompt, params, use_cache=not args.no_cache)

    def run_one(prompt: str):
        sys.stdout.write(prompt)
        for piece in pieces(prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")

    if not args.interactive:
        run_one(args.prompt.replace("\\n", "\n"))
        return 0
    print("Type a prompt and press Enter (an empty line or Ctrl-D quits).", file=sys.stderr)
    while True:
        try:
            line = input("> ")
        except EOFError:
            break
        if not line:
            break
        try:
            run_one(line)
        except UserError as exc:  # one bad prompt does not end the session
            print(f"error: {exc}", file=sys.stderr)
    return 0


def _logits_fn(args):
    """(next_logits, tokenizer, stop ids): an HF model in transformers, a registry model or GGUF
    file in our PyTorch engine, or a checkpoint of ours in it (--engine torch)."""
    if args.model and args.engine != "torch":  # transformers (+ PEFT)
        from ..hf.models import engine

        fn, tok, _, stop = engine(args.model, args.adapter)
        return fn, tok, stop
    if args.model:
        from ..chat.terminal import pretrained_engine

        fn, tok, _, stop = pretrained_engine(args.model, "torch", args.adapter, args.quant)
        return fn, tok, stop
    from ..torch_engine.generate import next_logits_fn
    from ..torch_engine.model import TorchGPT

    if args.adapter:
        raise UserError("--engine torch runs plain checkpoints; for --adapter use --engine numpy.")
    model, tok = load_model(args.checkpoint)
    net = TorchGPT(model.cfg, model.params).eval().fuse_for_inference()
    if args.quant:
        from ..quantization.torch_int8 import quantize_for_inference

        quantize_for_inference(net, args.quant, tok.encode(_CALIBRATION))
    return next_logits_fn(net, use_cache=not args.no_cache), tok, []


# A checkpoint of ours has its own vocabulary (often characters): calibrate on plain English.
_CALIBRATION = ("It was the best of times, it was the worst of times. Friends, Romans, countrymen, "
                "lend me your ears. To be, or not to be: that is the question. Now is the winter "
                "of our discontent. All the world's a stage, and all the men and women merely "
                "players. What's in a name? That which we call a rose by any other name would "
                "smell as sweet.\n") * 4


def _mlx_model(checkpoint, adapter):
    """(stream, MlxGPT, tokenizer) of a checkpoint; one sentence if MLX is missing or the
    checkpoint needs what the MLX engine does not have (an adapter, MLA)."""
    from ..checkpoint import load_checkpoint

    if adapter:
        raise UserError("--engine mlx runs plain checkpoints; for --adapter use --engine numpy.")
    try:
        from ..mlx_engine.generate import stream
        from ..mlx_engine.model import MlxGPT
    except ImportError:
        raise UserError("--engine mlx needs MLX: pip install mlx (Apple silicon) or "
                        "'mlx[cpu]' (Linux).") from None
    cfg, params, tok, _ = load_checkpoint(checkpoint)
    if tok is None:
        raise UserError(f"{checkpoint} has no tokenizer.json; it cannot turn text into ids.")
    return stream, MlxGPT(cfg, params), tok
