"""The structure drawn from the package's own source: no import circle, no private name crossing modules,
no architecture named outside ``jetjax/models/``, no overlong module.

Run alone with ``python -m pytest -q tests/test_structure.py``; on failure the message lists the circle,
the offending imports, string constants or modules. Every import counts, including those inside functions
(a lazy import only hides a circle from the interpreter, not from a reader).
"""

import ast
import re
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


# -- family knowledge stays in jetjax/models/ ---------------------------------------------------

# Modules whose job is to name architectures: the families themselves, and the tiny test models.
ARCH_HOMES = ("jetjax/models/", "jetjax/testing.py")

# Today's modules outside ARCH_HOMES that still name architectures, each with its number of
# offending string constants as the bound: the count may only go down (remove an entry at zero).
ARCH_NAME_ALLOWLIST = {
    # llama.cpp's tokenizer vocabularies ('gpt2' BPE, 'llama' SentencePiece) and pre-tokenizer names
    # ('olmo', 'qwen2'): names of tokenizers that coincide with architecture names, not architectures
    "jetjax/io/gguf_tokenizer.py": 6,
    # benchmarks that build models of given architectures (families.py compares each HF model_type)
    "jetjax/bench/families.py": 8,
    "jetjax/bench/jet_order.py": 1,
    "jetjax/bench/lenses.py": 1,
    "jetjax/bench/ngrams.py": 7,
    "jetjax/bench/paths.py": 1,
    "jetjax/bench/real_model.py": 1,
    "jetjax/bench/search.py": 1,
    # doctests still spelling out ModelConfig(arch=...) instead of jetjax.testing.tiny_model
    "jetjax/io/adapters.py": 1,
    "jetjax/ngrams/settings.py": 1,
    "jetjax/ngrams/sweep.py": 2,
    "jetjax/ngrams/trigrams.py": 1,
}

_ARCH_KEYWORD = re.compile(r"""\barch\s*=\s*(["'])([^"'\n]*)\1""")


def _arch_names() -> set[str]:
    """Every architecture name jetjax knows: the registered model types and GGUF architectures."""
    from jetjax.models import FAMILIES

    return set(FAMILIES) | {arch for family in FAMILIES.values() for arch in family.gguf}


def _arch_literals(source: str, names: set[str]) -> list[tuple[int, str]]:
    """``(line, text)`` of each string constant (docstrings included) that equals an architecture
    name or holds an ``arch="..."`` keyword; prose that mentions a name passes."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value in names:
                hits.append((node.lineno, repr(node.value)))
            hits += [(node.lineno, m.group(0)) for m in _ARCH_KEYWORD.finditer(node.value)]
    return sorted(hits)


def _rel(path: Path) -> str:
    return path.relative_to(PACKAGE.parent).as_posix()


def test_no_architecture_named_outside_models():
    names = _arch_names()
    found = {}
    for path in MODULES.values():
        rel = _rel(path)
        if not rel.startswith(ARCH_HOMES):
            hits = _arch_literals(path.read_text(encoding="utf-8"), names)
            if hits:
                found[rel] = hits
    over = [f"{rel}: {len(hits)} (allowed {ARCH_NAME_ALLOWLIST.get(rel, 0)}): "
            + ", ".join(f"line {line} {text}" for line, text in hits)
            for rel, hits in sorted(found.items()) if len(hits) > ARCH_NAME_ALLOWLIST.get(rel, 0)]
    assert not over, ("architecture names outside jetjax/models/ (ask the family's record, or use "
                      "jetjax.testing.tiny_model in doctests):\n" + "\n".join(over))
    stale = sorted(set(ARCH_NAME_ALLOWLIST) - set(found))
    assert not stale, f"these modules name no architecture any more; remove them from ARCH_NAME_ALLOWLIST: {stale}"


def test_the_architecture_scan_sees_names():
    names = _arch_names()
    assert {"gpt2", "llama", "gemma3_text", "gemma3"} <= names   # "gemma3": a GGUF architecture only
    planted = ('"""Doc.\n\n  >>> cfg = ModelConfig(arch="llama", n_layers=1)\n"""\n'
               'KIND = "gpt2"\nPROSE = "a gpt2 model, the llama family"\n')
    assert _arch_literals(planted, names) == [(1, 'arch="llama"'), (5, "'gpt2'")]
    assert _arch_literals((PACKAGE / "models" / "gpt2.py").read_text(encoding="utf-8"), names)


# -- module size ---------------------------------------------------------------------------------

MAX_MODULE_LINES = 650
# Today's longer modules, each bounded by its current length: it may only shrink (remove an entry
# once the module is back under MAX_MODULE_LINES).
LONG_MODULE_ALLOWLIST = {
    "jetjax/studies/faithfulness.py": 804,
}


def test_no_module_is_too_long():
    lengths = {_rel(path): len(path.read_text(encoding="utf-8").splitlines()) for path in MODULES.values()}
    over = [f"{rel}: {n} lines (at most {LONG_MODULE_ALLOWLIST.get(rel, MAX_MODULE_LINES)})"
            for rel, n in sorted(lengths.items()) if n > LONG_MODULE_ALLOWLIST.get(rel, MAX_MODULE_LINES)]
    assert not over, "modules too long (split them by topic):\n" + "\n".join(over)
    stale = sorted(rel for rel in LONG_MODULE_ALLOWLIST if lengths.get(rel, 0) <= MAX_MODULE_LINES)
    assert not stale, f"these modules are short enough now; remove them from LONG_MODULE_ALLOWLIST: {stale}"


# -- one results protocol ------------------------------------------------------------------------

def _result_types():
    from jetjax.lenses.result import LensResult
    from jetjax.ngrams.analysis import KeywordMass, TableDiff
    from jetjax.ngrams.table import NGramTable
    from jetjax.paths.attribution import PathScores
    from jetjax.paths.expand import Expansion
    from jetjax.paths.frozen import FrozenPaths
    from jetjax.paths.graph import AttributionGraph
    from jetjax.paths.results import PathAttribution, TopPaths
    from jetjax.studies.diffing import BigramDiff, DataCheck

    return (LensResult, PathAttribution, TopPaths, PathScores, FrozenPaths, Expansion, NGramTable, TableDiff,
            KeywordMass, DataCheck, BigramDiff, AttributionGraph)


RESULT_TYPES = _result_types()

# Types without a ``top``, and why (each documents it in its docstring too).
NO_TOP = {
    "KeywordMass": "a handful of figures (masses and counts): nothing to rank",
}


@pytest.mark.parametrize("cls", RESULT_TYPES, ids=lambda c: c.__name__)
def test_result_types_follow_one_protocol(cls):
    import dataclasses
    import inspect

    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, \
        f"{cls.__name__} is not a frozen dataclass"
    for f in dataclasses.fields(cls):
        annotation = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
        assert not re.search(r"\bModel\b", annotation), f"{cls.__name__}.{f.name} is annotated {annotation}: a Model"
    names = ("to_json", "load", "from_json", "table", "to_dataframe") + (() if cls.__name__ in NO_TOP else ("top",))
    missing = [name for name in names if not callable(getattr(cls, name, None))]
    assert not missing, f"{cls.__name__} lacks {missing}"
    total = inspect.getattr_static(cls, "total", None)   # a field (no class attribute), a property, or absent
    assert total is None or isinstance(total, property), \
        f"{cls.__name__}.total is a {type(total).__name__}; it must be a value (a field or a property)"
