"""The docs hold together: the path (docs/README.md) links every page, and every tutorial page
links what a learner checks it against: the code, a test, a lesson, references, and figures."""

import re
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"
# Pages that are not a concept's tutorial: the path itself, maps, lists and guides.
NOT_TUTORIALS = {"README.md", "crosswalk.md", "glossary.md", "references.md", "benchmarks.md",
                 "deployment.md"}


def pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def test_the_path_links_every_page():
    path = (DOCS / "README.md").read_text()
    linked = set(re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]*)?\)", path))
    assert {p.name for p in pages()} - {"README.md"} <= linked


def test_every_tutorial_links_its_code_tests_lesson_references_and_figures():
    for page in pages():
        if page.name in NOT_TUTORIALS:
            continue
        text = page.read_text()
        missing = [what for what, pattern in (
            ("code", r"src/llm_deeper/|`[\w/]+\.py`"), ("a test", r"tests/test_\w+\.py"),
            ("a lesson", r"lessons/\d\d_\w+/\d\d_\w+\.py"), ("references", r"references\.md"),
            ("a figure", r"!\[[^\]]*\]\(figures/[\w.-]+\.png\)")) if not re.search(pattern, text)]
        assert not missing, f"{page.name} lacks {', '.join(missing)}"
