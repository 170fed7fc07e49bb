"""TRL + PEFT fine-tuning: loss only on assistant turns, and a clear refusal of QLoRA where it
cannot run. (The runs themselves: tests/test_hf_pipeline.py.)"""

import pytest

from llm_deeper.errors import UserError

from conftest import smollm2_or_skip


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


def test_qlora_without_its_requirements_says_so(tmp_path):
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") and torch.cuda.is_available():
        pytest.skip("QLoRA can run here")
    from llm_deeper.hf.finetune import finetune

    with pytest.raises(UserError, match="qlora needs"):
        finetune("smollm2-135m", [], str(tmp_path), method="qlora")
