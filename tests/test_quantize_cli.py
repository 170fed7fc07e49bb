"""`llm-deeper quantize`: GGUF files written by our block quantizers, read by an independent
reader (transformers' GGUF loader) with the logits of our dequantized weights; the bytes equal
`gguf.quants`; quantized checkpoint directories load to `fake_quantize`'s parameters; every
mistake is one sentence, exit code 2, and nothing written."""

import json

import numpy as np
import pytest
import torch

from llm_deeper.checkpoint import load_checkpoint, save_checkpoint
from llm_deeper.cli import main
from llm_deeper.config import ModelConfig, preset
from llm_deeper.params import init_params
from llm_deeper.pretrained.weights import load_gguf
from llm_deeper.quantization import dequantize, quantize
from llm_deeper.quantization.gguf_write import gguf_name, permute_rope_rows, write_gguf
from llm_deeper.quantization.model import fake_quantize, quantizable
from llm_deeper.tokenizers import BPETokenizer, CharTokenizer
from llm_deeper.torch_engine.model import TorchGPT

from conftest import smollm2_or_skip

gguf = pytest.importorskip("gguf")
TEXT = "".join(f"Line {i}: the quick brown fox jumps over the lazy dog {i % 7}.\n"
               for i in range(200))


def quantize_cli(*args) -> int:
    return main(["quantize", *map(str, args)])


def gguf_bytes_match(path, cfg, params, fmt) -> bool:
    """Every weight matrix's bytes in the file = gguf.quants.quantize of the float weights (rows
    permuted for RoPE as llama.cpp stores them)."""
    tensors = {t.name: np.asarray(t.data) for t in gguf.GGUFReader(str(path)).tensors}
    qtype = getattr(gguf.GGMLQuantizationType, fmt.upper())
    for name, w in params.items():
        if not quantizable(name, w):
            continue
        if name.endswith("attn.wq"):
            w = permute_rope_rows(w, cfg.n_head)
        elif name.endswith("attn.wk"):
            w = permute_rope_rows(w, cfg.n_kv_head)
        if not np.array_equal(tensors[gguf_name(name)], gguf.quants.quantize(w, qtype)):
            return False
    return True


def hf_logits(path, ids) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=torch.float32).eval()
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].numpy()


def our_logits(cfg, params, ids) -> np.ndarray:
    with torch.no_grad():
        return TorchGPT(cfg, params).eval()(torch.tensor([ids]))[0][0].numpy()


def rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------ SmolLM2
@pytest.fixture(scope="module")
def smol():
    return load_gguf(smollm2_or_skip())


@pytest.mark.parametrize("fmt", ["q4_0", pytest.param("q8_0", marks=pytest.mark.slow)])
def test_smollm2_gguf_loads_in_transformers_with_our_logits(smol, tmp_path, capsys, fmt):
    out = tmp_path / f"smol-{fmt}.gguf"
    assert quantize_cli("--model", "smollm2-135m", "--format", fmt, "--out", out) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and f"written to {out}" in line and "bits/param" in line
    assert out.stat().st_size < {"q4_0": 80e6, "q8_0": 150e6}[fmt]  # float32: 538 MB
    expected, _ = fake_quantize(smol.params, fmt)
    back = load_gguf(out)  # our reader: the same model, tokenizer and template
    assert back.config == smol.config and back.chat_template == smol.chat_template
    assert set(back.params) == set(expected)
    assert all(np.array_equal(back.params[k], expected[k]) for k in expected)
    ids = smol.tokenizer.encode("The capital of France is")
    assert back.tokenizer.encode("The capital of France is") == ids
    ref = hf_logits(out, ids)
    assert rel(our_logits(smol.config, expected, ids), ref) <= 1e-4  # 0.0 measured


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_smollm2_gguf_bytes_equal_gguf_quants(smol, tmp_path, fmt):
    """The tensor data of the file = gguf.quants.quantize of the same float weights (written
    without the tokenizer here, which the reader would take seconds to parse)."""
    out = tmp_path / f"smol-{fmt}.gguf"
    r = write_gguf(out, smol.config, smol.params, fmt)
    assert r["types"] == {fmt: 211, "f32": 61} and r["file_bytes"] == out.stat().st_size
    assert gguf_bytes_match(out, smol.config, smol.params, fmt)


