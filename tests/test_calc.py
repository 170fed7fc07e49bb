"""The sizing calculators (sizing.py, `llm-deeper calc`) against references that would catch a
wrong number: transformers' own parameter count of models built from published configs on the
meta device, our registry GGUF's tensors, the KV caches both engines allocate, the tensors
autograd saves, and the peak memory of real training steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_deeper import cli, sizing
from llm_deeper.config import PRESETS, preset
from llm_deeper.params import param_shapes

from conftest import smollm2_or_skip

DOCS = Path(__file__).parents[1] / "docs" / "sizing.md"

# The shape-deciding values of each model's published config.json
# (https://huggingface.co/<id>/blob/main/config.json); nothing is downloaded.
HF_CONFIGS = {
    # HuggingFaceTB/SmolLM2-135M
    "SmolLM2-135M": dict(model_type="llama", vocab_size=49152, hidden_size=576,
                         intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, max_position_embeddings=8192,
                         tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
    # meta-llama/Llama-2-7b-hf
    "Llama-2-7B": dict(model_type="llama", vocab_size=32000, hidden_size=4096,
                       intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, max_position_embeddings=4096,
                       tie_word_embeddings=False),
    # meta-llama/Meta-Llama-3-8B
    "Llama-3-8B": dict(model_type="llama", vocab_size=128256, hidden_size=4096,
                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, max_position_embeddings=8192,
                       tie_word_embeddings=False),
    # Qwen/Qwen3-0.6B: head_dim 128, not hidden_size / heads = 64; q/k RMSNorms
    "Qwen3-0.6B": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       tie_word_embeddings=True, attention_bias=False),
    # mistralai/Mistral-7B-v0.1
    "Mistral-7B-v0.1": dict(model_type="mistral", vocab_size=32000, hidden_size=4096,
                            intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                            num_key_value_heads=8, max_position_embeddings=32768,
                            sliding_window=4096, tie_word_embeddings=False),
    # deepseek-ai/DeepSeek-V2-Lite: MLA without a query latent, 26 MoE layers of 64 + 2 experts
    "DeepSeek-V2-Lite": dict(model_type="deepseek_v2", vocab_size=102400, hidden_size=2048,
                             intermediate_size=10944, moe_intermediate_size=1408,
                             num_hidden_layers=27, num_attention_heads=16, num_key_value_heads=16,
                             n_shared_experts=2, n_routed_experts=64, num_experts_per_tok=6,
                             first_k_dense_replace=1, moe_layer_freq=1, kv_lora_rank=512,
                             q_lora_rank=None, qk_rope_head_dim=64, qk_nope_head_dim=128,
                             v_head_dim=128, topk_method="greedy", n_group=1, topk_group=1,
                             max_position_embeddings=163840, tie_word_embeddings=False),
    # deepseek-ai/DeepSeek-V3: MLA with a query latent, 58 MoE layers of 256 + 1 experts
    "DeepSeek-V3": dict(model_type="deepseek_v3", vocab_size=129280, hidden_size=7168,
                        intermediate_size=18432, moe_intermediate_size=2048, num_hidden_layers=61,
                        num_attention_heads=128, num_key_value_heads=128, n_shared_experts=1,
                        n_routed_experts=256, num_experts_per_tok=8, first_k_dense_replace=3,
                        moe_layer_freq=1, kv_lora_rank=512, q_lora_rank=1536,
                        qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, n_group=8,
                        topk_group=4, max_position_embeddings=163840, tie_word_embeddings=False),
    # openai-community/gpt2: LayerNorm and linear biases, learned positions, tied
    "GPT-2": dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
                  n_positions=1024),
    # Qwen/Qwen2.5-0.5B (the 0.5B row of docs/sizing.md): biases on q, k, v only
    "Qwen2.5-0.5B": sizing.REFERENCE["0.5B"][1],
}


MEASURE = r"""
import gc, json, sys, torch
from llm_deeper import sizing
from llm_deeper.config import preset
from llm_deeper.torch_engine.model import TorchGPT

