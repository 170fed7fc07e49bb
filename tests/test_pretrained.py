"""SmolLM2-135M-Instruct from its GGUF in the NumPy and PyTorch engines, against HF transformers
reading the same file: the same weights, logits within 1e-4 (float32), the same greedy text, the
same chat template."""

import numpy as np
import pytest
import torch

from llm_deeper.chat.template import render_chat
from llm_deeper.numpy_engine.generate import greedy_batch as np_greedy
from llm_deeper.numpy_engine.model import GPT
from llm_deeper.pretrained.weights import load_gguf
from llm_deeper.torch_engine.generate import greedy_batch as torch_greedy
from llm_deeper.torch_engine.model import TorchGPT

from conftest import smollm2_or_skip

PROMPTS = ["The capital of France is",
           "<|im_start|>user\nWrite a haiku about the sea.<|im_end|>\n<|im_start|>assistant\n",
           "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"]


@pytest.fixture(scope="module")
def pre():
    return load_gguf(smollm2_or_skip())


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM

    path = smollm2_or_skip()
    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def hf_tok():
    from transformers import AutoTokenizer

    path = smollm2_or_skip()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_config_and_weights_equal_transformers(pre, hf):
    cfg = pre.config
    assert (cfg.n_layer, cfg.d_model, cfg.n_head, cfg.n_kv_head, cfg.vocab_size) == \
        (30, 576, 9, 3, 49152)
    assert cfg.tie_embeddings and cfg.rope_theta == 100000.0
    hf_names = {"wte": "model.embed_tokens.weight", "norm_f.weight": "model.norm.weight"}
    for i in range(30):
        for ours, theirs in (("norm1.weight", "input_layernorm.weight"),
                             ("attn.wq", "self_attn.q_proj.weight"),
                             ("attn.wk", "self_attn.k_proj.weight"),
                             ("attn.wv", "self_attn.v_proj.weight"),
                             ("attn.wo", "self_attn.o_proj.weight"),
                             ("norm2.weight", "post_attention_layernorm.weight"),
                             ("ffn.w1", "mlp.gate_proj.weight"), ("ffn.w3", "mlp.up_proj.weight"),
                             ("ffn.w2", "mlp.down_proj.weight")):
            hf_names[f"h.{i}.{ours}"] = f"model.layers.{i}.{theirs}"
    sd = hf.state_dict()
    assert set(pre.params) == set(hf_names)
    for ours, theirs in hf_names.items():
        assert np.array_equal(pre.params[ours], sd[theirs].numpy()), ours


@pytest.fixture(scope="module")
def reference(pre, hf):
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = pre.tokenizer.encode(p)
            out.append((ids, hf(torch.tensor([ids])).logits[0].numpy()))
    return out


def test_numpy_engine_logits_match_transformers(pre, reference):
    model = GPT(pre.config, pre.params)
    for ids, ref in reference:
        ours = model.forward(np.array([ids]))[0][0]
        assert np.abs(ours - ref).max() <= 1e-4


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_torch_engine_logits_match_transformers(pre, reference, use_sdpa):
    model = TorchGPT(pre.config, pre.params).eval()
    model.use_sdpa = use_sdpa
    with torch.inference_mode():
        for ids, ref in reference:
            ours = model(torch.tensor([ids]))[0][0].numpy()
            assert np.abs(ours - ref).max() <= 1e-4


@pytest.fixture(scope="module")
def hf_greedy(pre, hf):
    out = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([pre.tokenizer.encode(p)])
            gen = hf.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
            out.append((ids, gen[0, ids.shape[1]:].tolist()))
    return out


def test_torch_engine_greedy_64_tokens_match_transformers(pre, hf_greedy):
    model = TorchGPT(pre.config, pre.params).eval()
    for ids, ref in hf_greedy:
        assert torch_greedy(model, ids, 64)[0].tolist() == ref


def test_numpy_engine_greedy_64_tokens_match_transformers(pre, hf_greedy):
    model = GPT(pre.config, pre.params)
    for ids, ref in hf_greedy:
        assert np_greedy(model, ids.numpy(), 64)[0].tolist() == ref


def test_chat_template_renders_as_transformers(pre, hf_tok):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name a colour."},
                {"role": "assistant", "content": "Blue."},
                {"role": "user", "content": "Another one?"}]
    for msgs in (messages, messages[1:2]):
        ours = render_chat(pre.chat_template, msgs)
        theirs = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert ours == theirs
        assert pre.tokenizer.encode(ours) == hf_tok.encode(theirs, add_special_tokens=False)
    assert render_chat(pre.chat_template, messages[1:2]).startswith("<|im_start|>system\n")


def test_chat_answers_in_the_terminal(pre):
    import io

    from llm_deeper.chat.terminal import chat_loop
    from llm_deeper.sampling import SamplingParams

    answers = iter(["What is the capital of France?", ""])
    out = io.StringIO()
    transcript = chat_loop("smollm2-135m", "torch", SamplingParams(max_tokens=30, temperature=0),
                           inp=lambda _: next(answers), out=out)
    assert "Paris" in transcript[-1]["content"] and "Paris" in out.getvalue()