# ------------------------------------------------------------------ our own checkpoints
def make_checkpoint(path, cfg, tok, seed=0):
    params = init_params(cfg, seed=seed)
    rng = np.random.default_rng(seed)
    for k, v in params.items():  # norms away from 1, so a mixed-up norm would show
        if v.ndim == 1:
            params[k] = (v + rng.normal(0, 0.1, v.shape)).astype(np.float32)
    save_checkpoint(path, cfg, params, tok)
    return params


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(TEXT, 300, pattern="gpt2")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, bpe):
    """A Llama-style checkpoint whose rows all fit blocks of 32, with a BPE tokenizer."""
    d = tmp_path_factory.mktemp("tiny") / "ck"
    cfg = preset("tiny", vocab_size=bpe.vocab_size, d_ff=192, tie_embeddings=False)
    return d, cfg, make_checkpoint(d, cfg, bpe)


def test_our_checkpoint_q4_0_gguf_loads_in_transformers(tiny, bpe, tmp_path):
    ck, cfg, params = tiny
    out = tmp_path / "tiny-q4_0.gguf"
    assert quantize_cli("--checkpoint", ck, "--format", "q4_0", "--out", out) == 0
    assert gguf_bytes_match(out, cfg, params, "q4_0")
    expected, _ = fake_quantize(params, "q4_0")
    back = load_gguf(out)
    for field in ("n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "vocab_size",
                  "context_length", "tie_embeddings", "rope_theta"):
        assert getattr(back.config, field) == getattr(cfg, field), field
    assert all(np.array_equal(back.params[k], expected[k]) for k in expected)
    ids = bpe.encode("Line 12: the quick brown fox")
    assert back.tokenizer.encode("Line 12: the quick brown fox") == ids
    assert rel(our_logits(cfg, expected, ids), hf_logits(out, ids)) <= 1e-4


def test_rows_that_blocks_do_not_divide_are_f16_as_llama_cpp_does(tmp_path, capsys):
    """The tiny preset's d_ff is 176: ffn.w2 (64, 176) has no Q8_0 form and is stored F16; a
    character tokenizer of single bytes is written as byte tokens without merges."""
    tok = CharTokenizer(sorted(set(TEXT)))
    cfg = preset("tiny", vocab_size=tok.vocab_size)
    params = make_checkpoint(tmp_path / "ck", cfg, tok)
    out = tmp_path / "tiny.gguf"
    assert quantize_cli("--checkpoint", tmp_path / "ck", "--format", "q8_0", "--out", out) == 0
    assert "2 matrices with rows not a multiple of 32 stored as F16" in capsys.readouterr().out
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(out)).tensors}
    assert types["blk.0.ffn_down.weight"] == "F16" and types["blk.0.ffn_up.weight"] == "Q8_0"
    assert types["blk.0.attn_norm.weight"] == "F32"
    expected = {k: (v if not quantizable(k, v) else v.astype(np.float16).astype(np.float32)
                    if v.shape[1] % 32 else dequantize(quantize(v, "q8_0")))
                for k, v in params.items()}
    back = load_gguf(out)
    assert all(np.array_equal(back.params[k], expected[k]) for k in expected)
    assert back.tokenizer.encode("Line 3: fox") == tok.encode("Line 3: fox")
    ids = tok.encode("Line 3: the lazy dog")
    assert rel(our_logits(cfg, expected, ids), hf_logits(out, ids)) <= 1e-4


# ------------------------------------------------------------------ checkpoint directories
@pytest.mark.parametrize("fmt,options", [
    ("int8", ["per_channel=true"]), ("int8_asym", []), ("int4", ["group_size=32"]),
    ("nf4", ["double_quant=true"]), ("fp8_e4m3", ["per_channel=true"]), ("q4_1", [])])