def steps(cfg, batch, n):
    model = TorchGPT(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length))
    for _ in range(n):
        _, loss = model(ids, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

def rss(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

for name, batch, changes in json.loads(sys.argv[1]):
    cfg = preset(name, **changes)
    steps(cfg, 1, 1)  # warm-up: lazily loaded code and kernels are not the step's memory
    gc.collect()
    base = rss("VmRSS:")
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM (peak RSS) := VmRSS
    steps(cfg, batch, 2)
    est = sizing.training_memory(sizing.from_config(cfg), "full", batch, cfg.context_length,
                                 "fp32")
    print(json.dumps([name, batch, changes, rss("VmHWM:") - base, est["total"],
                      est["activations"]]))
"""


RUNS = [["baby", 16, {}],  # GPT-2 style; activations 3/4 of the total
        ["small", 8, {}],  # Llama style: RMSNorm, SwiGLU, GQA, RoPE
        ["large", 1, {"context_length": 32}],  # weights, gradients, AdamW: 95 %
        ["baby", 8, {"vocab_size": 8192}]]  # the logits: 4 V float32 per token
CAN_MEASURE = os.access("/proc/self/clear_refs", os.W_OK)


@pytest.fixture(scope="module", autouse=True)
def peak_memory_process():
    """The training-memory measurement runs in a fresh process (~10 s, most of it importing the
    compiler stack torch.optim pulls in), started with the module so it runs beside the other
    tests; the last test reads it. glibc is told to mmap every allocation from 4 KiB and to trim
    its heap at once, so freed tensors leave the RSS and the RSS follows the bytes alive. One
    thread: the numbers do not depend on how the work is split."""
    if not CAN_MEASURE:
        yield None
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "4096",
           "MALLOC_TRIM_THRESHOLD_": "0"}
    proc = subprocess.Popen([sys.executable, "-c", MEASURE, json.dumps(RUNS)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def transformers_count(d: dict) -> tuple[int, int]:
    """(parameters, embedding parameters) of the transformers model the config describes, built
    on the meta device: shapes only, no memory, no download."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rest = {k: v for k, v in d.items() if k != "model_type"}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(d["model_type"], **rest))
    return (sum(p.numel() for p in model.parameters()),
            model.get_input_embeddings().weight.numel())


def calc(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["calc", *args])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(HF_CONFIGS))
def test_parameter_counts_equal_transformers(name):
    p = sizing.params(sizing.from_hf(HF_CONFIGS[name], name))
    total, embeddings = transformers_count(HF_CONFIGS[name])
    assert p["total"] == total
    assert p["embeddings"] - (1024 * 768 if name == "GPT-2" else 0) == embeddings  # + wpe


def test_moe_active_parameters_are_the_published_ones():
    """DeepSeek-V2-Lite: 15.7B parameters, 2.4B activated per token (DeepSeek-V2 paper, appendix
    B); DeepSeek-V3: 671B, 37B activated (DeepSeek-V3 technical report). Both count the head
    but not the embedding lookup."""
    for name, total, active in (("DeepSeek-V2-Lite", 15.7e9, 2.4e9), ("DeepSeek-V3", 671e9, 37e9)):
        a = sizing.from_hf(HF_CONFIGS[name], name)
        act = sizing.params(a, active=True)
        assert sizing.params(a)["total"] == pytest.approx(total, rel=0.01)
        assert act["total"] - act["embeddings"] == pytest.approx(active, rel=0.03)


MLA = dict(attention="mla", kv_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
           v_head_dim=16)
OURS = {f"{n}-{nm}-bias{b}": preset(n, bias=b, norm=nm) for n in PRESETS
        for b in (False, True) for nm in ("layernorm", "rmsnorm")}
OURS.update({f"mla-q{q}-bias{b}": preset("small", **MLA, q_lora_rank=q, bias=b)
             for q in (0, 24) for b in (False, True)})


@pytest.mark.parametrize("name", list(OURS))
def test_parameter_counts_equal_our_shapes_part_by_part(name):
    cfg = OURS[name]
    shapes = {k: int(np.prod(s)) for k, s in param_shapes(cfg).items()}
    part = lambda k: ("embeddings" if k in ("wte", "wpe") else "head" if k == "lm_head"
                      else "norms" if "norm" in k else "attention" if ".attn." in k else "mlp")
    expected = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "head": 0}
    for k, n in shapes.items():
        expected[part(k)] += n
    expected["total"] = cfg.n_params()
    assert sizing.params(sizing.from_config(cfg)) == expected


def test_smollm2_from_its_gguf_counts_what_the_gguf_stores(capsys):
    path = smollm2_or_skip()
    from llm_deeper.tokenizers.pretrained import open_gguf

    code, out, _ = calc(capsys, "params", "--model", "smollm2-135m")  # metadata, tensor names
    stored = sum(int(t.n_elements) for t in open_gguf(path).tensors)
    hf = sizing.params(sizing.from_hf(HF_CONFIGS["SmolLM2-135M"]))["total"]
    assert code == 0 and last_json(out)["params"]["total"] == stored == hf == 134_515_008


