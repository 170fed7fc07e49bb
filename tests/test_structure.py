"""The package's shape, checked: no import cycle, the schema and the PyTorch engine stand without
the NumPy engine (whose training retunes the process's allocator), and files stay readable."""

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"
PACKAGE = SRC / "llm_deeper"


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at any depth (inside functions too: a lazy
    import is still a dependency), except under `if TYPE_CHECKING:`."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        found = set()
        todo = [ast.parse(path.read_text())]
        while todo:
            node = todo.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                if isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                        base = ".".join(parts + ([child.module] if child.module else []))
                    for alias in child.names:  # `from pkg import module` imports the module
                        sub = f"{base}.{alias.name}"
                        found.add(sub if sub in modules else base)
                elif isinstance(child, ast.Import):
                    found.update(alias.name for alias in child.names)
                todo.append(child)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 80 and graph["llm_deeper.checkpoint"]  # the walk found the package
    assert cycles(graph) == []


def test_the_schema_torch_engine_and_checkpoints_stand_without_the_numpy_engine(tmp_path):
    """Loading a checkpoint and running it in the PyTorch engine never imports the NumPy engine,
    so the allocator setting that NumPy training makes (numpy_engine/speed.py, the package's only
    mallopt call) is not made behind a user's back."""
    graph = import_graph()
    for name in ("llm_deeper.params", "llm_deeper.config", "llm_deeper.checkpoint",
                 "llm_deeper.train", "llm_deeper.torch_engine.model",
                 "llm_deeper.torch_engine.train", "llm_deeper.torch_engine.paged"):
        assert not any(m.startswith("llm_deeper.numpy_engine") for m in graph[name]), name
    code = f"""
import sys, torch
from llm_deeper.checkpoint import load_checkpoint, save_checkpoint
from llm_deeper.config import preset
from llm_deeper.params import init_params
from llm_deeper.torch_engine.model import TorchGPT
cfg = preset("small", vocab_size=20)
save_checkpoint({str(tmp_path / "ck")!r}, cfg, init_params(cfg))
ck = load_checkpoint({str(tmp_path / "ck")!r})
TorchGPT(ck.config, ck.params)(torch.zeros(1, 4, dtype=torch.long))
loaded = sorted(m for m in sys.modules if m.startswith("llm_deeper.numpy_engine"))
print("numpy engine modules:", loaded)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "numpy engine modules: []" in r.stdout


def test_files_read_in_one_sitting():
    sizes = {p.relative_to(PACKAGE).as_posix(): len(p.read_text().splitlines())
             for p in PACKAGE.rglob("*.py")}
    assert sizes["cli.py"] <= 150
    assert {k: v for k, v in sizes.items() if v > 350} == {}