def test_quantized_directory_loads_as_fake_quantize(tiny, tmp_path, fmt, options):
    ck, cfg, params = tiny
    out = tmp_path / "q"
    opts = [a for o in options for a in ("--quant-option", o)]
    assert quantize_cli("--checkpoint", ck, "--format", fmt, *opts, "--out", out) == 0
    from llm_deeper.quantization.model import parse_options

    expected, nbytes = fake_quantize(params, fmt, **parse_options(options))
    loaded = load_checkpoint(out)
    assert set(loaded.params) == set(expected)
    assert all(np.array_equal(loaded.params[k], expected[k]) for k in expected)
    meta = json.loads((out / "quantization.json").read_text())
    assert meta["weight_bytes"] == nbytes and not (out / "model.safetensors").exists()


def test_eval_and_generate_run_a_quantized_directory(tiny, tmp_path, capsys):
    ck, cfg, params = tiny
    (tmp_path / "t.txt").write_text(TEXT)
    q = tmp_path / "int8"
    assert quantize_cli("--checkpoint", ck, "--format", "int8", "--quant-option",
                        "per_channel=true", "--out", q) == 0
    capsys.readouterr()
    ppl = []
    for source in (["--checkpoint", q], ["--checkpoint", ck, "--quant", "int8",
                                         "--quant-option", "per_channel=true"]):
        assert main(["eval", "perplexity", *map(str, source), "--data", str(tmp_path / "t.txt"),
                     "--split", "all", "--max-tokens", "200"]) == 0
        ppl.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["perplexity"])
    assert ppl[0] == ppl[1]  # the directory is fake_quantize's model
    assert main(["generate", "--checkpoint", str(q), "--prompt", "Line", "--max-tokens", "8",
                 "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("Line")


# ------------------------------------------------------------------ mistakes
@pytest.fixture(scope="module")
def bad_setup(tiny, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    ck, cfg, _ = tiny
    assert quantize_cli("--checkpoint", ck, "--format", "int8", "--out", d / "q8") == 0
    gpt2 = ModelConfig(vocab_size=20, context_length=8, n_layer=1, n_head=2, d_model=32)
    save_checkpoint(d / "gpt2", gpt2, init_params(gpt2))
    (d / "exists.gguf").write_bytes(b"old")
    return d, ck


@pytest.mark.parametrize("args,words", [
    (["--format", "int3"], "unknown quantization format"),
    (["--format", "int4", "--quant-option", "group_size=128"], "does not divide the row"),
    (["--format", "int8", "--quant-option", "group_size=32"], "takes the options"),
    (["--format", "int8", "--quant-option", "bad"], "NAME=VALUE"),
    (["--format", "int8", "--out", "x.gguf"], "GGUF holds"),
    (["--format", "q4_0", "--out", "x.gguf", "--quant-option", "group_size=32"], "no options"),
    (["--format", "f16"], "GGUF only"),
    (["--format", "q8_0", "--out", "exists.gguf"], "already exists"),
    (["--format", "int8", "--checkpoint", "q8"], "already quantized"),
    (["--format", "q8_0", "--checkpoint", "gpt2", "--out", "x.gguf"], "Llama-architecture"),
])
def test_bad_input_is_one_sentence_exit_2_nothing_written(bad_setup, capsys, monkeypatch,
                                                          args, words):
    d, ck = bad_setup
    monkeypatch.chdir(d)
    before = sorted(p.name for p in d.iterdir())
    if "--checkpoint" not in args:
        args = [*args, "--checkpoint", str(ck)]
    if "--out" not in args:
        args = [*args, "--out", "new-out"]
    assert quantize_cli(*args) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err, err
    assert sorted(p.name for p in d.iterdir()) == before  # no file, no temporary left
    assert (d / "exists.gguf").read_bytes() == b"old"


def test_a_format_this_version_cannot_read_is_one_sentence(bad_setup, tmp_path, capsys):
    import shutil

    q = shutil.copytree(bad_setup[0] / "q8", tmp_path / "q8")
    meta = json.loads((q / "quantization.json").read_text())
    for t in meta["tensors"].values():
        t["fmt"] = "int3_future"
    (q / "quantization.json").write_text(json.dumps(meta))
    assert main(["generate", "--checkpoint", str(q), "--max-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot dequantize" in err and "\n" not in err
