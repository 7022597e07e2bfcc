"""The structure drawn from the package's own imports: no import circle, no private name crossing modules.

Run alone with ``python -m pytest -q tests/test_structure.py``; on failure the message lists the circle
or the offending imports. Every import counts, including those inside functions (a lazy import only
hides a circle from the interpreter, not from a reader).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "jetjax"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path):
    """``(imported module, names taken from it, line)`` for every jetjax import in ``path``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jetjax":
                    yield alias.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "jetjax":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                if sub in MODULES:            # `from jetjax.ngrams import sweep`: the submodule itself
                    yield sub, (), node.lineno
                else:
                    yield node.module, (alias.name,), node.lineno


def _graph():
    graph = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        for target, _, _ in _imports(path):
            if target in MODULES and target != mod:
                graph[mod].add(target)
    return graph


def _package_of(mod: str) -> str:
    return mod if MODULES[mod].name == "__init__.py" else mod.rpartition(".")[0]


def test_no_import_circle():
    # A package's __init__ re-exports its submodules, so a submodule importing a sibling *through*
    # the package is an edge to the __init__; edges from a package's own __init__ into its
    # submodules are the re-export itself and do not make a circle with them.
    graph = _graph()
    for mod in graph:
        graph[mod] = {t for t in graph[mod] if not (MODULES[t].name == "__init__.py" and mod.startswith(t + "."))}
    state, stack, circles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)


def test_no_private_name_crosses_modules():
    crossing = []
    for mod, path in MODULES.items():
        for target, names, line in _imports(path):
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != mod:
                    crossing.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name} from {target}")
    assert not crossing, "private names imported across modules:\n" + "\n".join(crossing)


def test_the_scan_sees_imports():
    """The scanner is not vacuous: it finds the imports we know are there."""
    graph = _graph()
    assert "jetjax.io.hf" in graph["jetjax"] and "jetjax.models" in graph["jetjax.io.hf"]
    assert len(MODULES) > 20


@pytest.mark.parametrize("heavy", ["torch", "transformers"])
def test_importing_jetjax_imports_no_torch(heavy):
    import subprocess
    import sys

    code = f"import sys, jetjax, jetjax.cli, jetjax.io.gguf, jetjax.io.assets; print({heavy!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
