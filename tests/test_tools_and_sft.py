"""The tools are real, the tool-calling dataset holds out phrasings and values,
and SFT files in both shapes load (or say clearly what is wrong)."""

import json

import pytest

from llm_deeper.chat.reply import parse_tool_calls
from llm_deeper.chat.tools import add_days, calculator, convert_units, days_between, run_call
from llm_deeper.data.sft import load_sft, save_jsonl
from llm_deeper.data.toolcalls import PHRASES, tool_calling_dataset
from llm_deeper.errors import UserError

from conftest import shakespeare_or_skip


def test_tools_compute_real_answers():
    assert calculator("(12 + 30) * 2") == "84" and calculator("7 / 2") == "3.5"
    assert calculator("__import__('os')").startswith("error")
    assert calculator("1 / 0").startswith("error") and calculator("2 ** 1000").startswith("error")
    assert convert_units(100, "C", "F") == "212 F" and convert_units(1, "mile", "km") == "1.6093 km"
    assert convert_units(1, "kg", "m").startswith("error")
    assert add_days("2024-02-28", 2) == "2024-03-01"
    assert days_between("2024-01-01", "2025-01-01") == "366"


def test_dataset_holds_out_phrasings_and_values():
    shakespeare_or_skip()
    ds = tool_calling_dataset(n_train=300, n_val=30, n_test=100, seed=1)
    users = {split: {ex["messages"][1]["content"] for ex in ds[split]} for split in ds}
    assert not users["train"] & users["test"]
    train_phrases = {p for k in PHRASES for p in PHRASES[k][0]}
    test_phrases = {p for k in PHRASES for p in PHRASES[k][1]}
    assert not train_phrases & test_phrases
    args = lambda split: {json.dumps(c["arguments"], sort_keys=True)
                          for ex in ds[split] for c in ex["calls"]}
    assert not args("train") & args("test")
    tasks = {ex["task"] for ex in ds["train"]}
    assert tasks == set(PHRASES)  # every tool, and requests that need none
    for ex in ds["train"][:50]:  # every answer comes from actually running the call
        if ex["calls"]:
            assert ex["messages"][3]["content"] == run_call(ex["calls"][0])
            assert parse_tool_calls(ex["messages"][2]["content"])[0] == ex["calls"]


def test_sft_files_in_both_shapes(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(20)]
    save_jsonl(rows, tmp_path / "c.jsonl")
    splits = load_sft(tmp_path / "c.jsonl")
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [16, 2, 2]
    (tmp_path / "p.csv").write_text("prompt,completion\nhi,hello\n2+2?,4\n")
    assert len(sum(load_sft(tmp_path / "p.csv", splits=(0.5, 0.0, 0.5)).values(), [])) == 2
    (tmp_path / "s.json").write_text(json.dumps({"train": rows[:3], "test": rows[3:4]}))
    assert {k: len(v) for k, v in load_sft(tmp_path / "s.json").items()} == {"train": 3, "test": 1}


def test_wrong_columns_name_what_was_found(tmp_path):
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(UserError, match="found columns answer, question; expected 'messages'"):
        load_sft(tmp_path / "bad.jsonl")
    with pytest.raises(UserError, match="no dataset file"):
        load_sft(tmp_path / "missing.jsonl")


def test_both_shapes_become_conversations_and_hub_ids_fail_clearly(tmp_path, monkeypatch):
    from llm_deeper.data.sft import as_messages

    assert as_messages({"prompt": "2+2?", "completion": "4"}) == [
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    conv = [{"role": "user", "content": "hi"}]
    assert as_messages({"prompt": conv, "completion": [{"role": "assistant", "content": "yo"}]}) \
        == conv + [{"role": "assistant", "content": "yo"}]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="hub datasets need the network"):
        load_sft("nobody-here/no-such-dataset")


def test_count_word_reads_titles_only():
    from llm_deeper.chat.tools import count_word, title_key

    assert title_key("Romeo and Juliet") == title_key(" romeo_and_juliet ") == "romeo_and_juliet"
    assert title_key("The Tempest") == "tempest"
    assert count_word("/etc/passwd", "root").startswith("error: no work titled")
    assert count_word("../../secrets", "x").startswith("error")
