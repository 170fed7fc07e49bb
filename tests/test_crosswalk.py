"""docs/crosswalk.md maps every item the seed documents name to what covers it here: every item
is listed, every file it names exists, every command it names is a command of ours, and what is
not built yet names the issue that builds it."""

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
CROSSWALK = ROOT / "docs" / "crosswalk.md"

# Every script, doc, demo mode, preset, tutorial and example the seeds name (../shared/seeds:
# LLM Deeper's README and overview, LLM Learning, LLM Explainer), as the crosswalk spells them.
SEED_ITEMS = [
    *[f"basics/{n}" for n in ("00_pandas.py", "01_numpy.py", "02_math.py",
                              "03_attention_math.py", "04_attention_impl.py",
                              "05_attention_positional_encoding.py", "06_mha.py",
                              "07_conclusion.py")],
    *[f"hfcore/{n}" for n in ("00_tinygpt.py", "01_transformers.py", "02_peft_lora.py",
                              "03_dataset_plus_finetune_full.py",
                              "04_dataset_plus_finetune_lora.py",
                              "05_finetuned_model_inference.py", "06_evals.py")],
    *[f"inferencing_and_advanced/{n}" for n in (
        "00_base.py", "01_peft_to_mlx.py", "02_mlx_lora.py", "03_server.py",
        "04_tool_calling_basic.py", "05_tool_calling_advanced.py",
        "07_vllm_cuda_plus_tools.py", "08_deepseek_example.py", "09_mistral_example.py",
        "10_diffuser_image.py")],
    "medical QA fine-tuning",
    *[f"{n}.md" for n in ("00_overview", "01_basics", "02_hfcore", "03_inferencing",
                          "04_tool_calling", "05_deployment")],
    "parameter counts", "VRAM", "hardware requirements", "in-context learning",
    "emergent abilities", "types of fine-tuning",
    *[f"{n}.py" for n in ("kv_caching", "positional_embeddings", "swiglu",
                          "grouped_query_attention", "multihead_latent_attention")],
    "training loops", "prefix tuning", "vocabulary construction", "Flash Attention",
    "distributed training", "quantization and compression", "evaluation metrics",
    *[f"Tutorial {i:02d}" for i in range(1, 11)],
    "How to learn with this.md",
    *[f"src/{n}.py" for n in ("tokenizer", "layers", "activations", "attention", "transformer",
                              "model", "optimizer", "lora", "utils")],
    *[f"run_demo.py {m}" for m in ("quick", "full", "generate", "mac-accel")],
    "Presets tiny / small / medium / large",
    "train_pretrain.py", "train_finetune_full.py", "train_finetune_lora.py",
    "References 1-29",
]
OPEN_ISSUES = range(12, 17)  # the curriculum, speed, quantization and examples issues


def rows():
    out = []
    for line in CROSSWALK.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 2 and not set(cells[0]) <= set("-: "):
            if cells != ["Seed item", "Here"]:
                out.append(cells)
    return out


def test_every_seed_item_is_in_the_crosswalk():
    items = " ".join(item for item, _ in rows())
    missing = [s for s in SEED_ITEMS if s.lower() not in items.lower()]
    assert missing == []


def test_everything_the_crosswalk_names_exists():
    from llm_deeper.cli import COMMANDS

    assert len(rows()) > 60
    for item, here in rows():
        named = re.findall(r"`([^`]+)`", here)
        issues = [int(n) for n in re.findall(r"issue (\d+)", here)]
        assert named or issues, item
        assert all(n in OPEN_ISSUES for n in issues), item
        for ref in named:
            if ref.startswith("llm-deeper "):
                assert ref.split()[1] in COMMANDS, (item, ref)
            elif ref.startswith(("lessons/", "docs/", "src/", "tests/")):
                assert (ROOT / ref).exists(), (item, ref)
            elif ref.startswith("uv run"):
                continue
            else:
                raise AssertionError(f"{item}: '{ref}' is neither a path nor a command")


def test_every_link_and_lesson_path_in_the_docs_exists():
    """README, docs/, lessons/README.md: relative links and `lessons/...` paths resolve."""
    pages = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "lessons" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
    for page in pages:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), (page.name, target)
        for path in re.findall(r"`((?:lessons|docs|tests)/[\w./-]+\.(?:py|md))`", text):
            if "NN_" not in path:  # CONTRIBUTING's placeholder lessons/NN_topic/NN_name.py
                assert (ROOT / path).exists(), (page.name, path)


def test_the_path_gives_every_lesson_a_stage_and_a_measured_time():
    """docs/README.md, the guided path: every lesson is a step of it, on a table row with the
    time it takes here, and every command a step names is one of ours."""
    from llm_deeper.cli import COMMANDS

    path = (ROOT / "docs" / "README.md").read_text()
    steps = {}
    for line in path.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            first = re.findall(r"`([^`]+)`", cells[0])
            assert re.search(r"\d+(\.\d+)? ?(s|min)\b", line), line  # a time on every step
            for ref in first:
                if ref.startswith("llm-deeper "):
                    assert ref.split()[1] in COMMANDS, ref
                steps[ref] = line
    lessons = sorted((ROOT / "lessons").glob("[0-9]*/*.py"))
    assert lessons and all(str(p.relative_to(ROOT)) in steps for p in lessons), \
        [str(p.relative_to(ROOT)) for p in lessons if str(p.relative_to(ROOT)) not in steps]
