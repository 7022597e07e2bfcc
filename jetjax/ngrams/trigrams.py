"""Jet trigrams and skip-bigrams: two-token contexts ``(z1, z2) -> z3`` over a candidate set.

A context is the token-embedding sequence ``[E[z1], E[z2]]`` (no positions). Paths are the ones of
:mod:`jetjax.ngrams.scorer`, applied to the whole sequence and read at the last position:

* MLPs (and norms) act on each position separately, so ``emb>dec`` and ``emb>mlp{l}>dec`` see only
  ``z2``: they are the bigram part of a trigram score.
* ``attn{l}`` is the model's own attention branch (``model.attn(l, ·)``: pre-norm, every head,
  causal softmax over both positions, output projection) applied to the path's two-position value
  (at order 0, the path value itself: e.g. ``emb>mlp0>attn2>dec`` feeds ``MLP_0(E[z1]), MLP_0(E[z2])``
  to attention 2). Nothing is linearised or split by head: attention is exact, so ``z1`` reaches the
  next-token score only through these paths, via both the attention pattern and the values.

:func:`jet_trigrams` defaults to ``emb>dec`` plus ``emb>attn{l}>dec`` for every layer;
:func:`jet_skip_bigrams` keeps only paths through attention (no direct ``emb>dec``/MLP-only path),
i.e. the part of the score that attention carries from the two-token context.

``V²`` contexts are out of reach for real vocabularies: pass a candidate set, from
:func:`candidate_contexts` (all pairs of a token subset) or :func:`bigram_candidates` (each first
token followed by its most probable jet-bigram successors).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from jetjax._internal.checks import check_positive_int
from jetjax.paths.labels import Component, format_label
from jetjax.models.model import Model
from jetjax.ngrams.settings import DEFAULT
from jetjax.ngrams.sweep import sweep_contexts
from jetjax.ngrams.table import NGramTable

__all__ = ["jet_trigrams", "jet_skip_bigrams", "candidate_contexts", "bigram_candidates"]


def candidate_contexts(tokens: Sequence[int]) -> np.ndarray:
    """All ordered pairs ``(z1, z2)`` of a token subset: ``int32 [n², 2]``.

    Example:
      >>> candidate_contexts([4, 7]).tolist()
      [[4, 4], [4, 7], [7, 4], [7, 7]]
    """
    arr = np.asarray(tokens)
    if arr.size and (arr.dtype == object or not np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"tokens must be token ids (ints), got dtype {arr.dtype}: {arr.reshape(-1)[:5].tolist()}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"tokens must be non-negative token ids, got {int(arr.min())}")
    t = np.unique(arr.astype(np.int64))
    if t.size == 0:
        raise ValueError("candidate_contexts needs at least one token id")
    return np.stack(np.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2).astype(np.int32)


def bigram_candidates(table: NGramTable, first: Sequence[int] | None = None, per_row: int = 1) -> np.ndarray:
    """Contexts ``(z1, z2)`` with ``z2`` among the ``per_row`` most probable jet-bigram successors of ``z1``.

    ``first``: the ``z1`` token ids (default: every row of the bigram table).
    """
    if table.n != 2:
        raise ValueError(f"bigram_candidates needs a bigram table, got an n={table.n} table")
    per_row = check_positive_int("per_row", per_row)
    if per_row > table.top_k:
        raise ValueError(f"per_row must be in 1..{table.top_k} (the table's top_k), got {per_row}")
    rows = np.arange(len(table)) if first is None else np.asarray([table.row_of(int(z)) for z in first])
    z1 = np.repeat(table.contexts[rows, 0], per_row)
    z2 = table.ids[rows, :per_row].reshape(-1)
    return np.stack([z1, z2], -1).astype(np.int32)


def _attention_paths(model: Model, layers) -> list[str]:
    if isinstance(layers, (int, np.integer)):
        layers = [layers]
    layers = range(model.config.n_layers) if layers is None else layers
    return [format_label([Component("attn", layer)]) for layer in layers]


def jet_trigrams(model: Model, contexts, paths: Sequence[str] | None = None, top_k: int = DEFAULT,
                 **sweep_options) -> NGramTable:
    """Jet trigram table ``P(z3 | z1, z2)`` for the given contexts ``int [N, 2]``.

    ``paths`` default: ``emb>dec`` and ``emb>attn{l}>dec`` for every layer (scores averaged, as for
    bigrams; with ``settings=``, the settings' paths). ``top_k`` defaults to 10. Other options as
    :func:`jetjax.ngrams.jet_bigrams` (``order``, ``global_k``, ``out_dir``, ``devices``,
    ``settings``, ...).

    Example:
      >>> from jetjax.models import ModelConfig, random_model
      >>> cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32,
      ...                   vocab_size=23, n_positions=8, norm_eps=1e-5, activation="gelu_new")
      >>> t = jet_trigrams(random_model(cfg), candidate_contexts([1, 2, 3]), top_k=2, global_k=4,
      ...                  progress=False)
      >>> t.n, t.probs.shape, t.global_pairs.shape
      (3, (9, 2), (4, 3))
    """
    contexts = _check_pairs(contexts)
    if paths is None:
        paths = DEFAULT if sweep_options.get("settings") is not None else \
            ["emb>dec", *_attention_paths(model, None)]
    return sweep_contexts(model, contexts, paths, top_k, kind="trigrams", **sweep_options)


def jet_skip_bigrams(model: Model, contexts, layers: Sequence[int] | None = None, top_k: int = DEFAULT,
                     **sweep_options) -> NGramTable:
    """Skip-bigram table: the trigram score of the attention paths ``emb>attn{l}>dec`` alone.

    ``layers``: which attention layers (default all). What ``z1`` contributes to the next token two
    positions later, through attention, with no direct path from ``z2``. ``top_k`` defaults to 10.
    """
    contexts = _check_pairs(contexts)
    return sweep_contexts(model, contexts, _attention_paths(model, layers), top_k, kind="skip_bigrams",
                          **sweep_options)


def _check_pairs(contexts) -> np.ndarray:
    contexts = np.asarray(contexts)
    if contexts.ndim != 2 or contexts.shape[1] != 2:
        raise ValueError(f"trigram contexts must be an int array [N, 2] of (z1, z2) pairs, got shape {contexts.shape}")
    return contexts
