"""Prompt tuning and prefix tuning (hf/finetune.py): PEFT's trainable counts by hand, what the
adapted models compute rebuilt from the base model (concatenated embeddings; past_key_values),
the adapter through the evaluation's generation path, and one-sentence refusals. A tiny random
Llama stands in for SmolLM2 where the shapes are all that matter."""

import pytest
import torch

from llm_deeper.errors import UserError

from conftest import smollm2_or_skip

N_VIRTUAL = 5


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models and short inputs: a second thread only waits (util/threads.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_llama(vocab: int = 97):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=48, intermediate_size=96,
                      num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=2,
                      max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def adapted(method: str, model=None):
    """(base, PEFT model) with the virtual tokens set to random values, as after training."""
    from peft import get_peft_model

    from llm_deeper.hf.finetune import virtual_token_config

    base = model if model is not None else tiny_llama()
    peft = get_peft_model(base, virtual_token_config(method, N_VIRTUAL, "random")).eval()
    w = peft.prompt_encoder["default"].embedding.weight
    with torch.no_grad():
        w.copy_(0.5 * torch.randn_like(w))
    return base, peft


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_trainable_counts_by_hand(method):
    base, peft = adapted(method)
    c = base.config
    head_dim = c.hidden_size // c.num_attention_heads
    by_hand = (N_VIRTUAL * c.hidden_size if method == "prompt" else
               N_VIRTUAL * c.num_hidden_layers * 2 * c.num_key_value_heads * head_dim)
    trainable, total = peft.get_nb_trainable_parameters()
    assert trainable == by_hand
    assert total == by_hand + sum(p.numel() for p in base.parameters())


def test_prompt_tuning_is_concatenated_embeddings():
    base, peft = adapted("prompt")
    x = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        theirs = peft(input_ids=x).logits
        virtual = peft.prompt_encoder["default"].embedding.weight
        mine = base(inputs_embeds=torch.cat([virtual[None], base.get_input_embeddings()(x)],
                                            1)).logits
    assert theirs.shape == (1, N_VIRTUAL + x.shape[1], base.config.vocab_size)
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)


