"""What a vocabulary sweep computes and how: one frozen, hashable :class:`SweepSettings`.

:func:`~jetjax.ngrams.jet_bigrams`, :func:`~jetjax.ngrams.sweep_contexts` and the trigram sweeps
take their settings as keywords or as ``settings=``; either way they build one ``SweepSettings``
at entry, which checks and normalises every field before anything is compiled, cached or written.
It is then the one thing passed inward: the compile cache is keyed on its (typed, validated)
fields, and a resumable sweep's ``manifest.json`` records it under ``"settings"``.

Integers must be ints (``2.0`` and ``True`` are refused, so a bad value can never share a cache key
with a good one: ``2.0 == 2`` and ``True == 1`` in Python); paths are parsed by the label grammar
(:mod:`jetjax.paths.labels`) and kept in their one spelling.

Example:
  >>> s = SweepSettings(paths="emb>mlp0>dec", top_k=5)
  >>> s.paths, s.top_k, s == SweepSettings(paths=["emb>mlp0>dec"], top_k=5), hash(s) == hash(s)
  (('emb>mlp0>dec',), 5, True, True)
  >>> SweepSettings(paths="emb>dec", top_k=2.0)
  Traceback (most recent call last):
  ...
  ValueError: top_k must be an int >= 1, got 2.0
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jetjax._internal.checks import check_nonnegative_int, check_order, check_positive_int
from jetjax.ngrams.scorer import check_paths
from jetjax._internal.precision import COMPUTE_DTYPES, check_compute_dtype

__all__ = ["SweepSettings", "resolve_settings", "default_vocab_tile", "MAX_TILE", "DEFAULT", "COMPUTE_DTYPES",
           "check_compute_dtype"]


class _Default:
    """The default of a sweep keyword: "not given", told apart from every value a user may pass."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<default>"


# Keyword arguments of the sweep functions default to this, so that one given next to ``settings=``
# can be noticed (and refused when it disagrees).
DEFAULT: Any = _Default()

# Fields that change float rounding but not the maths: recorded in a manifest, so that a resumed
# sweep never mixes chunks computed with different ones (see jetjax.ngrams.sweep).
ROUNDING_KNOBS = ("block_rows", "vocab_tile")

