"""`llm-deeper docs figures`: every registered figure draws (quick settings), docs/figures/ holds
exactly the registered figures, every figure a page links exists and every figure is linked
from its page, and the same drawing gives the same bytes."""

import re
from pathlib import Path

import pytest

from llm_deeper.cli import main
from llm_deeper.commands.docs import missing
from llm_deeper.figures import all_figures, pyplot, save

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
FIGURES = all_figures()
PNG = b"\x89PNG\r\n\x1a\n"


def test_every_figure_draws_in_quick_mode(tmp_path, capsys):
    assert FIGURES, "no figure is registered (llm_deeper.figures.MODULES)"
    assert main(["docs", "figures", "--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    plt = pyplot()
    for name, fig in FIGURES.items():
        path = tmp_path / name
        if missing(fig):  # its model or data is not cached here: one line says so
            assert re.search(rf"{re.escape(name)}\s+skipped: .* \(run 'llm-deeper ", out), out
            assert not path.exists()
            continue
        assert re.search(rf"{re.escape(name)}\s+\d+\.\d s", out), out
        assert path.read_bytes()[:8] == PNG, name
        img = plt.imread(path)  # (rows, columns, RGBA)
        assert img.ndim == 3 and img.shape[0] >= 200 and img.shape[1] >= 300, (name, img.shape)
        assert img[..., :3].std() > 0.05, f"{name} is (nearly) blank"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        n for n, f in FIGURES.items() if not missing(f))  # no temporary file left behind


def test_docs_figures_holds_exactly_the_registered_figures():
    """`llm-deeper docs figures` (full settings) wrote them; none stale, none missing."""
    assert sorted(p.name for p in (DOCS / "figures").iterdir()) == sorted(FIGURES)
    for name in FIGURES:
        assert (DOCS / "figures" / name).read_bytes()[:8] == PNG, name


def _links() -> dict[str, set[str]]:
    """figure name -> the pages (docs/....md, README.md) that show it."""
    links: dict[str, set[str]] = {}
    pages = [*DOCS.rglob("*.md"), ROOT / "README.md"]
    for page in pages:
        prefix = "docs/figures/" if page.parent == ROOT else "figures/"
        for name in re.findall(rf"\]\({re.escape(prefix)}([^)\s]+)\)", page.read_text()):
            links.setdefault(name, set()).add(page.relative_to(ROOT).as_posix())
    return links


def test_every_linked_figure_exists_and_every_figure_is_on_its_page():
    links = _links()
    for name, pages in links.items():
        assert (DOCS / "figures" / name).is_file(), f"{sorted(pages)} link figures/{name}"
    for name, fig in FIGURES.items():
        assert (ROOT / fig.page).is_file(), (name, fig.page)
        assert fig.page in links.get(name, set()), f"{fig.page} does not show {name}"


def test_a_figure_whose_data_is_not_cached_is_skipped_with_one_line(tmp_cache, tmp_path,
                                                                   capsys):
    """With an empty cache (nothing pulled), figures that need SmolLM2 or Shakespeare are
    skipped, each with the command that fetches what it needs, and the command still exits 0."""
    needing = {f.needs: name for name, f in FIGURES.items() if f.needs}
    assert needing, "no registered figure needs cached data"
    assert main(["docs", "figures", "--quick", "--out", str(tmp_path), "--only",
                 *needing.values()]) == 0
    out = capsys.readouterr().out
    for needs, name in needing.items():
        command = {"smollm2": "llm-deeper models pull smollm2-135m",
                   "shakespeare": "llm-deeper data pull shakespeare"}[needs]
        assert re.search(rf"{re.escape(name)}\s+skipped: .* is not cached \(run '{command}'\)",
                         out), out
    assert not any(tmp_path.iterdir())


def test_an_unknown_figure_is_one_sentence_and_exit_2(capsys):
    assert main(["docs", "figures", "--only", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no figure named nope.png; the figures are ") and "\n" not in err


def test_list_and_the_bare_command(capsys):
    assert main(["docs", "figures", "--list"]) == 0
    out = capsys.readouterr().out
    for name, fig in FIGURES.items():
        assert f"{name}  [{fig.page}]" in out and fig.what in out
    assert main(["docs"]) == 0  # no sub-command: the help, which names the sub-commands
    assert "figures" in capsys.readouterr().out


def test_the_same_drawing_gives_the_same_bytes(tmp_path):
    plt = pyplot()
    for name in ("a.png", "b.png"):
        fig, ax = plt.subplots(figsize=(3, 2))
        im = ax.imshow([[0, 1], [2, 3]])
        fig.colorbar(im)
        ax.set_title("same")
        save(fig, tmp_path / name)
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert b"Software" not in (tmp_path / "a.png").read_bytes()  # no matplotlib version inside


@pytest.mark.parametrize("name", ["sinusoidal", "scheduler_timeline.png"])
def test_a_registered_figure_redraws_identically(name, tmp_path):
    for out in ("one", "two"):
        assert main(["docs", "figures", "--quick", "--only", name, "--out",
                     str(tmp_path / out)]) == 0
    png = name if name.endswith(".png") else name + ".png"
    assert (tmp_path / "one" / png).read_bytes() == (tmp_path / "two" / png).read_bytes()