def test_rule_of_thumb_is_off_where_gqa_and_swiglu_change_the_block():
    gpt2 = sizing.from_hf(HF_CONFIGS["GPT-2"])
    exact = sizing.params(gpt2)["total"]
    assert abs(sizing.rule_of_thumb(gpt2) / exact - 1) < 0.01  # biases, norms and wpe only
    llama3 = sizing.from_hf(HF_CONFIGS["Llama-3-8B"])
    p, unit = sizing.params(llama3), 32 * 4096 ** 2
    assert p["attention"] / unit == 2.5  # wq, wo: d^2 each; wk, wv: 8/32 d^2 each
    assert p["mlp"] / unit == 10.5  # 3 matrices of d_ff = 3.5 d
    assert sizing.rule_of_thumb(llama3) < 0.95 * p["total"]


KV_CONFIGS = [preset("baby"), preset("small"), preset("small", n_kv_head=1, attention="mqa"),
              preset("small", **MLA), preset("small", **MLA, q_lora_rank=24)]


@pytest.mark.parametrize("cfg", KV_CONFIGS, ids=lambda c: c.attention)
def test_kv_bytes_equal_the_caches_the_engines_allocate(cfg):
    from llm_deeper.numpy_engine.model import KVCache
    from llm_deeper.torch_engine.model import make_cache

    a, batch, max_len = sizing.from_config(cfg), 3, 50
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        cache = make_cache(cfg, batch, max_len, dtype, device="meta")
        tensors = [t for t in vars(cache).values() if isinstance(t, torch.Tensor)]
        assert sum(t.nbytes for t in tensors) == sizing.kv_bytes(a, max_len, batch, name)
        assert cache.nbytes_per_token() == sizing.kv_bytes(a, 1, 1, name)
    np_cache = KVCache(cfg, batch, max_len)  # float32 arrays, allocated
    arrays = np_cache.k + np_cache.v + np_cache.c + np_cache.k_pe
    assert sum(x.nbytes for x in arrays) == sizing.kv_bytes(a, max_len, batch, "fp32")
    if cfg.attention != "mla":  # "what MHA would cache" is the cache of the MHA sibling
        mha = make_cache(cfg.replace(n_kv_head=cfg.n_head, attention="mha"), batch, max_len,
                         device="meta")
        assert mha.k.nbytes + mha.v.nbytes == sizing.kv_bytes(a, max_len, batch, "fp32",
                                                               as_mha=True)


@pytest.mark.parametrize("cfg", [preset("baby"), preset("small"), preset("baby", activation="relu"),
                                 preset("baby", norm="rmsnorm", position="rope"),
                                 preset("small", **MLA, q_lora_rank=24)],
                         ids=lambda c: f"{c.attention}-{c.activation}-{c.norm}")
def test_activation_count_matches_the_tensors_autograd_saves(cfg):
    """Of the head's 4 V float32 numbers only the log-probabilities are a saved tensor (the logits
    and the two gradients are alive, not saved). Our MLA runs SDPA's unfused math path on CPU
    (d_v != d_qk), which saves the T x T softmax: H T per token and layer, as documented."""
    from llm_deeper.torch_engine.model import TorchGPT

    model, B, T = TorchGPT(cfg).train(), 4, cfg.context_length
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in own:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ids = torch.randint(0, cfg.vocab_size, (B, T))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(ids, ids)
    a = sizing.from_config(cfg)
    numbers = sizing.activations_per_token(a)[0] + a.vocab
    numbers += cfg.n_layer * cfg.n_head * T if cfg.attention == "mla" else 0
    assert abs(numbers * 4 / (sum(saved.values()) / (B * T)) - 1) < 0.1


def test_training_flops_and_time():
    a = sizing.from_hf(HF_CONFIGS["Llama-2-7B"])
    p, D, T = sizing.params(a), 2e12, 4096
    f = sizing.training_flops(a, D, T, peak_tflops=989.4, mfu=0.4)
    assert f["dense"] == 6 * (p["total"] - p["embeddings"] - p["norms"]) * D  # head untied
    assert f["attention"] == 12 * 32 * T * 4096 * D  # MHA: PaLM's 12 L T d per token
    assert f["seconds"] == pytest.approx(f["total"] / (989.4e12 * 0.4))
    tied = sizing.from_hf(HF_CONFIGS["SmolLM2-135M"])  # the tied head still multiplies
    pt = sizing.params(tied)
    assert sizing.training_flops(tied, 1)["n_per_token"] == pt["total"] - pt["norms"]


