"""TRL + PEFT fine-tuning of SmolLM2 (a few steps): loss only on assistant turns, a small adapter
that PEFT loads back, and clear refusals."""

import pytest

from conftest import smollm2_or_skip
from llm_deeper.errors import UserError


@pytest.fixture(scope="module")
def tok():
    smollm2_or_skip()
    from transformers import AutoTokenizer

    from llm_deeper.hf.models import hf_dir

    return AutoTokenizer.from_pretrained(hf_dir("smollm2-135m"))


def test_labels_cover_exactly_the_assistant_turns(tok):
    from llm_deeper.hf.finetune import tokenize_conversation

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "It is 42."}]
    out = tokenize_conversation(tok, msgs, 512)
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(out["input_ids"]) == full
    learned = tok.decode([t for t, l in zip(out["input_ids"], out["labels"]) if l != -100])
    assert learned == "Hello!<|im_end|>\nIt is 42.<|im_end|>\n"


def test_lora_steps_write_an_adapter_peft_loads(tmp_path):
    smollm2_or_skip()
    from llm_deeper.data.toolcalls import tool_calling_dataset
    from llm_deeper.hf.finetune import finetune
    from llm_deeper.hf.models import load

    rows = tool_calling_dataset(n_train=4, n_val=1, n_test=1, seed=0)["train"]
    r = finetune("smollm2-135m", rows, str(tmp_path / "run"), steps=2, batch_size=2,
                 rank=4, alpha=8, max_length=384, progress=False, log=lambda *_: None)
    assert 0 < r["trainable_share"] < 0.02 and r["weights_bytes"] < 10e6
    model, _ = load("smollm2-135m", adapter=r["output"])
    assert type(model).__name__.startswith("Peft")


def test_qlora_without_its_requirements_says_so(tmp_path):
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("QLoRA can run here")
    from llm_deeper.hf.finetune import finetune

    with pytest.raises(UserError, match="qlora needs"):
        finetune("smollm2-135m", [], str(tmp_path), method="qlora")


def test_eval_toolcalls_command_scores_the_base_model():
    smollm2_or_skip()
    import json
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "llm_deeper", "eval", "toolcalls", "--n", "3"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["examples"] == 3 and 0 <= out["exact_match"] <= out["tool_name_accuracy"] <= 1