def test_prefix_tuning_is_past_key_values():
    from llm_deeper.hf.finetune import prefix_as_cache

    base, peft = adapted("prefix")
    x = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.no_grad():
        theirs = peft(input_ids=x).logits
        cache = prefix_as_cache(peft)
        c = base.config
        assert cache.layers[0].keys.shape == (1, c.num_key_value_heads, N_VIRTUAL,
                                              c.hidden_size // c.num_attention_heads)
        mine = base(input_ids=x, past_key_values=cache).logits
        plain = base(input_ids=x).logits
    torch.testing.assert_close(theirs, mine, atol=1e-5, rtol=1e-5)
    assert (theirs - plain).abs().max() > 1e-3  # the prefix does change the output


def test_text_initialised_prefix_and_prompt_equal_the_text_typed_in():
    """init_prefix_from_text writes the base model's cache of the text: the prefix model then
    computes what the base computes with the text in front, as a prompt set to the text's
    embeddings does (every prompt is a prefix)."""
    from llm_deeper.hf.finetune import init_prefix_from_text, prefix_as_cache, set_prefix

    model = tiny_llama()
    text = [7, 8, 9]  # repeated to N_VIRTUAL tokens, as PEFT's TEXT init repeats
    ids = (text * 2)[:N_VIRTUAL]
    _, prefix = adapted("prefix", model)
    init_prefix_from_text(prefix, lambda s, add_special_tokens: {"input_ids": text}, "789")
    x = torch.tensor([[3, 14, 15, 92]])
    with torch.no_grad():
        typed = model(input_ids=torch.cat([torch.tensor([ids]), x], 1)).logits[:, N_VIRTUAL:]
        torch.testing.assert_close(prefix(input_ids=x).logits, typed, atol=1e-5, rtol=1e-5)
        again = prefix_as_cache(prefix)
        set_prefix(prefix, again)  # reading and writing the layout are inverses
        torch.testing.assert_close(prefix_as_cache(prefix).layers[1].values,
                                   again.layers[1].values)


def test_a_saved_prompt_adapter_generates_through_the_evaluator(tmp_path):
    """`eval toolcalls --adapter` path: load() puts a saved prompt- or prefix-tuning adapter on
    the model and play() generates, batched with left padding, through PEFT."""
    smollm2_or_skip()
    from transformers import AutoTokenizer

    from llm_deeper.data.toolcalls import tool_calling_dataset
    from llm_deeper.hf.models import hf_dir, load
    from llm_deeper.hf.toolcall_eval import play, score

    tok = AutoTokenizer.from_pretrained(hf_dir("smollm2-135m"))
    tok.save_pretrained(tmp_path / "model")
    test = tool_calling_dataset(n_train=1, n_val=1, n_test=2)["test"]
    for method in ("prompt", "prefix"):
        base, peft = adapted(method, tiny_llama(len(tok)))
        base.generation_config.eos_token_id = tok.eos_token_id
        base.save_pretrained(tmp_path / "model")
        peft.save_pretrained(tmp_path / method)
        model, tok2 = load(str(tmp_path / "model"), adapter=str(tmp_path / method))
        assert type(model).__name__ == "PeftModelForCausalLM"
        records = play(model, tok2, test, batch_size=2)
        assert len(records) == 2 and all(isinstance(r["reply"], str) for r in records)
        assert 0 <= score(test, records, text_metrics=False)["exact_match"] <= 1


def test_batched_prompt_tuned_generation_equals_one_by_one():
    """Left padding must not move the real tokens away from the virtual ones: the evaluator's
    batched generation scores each conversation as PEFT does on it alone (no padding), where
    PEFT's own batched generate (virtual tokens before the padding, position ids dropped)
    does not."""
    smollm2_or_skip()
    from transformers import AutoTokenizer

    from llm_deeper.hf.models import hf_dir
    from llm_deeper.hf.toolcall_eval import _generate_prompt_tuned, generate_batch

    tok = AutoTokenizer.from_pretrained(hf_dir("smollm2-135m"))
    tok.padding_side = "left"
    _, peft = adapted("prompt", tiny_llama(len(tok)))
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                     add_generation_prompt=True)
             for q in ("Hi", "Add 7 and 5, then multiply the sum by 3.")]
    kw = dict(max_new_tokens=2, do_sample=False, output_logits=True,
              return_dict_in_generate=True, pad_token_id=tok.eos_token_id)
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        ours = _generate_prompt_tuned(peft, enc, **kw).logits[0]
        peft_batched = peft.generate(**enc, **kw).logits[0]
        alone = torch.cat([peft.generate(**tok(t, return_tensors="pt", add_special_tokens=False),
                                         **kw).logits[0] for t in texts])
    torch.testing.assert_close(ours, alone, atol=1e-4, rtol=1e-4)
    assert (peft_batched[0] - alone[0]).abs().max() > 1e-4  # the padded row, shifted
    replies = generate_batch(peft, tok, [[{"role": "user", "content": "Hi"}]], 3)
    assert isinstance(replies[0], str)


@pytest.mark.parametrize("args,says", [
    (["--model", "smollm2-135m", "--method", "prompt", "--num-virtual-tokens", "0"],
     "--num-virtual-tokens must be at least 1"),
    (["--model", "smollm2-135m", "--method", "lora", "--num-virtual-tokens", "8"],
     "--num-virtual-tokens is for --method prompt or prefix"),
    (["--checkpoint", "no-such-dir", "--method", "prefix"], "is for real models (--model)"),
    (["--checkpoint", "no-such-dir", "--num-virtual-tokens", "8"],
     "--num-virtual-tokens is for --method prompt or prefix"),
])
def test_cli_refuses_bad_virtual_token_options(args, says, tmp_path, monkeypatch, capsys):
    from llm_deeper.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["finetune", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and err.count("\n") == 0 and err.endswith(".")


def test_a_virtual_token_adapter_has_nothing_to_merge(tmp_path):
    from llm_deeper.hf.finetune import finetune

    with pytest.raises(UserError, match="nothing to fold"):
        finetune("smollm2-135m", [], str(tmp_path), method="prefix", merge_out=str(tmp_path / "m"))


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_cached_generation_adds_the_virtual_tokens_once(method):
    """generate, chat and serve decode through hf.models.next_logits_fn with a KV cache: the
    virtual tokens enter on the first call only, so every step's logits equal the adapted
    model's on the whole sequence, uncached (PEFT prepends them to every call it is given)."""
    from llm_deeper.hf.models import next_logits_fn

    _, peft = adapted(method)
    next_logits = next_logits_fn(peft)
    ids, state = [3, 14, 15, 92, 65], {}
    for _ in range(6):
        ours = next_logits(ids, state)
        with torch.inference_mode():
            ref = peft(input_ids=torch.tensor([ids])).logits[0, -1]
        assert torch.allclose(torch.from_numpy(ours), ref, atol=1e-5)
        ids = ids + [int(ref.argmax())]