def test_cli_each_calculator_ends_with_a_json_line(capsys, tmp_path):
    code, out, _ = calc(capsys, "memory", "--preset", "baby", "--batch", "16")
    m = sizing.training_memory(sizing.from_config(preset("baby")), "full", 16, 64, "bf16")
    assert code == 0 and last_json(out)["training"]["full"]["total"] == m["total"]
    (tmp_path / "qwen3").mkdir()
    (tmp_path / "qwen3" / "config.json").write_text(json.dumps(HF_CONFIGS["Qwen3-0.6B"]))
    code, out, _ = calc(capsys, "kv", "--config", str(tmp_path / "qwen3" / "config.json"),
                        "--context", "4096")
    assert code == 0 and last_json(out)["bytes_per_token"] == 28 * 2 * 8 * 128 * 2  # bf16
    (tmp_path / "ck").mkdir()  # a checkpoint directory of ours
    (tmp_path / "ck" / "config.json").write_text(preset("small", **MLA).to_json())
    code, out, _ = calc(capsys, "kv", "--config", str(tmp_path / "ck"))
    assert code == 0 and last_json(out)["numbers_per_token"] == 4 * (32 + 8)
    code, out, _ = calc(capsys, "flops", "--model", "7B", "--tokens", "1e9", "--device", "h100")
    assert code == 0 and last_json(out)["seconds"] == pytest.approx(
        sizing.training_flops(sizing.from_hf(HF_CONFIGS["Llama-2-7B"]), 1e9)["total"]
        / (989.4e12 * 0.4))


def test_cli_bad_input_is_one_sentence_and_exit_2(capsys, tmp_path):
    code, out, err = calc(capsys, "flops", "--preset", "baby", "--tokens", "1e9", "--device",
                          "abacus")
    assert code == 2 and out == "" and err.count("\n") == 1 and "h100" in err
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    code, out, err = calc(capsys, "params", "--config", str(tmp_path))
    assert code == 2 and err.startswith("error: config.json has model_type 'bert'")
    assert err.count("\n") == 1 and err.strip().endswith(".")
    bad = dict(HF_CONFIGS["Llama-2-7B"])
    del bad["intermediate_size"]
    (tmp_path / "config.json").write_text(json.dumps(bad))
    code, _, err = calc(capsys, "params", "--config", str(tmp_path))
    assert code == 2 and "intermediate_size" in err
    code, _, err = calc(capsys, "memory", "--preset", "small", "--targets", "wq,q_proj")
    assert code == 2 and "q_proj" in err


def test_cli_end_to_end_and_the_docs_table_is_the_calculators():
    """docs/sizing.md shows exactly what `llm-deeper calc table` prints, so it cannot go stale."""
    r = subprocess.run([sys.executable, "-m", "llm_deeper", "calc", "table"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    table = r.stdout.rsplit("\n", 2)[0] + "\n"
    assert json.loads(r.stdout.strip().splitlines()[-1])["sizes"]["7B"] == "Llama-2-7B"
    assert table == sizing.render_table()
    doc = DOCS.read_text()
    start, end = "<!-- calc table: begin -->\n", "<!-- calc table: end -->"
    assert doc[doc.index(start) + len(start):doc.index(end)] == table


@pytest.mark.skipif(not CAN_MEASURE,
                    reason="needs Linux's resettable peak RSS (/proc/self/clear_refs)")
def test_training_memory_estimate_is_within_20_percent_of_the_measured_peak(peak_memory_process):
    """Peak RSS growth of a fresh process over two AdamW steps: weights, gradients, moments,
    activations and every temporary, from a baseline taken after a warm-up step (so the
    interpreter and torch's libraries are not counted) against `training_memory` in float32."""
    out, err = peak_memory_process.communicate(timeout=300)
    assert peak_memory_process.returncode == 0, err[-2000:]
    for line in out.splitlines():
        name, batch, changes, measured, estimate, activations = json.loads(line)
        print(f"{name} x{batch} {changes}: measured {measured / 2**20:.1f} MiB, estimated "
              f"{estimate / 2**20:.1f} MiB (activations {activations / 2**20:.1f})")
        assert 0.8 < estimate / measured < 1.2, (name, measured, estimate)
    assert len(out.splitlines()) == len(RUNS)


def test_lora_count_equals_peft():
    """sizing.lora_params (docs/finetuning.md's figure) = PEFT's trainable count, all linear
    layers and two targets, on a small GQA Llama built from its config (no weights read)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from llm_deeper import sizing

    d = dict(model_type="llama", vocab_size=101, hidden_size=48, intermediate_size=80,
             num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
             tie_word_embeddings=True, max_position_embeddings=64)
    a = sizing.from_hf(d, "tiny")
    for targets, ours in (("all-linear", ("all-linear",)), (["q_proj", "v_proj"], ("wq", "wv"))):
        base = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in d.items() if k != "model_type"}))
        peft = get_peft_model(base, LoraConfig(r=4, target_modules=targets))
        assert peft.get_nb_trainable_parameters()[0] == sizing.lora_params(a, 4, ours)