@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The settings of one vocabulary sweep, checked and normalised when built.

    Attributes:
      paths: the path labels whose scores are averaged (one name alone counts as a list of it),
        kept as a tuple in their canonical spelling; duplicates are an error.
      order: the jet order of every component.
      top_k: next tokens kept per row.
      global_k: how many of the most probable entries over the whole table to keep (``0``: none).
      block_rows: rows per device step (a speed knob; changes float rounding in the last bits).
      chunk_rows: rows per stored chunk (the unit of resumption).
      vocab_tile: vocabulary columns per GEMM tile inside a step (a speed knob; changes rounding).
        ``None`` (the default): :func:`default_vocab_tile`, tiles of at most :data:`MAX_TILE`
        columns that split the vocabulary evenly, so the last one is not mostly padding.
      kind: what the rows are (``"bigrams"``, ``"trigrams"``, ``"skip_bigrams"``, ``"contexts"``);
        set by the entry point, recorded in the table's ``meta``.
      compute_dtype: the precision of the unembedding GEMM, one of :data:`COMPUTE_DTYPES`:
        ``"float32"`` (default) or ``"bfloat16"`` (the path's output and the unembedding rounded to
        bfloat16, products accumulated in float32; logsumexp and top-k in float32). Recorded in a
        manifest only when it is not float32, so directories written before it existed still resume.

    Construction raises ``ValueError`` naming the field and the value (``TypeError`` for a jet
    order that is not an int). Checks that need the model (layers of each path, ``top_k`` against
    the vocabulary) are :meth:`for_model`'s.
    """

    paths: tuple[str, ...]
    order: int = 0
    top_k: int = 10
    global_k: int = 100
    block_rows: int = 1024
    chunk_rows: int = 8192
    vocab_tile: int | None = None
    kind: str = "contexts"
    compute_dtype: str = "float32"

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("paths", check_paths(None, self.paths))
        put("order", check_order(self.order))
        put("top_k", check_positive_int("top_k", self.top_k))
        put("global_k", check_nonnegative_int("global_k", self.global_k))
        for name in ("block_rows", "chunk_rows", "vocab_tile"):
            if name != "vocab_tile" or self.vocab_tile is not None:
                put(name, check_positive_int(name, getattr(self, name)))
        if not isinstance(self.kind, str) or not self.kind or self.kind != "".join(self.kind.split()):
            raise ValueError(f"kind must be a non-empty word such as 'bigrams', got {self.kind!r}")
        put("kind", str(self.kind))
        put("compute_dtype", check_compute_dtype(self.compute_dtype))

    def for_model(self, model, n_devices: int = 1) -> SweepSettings:
        """These settings as ``model`` on ``n_devices`` devices runs them.

        Paths are checked against the model's depth (and residual layout), ``top_k`` against its
        vocabulary; ``vocab_tile`` is capped at the vocabulary size (``None``: :func:`default_vocab_tile`)
        and ``block_rows`` rounded up to a multiple of ``n_devices`` (every device gets the same
        rows), so equal effective settings are equal values.

        Example:
          >>> from jetjax.models import ModelConfig, random_model
          >>> cfg = ModelConfig(arch="gpt2", n_layers=1, d_model=8, n_heads=2, d_head=4, d_mlp=16,
          ...                   vocab_size=11, n_positions=8, norm_eps=1e-5, activation="gelu_new")
          >>> s = SweepSettings(paths="emb>mlp0>dec", top_k=3, block_rows=5).for_model(random_model(cfg), 4)
          >>> s.block_rows, s.vocab_tile
          (8, 11)
          >>> SweepSettings(paths="emb>mlp1>dec").for_model(random_model(cfg))  # doctest: +ELLIPSIS
          Traceback (most recent call last):
          ...
          ValueError: path 'emb>mlp1>dec': mlp1: layer 1 is out of range for a model with 1 layers (valid: 0..0)
        """
        v = model.config.vocab_size
        n_devices = check_positive_int("n_devices", n_devices)
        check_positive_int("top_k", self.top_k, v, "the vocabulary size")
        tile = default_vocab_tile(v) if self.vocab_tile is None else min(self.vocab_tile, v)
        return dataclasses.replace(self, paths=check_paths(model, self.paths), vocab_tile=tile,
                                   block_rows=-(-self.block_rows // n_devices) * n_devices)

    def to_json(self) -> dict:
        """The settings as a JSON-able dict (what a manifest and a table's ``meta`` record)."""
        out = {**dataclasses.asdict(self), "paths": list(self.paths)}
        if out["compute_dtype"] == "float32":
            del out["compute_dtype"]          # the default, and what every sweep before the field computed
        return out


MAX_TILE = 4096
"""The widest vocabulary tile of the default: a ``[1024, d] @ [d, 4096]`` GEMM per tile."""


def default_vocab_tile(vocab_size: int) -> int:
    """The default vocabulary tile for ``vocab_size``: as many tiles as :data:`MAX_TILE` needs, each as
    narrow as that allows, rounded up to a multiple of 16 (the top-k prefilter's group; capped at
    the vocabulary). Padding columns cost a whole GEMM column each: GPT-2's 50257 columns in tiles of
    4096 carry 6% padding, in 13 tiles of 3872 0.2%, and a float32 step of 1024 rows took 313 ms
    instead of 341 (bfloat16: 75 instead of 80; 2-core Xeon with AMX).

    Example:
      >>> default_vocab_tile(50257), default_vocab_tile(49152), default_vocab_tile(262144), default_vocab_tile(11)
      (3872, 4096, 4096, 11)
    """
    v = check_positive_int("vocab_size", vocab_size)
    n_tiles = -(-v // MAX_TILE)
    narrowest = -(-v // n_tiles)
    return min(v, -(-narrowest // 16) * 16)


def resolve_settings(settings: SweepSettings | None, **given) -> SweepSettings:
    """The :class:`SweepSettings` of one call: ``settings`` itself, or one built from the keywords.

    Keywords left at :data:`DEFAULT` were not given. Next to ``settings``, a keyword may only repeat
    what the settings say (compared after normalisation); one that disagrees is an error rather
    than one of the two being silently ignored. ``kind`` is the entry point's: it replaces the
    settings' own.

    Example:
      >>> resolve_settings(None, paths="emb>dec", top_k=3, order=DEFAULT).top_k
      3
      >>> resolve_settings(SweepSettings(paths="emb>dec", top_k=3), top_k=4)  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: settings= and keyword arguments disagree: the settings have top_k=3, the keyword gives 4; ...
    """
    explicit = {name: value for name, value in given.items() if value is not DEFAULT}
    kind = explicit.pop("kind", None)
    if settings is None:
        if "paths" not in explicit:
            raise ValueError("name the paths to sweep: paths=... (e.g. 'emb>dec') or settings=SweepSettings(...)")
        resolved = SweepSettings(**explicit)
    else:
        if not isinstance(settings, SweepSettings):
            raise TypeError(f"settings must be a jetjax.ngrams.SweepSettings, got {type(settings).__name__}: "
                            f"{settings!r}")
        clashes = []
        for name, value in explicit.items():
            alone = SweepSettings(**{"paths": settings.paths, name: value})  # normalised alone
            if getattr(alone, name) != getattr(settings, name):
                clashes.append(f"the settings have {name}={getattr(settings, name)!r}, the keyword gives {value!r}")
        if clashes:
            raise ValueError("settings= and keyword arguments disagree: " + "; ".join(clashes)
                             + "; pass each setting once, in settings= or as a keyword")
        resolved = settings
    return resolved if kind is None else dataclasses.replace(resolved, kind=kind)
