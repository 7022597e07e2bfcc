"""Reading jet bigram tables: diffs between models, keyword-mass indices, agreement with a corpus.

Exact probabilities of entries outside a table's stored top ``k`` are recomputed from the model
that made the table (same paths, same order, the table's own row logsumexp), after checking its
weights' fingerprint.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Iterator

import jax
import numpy as np

from jetjax._internal.checks import check_nonnegative_int, check_positive_int, decode_text_file, json_safe
from jetjax._internal.results import ResultIO, check_format, dataframe, write_text
from jetjax.models.model import Model
from jetjax.ngrams.scorer import context_scorer
from jetjax._internal.compiled import per_model
from jetjax.ngrams.sweep import model_fingerprint
from jetjax.ngrams.table import NGramTable

__all__ = ["diff_tables", "check_same_vocabulary",
           "TableDiff", "read_keywords", "load_keywords", "keyword_mass", "KeywordMass",
           "ngram_dynamics", "NGramDynamics"]


def _check_model(model: Model, table: NGramTable) -> None:
    made_by = table.meta.get("model", {}).get("fingerprint")
    if made_by != model_fingerprint(model):
        raise ValueError(f"the table was computed from other weights (fingerprint {str(made_by)[:12]}...) than "
                         f"{model!r}; pass the model that made it")


def logprob_blocks(model: Model, table: NGramTable, rows: np.ndarray, cols: np.ndarray | None = None,
                    block: int = 1024) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(rows_block, log P(cols | context of each row))`` for the selected table rows, block by block."""
    _check_model(model, table)
    paths, order = tuple(table.meta["paths"]), table.meta["order"]

    def build():
        scorer = context_scorer(model, paths, order)
        return jax.jit(lambda p, w, b, ctx, lse: scorer(p, ctx) @ w + b - lse[:, None])

    fn = per_model(model, "ngrams", ("logprobs", paths, order), build)
    unembedding = per_model(model, "ngrams", ("unembedding",),
                            lambda: jax.jit(lambda p: model.unembedding_matrix(params=p)))
    w, b = unembedding(model.params)
    if cols is not None:
        w, b = w[:, cols], b[cols]
    for start in range(0, len(rows), block):
        sel = rows[start:start + block]
        yield sel, np.asarray(fn(model.params, w, b, table.contexts[sel], table.logsumexp[sel]))


def model_tokenizer(model: Model | None, tokenizer):
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    if tok is None:
        raise ValueError("a tokenizer is needed: pass tokenizer= (a tokenizers.Tokenizer) or a model that has one")
    return tok


# ---------------------------------------------------------------------------------------------
# Diffs

_DIFF_LISTS = ("gained_prob", "lost_prob", "gained_rank", "lost_rank")


@dataclasses.dataclass(frozen=True)
class TableDiff(ResultIO):
    """The entries that gained and lost most from table ``a`` to table ``b``.

    Each list holds records ``{"context", "next", "context_ids", "next_id", "p_a", "p_b", "delta",
    "rank_a", "rank_b"}``; ``rank`` is the 1-based position in the row's stored top ``k`` and
    ``None`` when the entry is outside it.

    :meth:`top` lists the entries that gained most probability (``gained_prob``); ``to_json`` /
    ``load`` round-trip.
    """

    FORMAT = "jetjax.table_diff"

    gained_prob: list[dict]
    lost_prob: list[dict]
    gained_rank: list[dict]
    lost_rank: list[dict]
    exact: bool

    def to_json(self, path=None) -> str:
        """The diff as JSON (every record), written to ``path`` when given; :meth:`load` reads it back."""
        return write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), path)

    def top(self, n: int = 20) -> list[tuple[tuple[str, ...], str, float]]:
        """``(context, next, Δp)`` of the ``n`` entries that gained most probability."""
        n = check_nonnegative_int("n", n)
        return [(tuple(r["context"]), r["next"], float(r["delta"])) for r in self.gained_prob[:n]]

    def table(self, n: int = 20) -> str:
        """The four lists as plain text, ``n`` records each."""
        n = check_nonnegative_int("n", n)
        out = [f"{'exact' if self.exact else 'top-k only'} probabilities"]
        for name in _DIFF_LISTS:
            out += [f"{name.replace('_', ' by ')}:", f"{'p_a':>8} {'p_b':>8} {'Δp':>8} {'rank_a':>6} {'rank_b':>6}  "
                                                     "context -> next"]
            out += [f"{r['p_a']:>8.4f} {r['p_b']:>8.4f} {r['delta']:>+8.4f} {r['rank_a'] or '—':>6} "
                    f"{r['rank_b'] or '—':>6}  {' '.join(map(repr, r['context']))} -> {r['next']!r}"
                    for r in getattr(self, name)[:n]]
        return "\n".join(out)

    def to_dataframe(self):
        """One row per record, its list named in ``list`` (needs pandas)."""
        records = [{"list": name, **r} for name in _DIFF_LISTS for r in getattr(self, name)]
        keys = ["list", "context", "next", "context_ids", "next_id", "p_a", "p_b", "delta", "rank_a", "rank_b"]
        return dataframe({k: [r.get(k) for r in records] for k in keys})

    def to_markdown(self) -> str:
        out = []
        for name in _DIFF_LISTS:
            out += [f"### {name.replace('_', ' by ')}", "", "| context | next | p_a | p_b | Δp | rank_a | rank_b |",
                    "|---|---|---:|---:|---:|---:|---:|"]
            out += [f"| {' '.join(map(repr, r['context']))} | {r['next']!r} | {r['p_a']:.4f} | {r['p_b']:.4f} | "
                    f"{r['delta']:+.4f} | {r['rank_a'] or '—'} | {r['rank_b'] or '—'} |" for r in getattr(self, name)]
            out.append("")
        return "\n".join(out)


def _keys(table: NGramTable, v: int) -> np.ndarray:
    """``row * V + next`` of every stored entry; −1 where :meth:`NGramTable.filter` dropped one."""
    return np.where(table.ids >= 0, np.arange(len(table))[:, None] * v + table.ids, -1).reshape(-1)


def _entry_probs(table: NGramTable, keys: np.ndarray, v: int, model: Model | None):
    """Probability and top-k rank of each ``row * V + next`` key in ``table``."""
    k = table.top_k
    mine = _keys(table, v)
    order = np.argsort(mine)
    pos = np.clip(np.searchsorted(mine[order], keys), 0, mine.size - 1)
    found = mine[order][pos] == keys
    flat = order[pos]
    probs = np.where(found, table.probs.reshape(-1)[flat], 0.0)
    ranks = np.where(found, flat % k + 1, 0)
    if model is not None and not found.all():
        missing = np.flatnonzero(~found)
        rows, nxt = keys[missing] // v, keys[missing] % v
        uniq = np.unique(rows)
        for sel, lp in logprob_blocks(model, table, uniq):
            hit = np.isin(rows, sel)
            probs[missing[hit]] = np.exp(lp[np.searchsorted(sel, rows[hit]), nxt[hit]])
    return probs, ranks


def _check_same_tokens(a: NGramTable, b: NGramTable) -> None:
    """Refuse tables whose ids mean different strings: a diff is labelled with ``a``'s strings."""
    if a.tokens is None or b.tokens is None:
        if (a.tokens is None) != (b.tokens is None):
            warnings.warn(f"table {'a' if a.tokens is None else 'b'} has no token strings, so the two vocabularies "
                          "cannot be compared; the diff assumes equal ids mean equal tokens", stacklevel=3)
        return
    ta, tb = list(a.tokens), list(b.tokens)
    if len(ta) != len(tb):
        raise ValueError(f"the tables' tokenizers differ: {len(ta)} vs {len(tb)} token strings; diff tables of "
                         "models with the same tokenizer")
    differ = [i for i, (x, y) in enumerate(zip(ta, tb)) if x != y]
    if differ:
        shown = ", ".join(f"{i}: {ta[i]!r} vs {tb[i]!r}" for i in differ[:5])
        raise ValueError(f"the tables' tokenizers differ: {len(differ)} of {len(ta)} token ids map to different "
                         f"strings (id: a vs b: {shown}{', ...' if len(differ) > 5 else ''}); a diff would label "
                         "one model's entries with the other's strings, so diff tables of models with the same "
                         "tokenizer")


def check_same_vocabulary(model_a: Model, model_b: Model) -> None:
    """Refuse, before anything is swept, two models whose token ids cannot be compared: other
    vocabulary sizes, or token strings that differ (``ValueError`` naming both sizes or the first ids).

    ``bigram_diff`` calls it first: a mismatch found after two vocabulary sweeps wastes both.

    Example:
      >>> from jetjax.testing import tiny_model
      >>> check_same_vocabulary(tiny_model(vocab_size=11), tiny_model(vocab_size=13))
      Traceback (most recent call last):
      ...
      ValueError: the models have vocabularies of 11 and 13 tokens; a bigram diff compares models that share a tokenizer
    """
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, Model):
            raise TypeError(f"{name} must be a jetjax Model, got {type(m).__name__}")
    va, vb = model_a.config.vocab_size, model_b.config.vocab_size
    if va != vb:
        raise ValueError(f"the models have vocabularies of {va} and {vb} tokens; a bigram diff compares models that "
                         "share a tokenizer")
    if model_a.tokenizer is None or model_b.tokenizer is None:
        return   # ids are all either model knows
    ta, tb = model_a.token_strings(np.arange(va)), model_b.token_strings(np.arange(vb))
    differ = [i for i, (x, y) in enumerate(zip(ta, tb)) if x != y]
    if differ:
        shown = ", ".join(f"{i}: {ta[i]!r} vs {tb[i]!r}" for i in differ[:3])
        raise ValueError(f"the models' tokenizers differ: {len(differ)} of {va} token ids map to other strings "
                         f"({shown}); a bigram diff compares models that share a tokenizer")


def diff_tables(a: NGramTable, b: NGramTable, n: int = 20, *, models: tuple[Model, Model] | None = None) -> TableDiff:
    """Compare two tables of the same contexts and vocabulary (e.g. base vs fine-tuned model).

    The candidates are all entries in either table's stored top ``k``. An entry missing from one
    table's top ``k`` gets its exact probability there when ``models=(model_a, model_b)`` is given,
    and probability 0 otherwise (then ``delta`` overstates a change by at most that row's ``k``-th
    probability). Rank changes compare top-``k`` positions, an entry outside the top ``k`` counting
    as rank ``k + 1``.

    Returns the ``n`` entries with the largest probability gain / loss and rank gain / loss.

    Raises ``ValueError`` when the tables' rows or vocabularies differ, token strings included
    (same vocabulary size, other tokenizer), or when ``n`` is not a non-negative int.
    """
    n = check_nonnegative_int("n", n)
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, NGramTable):
            raise TypeError(f"diff_tables compares two NGramTables (NGramTable.load(dir) reads a saved one); {name} "
                            f"is {type(t).__name__}")
    if models is not None and (not isinstance(models, (tuple, list)) or len(models) != 2):
        raise ValueError(f"models must be a pair (model of a, model of b) or None, got {models!r:.80}")
    va, vb = (t.meta.get("model", {}).get("config", {}).get("vocab_size") for t in (a, b))
    if va != vb:
        raise ValueError(f"the tables come from different vocabularies ({va} vs {vb} tokens)")
    if a.contexts.shape != b.contexts.shape or not np.array_equal(a.contexts, b.contexts):
        raise ValueError(f"the tables have different contexts (rows: {a.contexts.shape} vs {b.contexts.shape}); "
                         "diff tables of the same contexts")
    _check_same_tokens(a, b)
    v = int(max(a.ids.max(), b.ids.max()) + 1) if va is None else int(va)
    keys = np.union1d(_keys(a, v), _keys(b, v))
    keys = keys[keys >= 0]
    ma, mb = (None, None) if models is None else models
    pa, ra = _entry_probs(a, keys, v, ma)
    pb, rb = _entry_probs(b, keys, v, mb)
    delta = pb - pa
    beyond = max(a.top_k, b.top_k) + 1
    rank_gain = np.where(ra > 0, ra, beyond) - np.where(rb > 0, rb, beyond)

    def records(order):
        out = []
        for i in order[:n]:
            row, nxt = int(keys[i] // v), int(keys[i] % v)
            out.append({"context": [a.token(t) for t in a.contexts[row]], "next": a.token(nxt),
                        "context_ids": a.contexts[row].tolist(), "next_id": nxt, "p_a": float(pa[i]),
                        "p_b": float(pb[i]), "delta": float(delta[i]),
                        "rank_a": int(ra[i]) or None, "rank_b": int(rb[i]) or None})
        return out

    return TableDiff(gained_prob=records(np.lexsort((keys, -delta))), lost_prob=records(np.lexsort((keys, delta))),
                     gained_rank=records(np.lexsort((keys, -delta, -rank_gain))),
                     lost_rank=records(np.lexsort((keys, delta, rank_gain))), exact=models is not None)


# ---------------------------------------------------------------------------------------------
# Keyword mass

def read_keywords(keywords) -> list[str]:
    """The entries of a keyword file or list, checked: stripped, without blank lines and ``#`` comments.

    A file must be UTF-8 text (a leading byte-order mark is dropped); a binary file, one that is not
    UTF-8, or one with no entry is a ``ValueError`` naming it. Call this before a sweep whose table
    the keywords will read (:func:`keyword_mass` calls it too), so a bad file never costs a sweep.

    Example:
      >>> read_keywords(["# a comment", "  war ", "", "peace"])
      ['war', 'peace']
      >>> read_keywords([])
      Traceback (most recent call last):
      ...
      ValueError: the keyword list is empty (one word or phrase per line)
    """
    if isinstance(keywords, (str, Path)):
        path = Path(keywords)
        if not path.is_file():
            raise FileNotFoundError(f"keyword file {path} does not exist" if not path.exists() else
                                    f"keyword file {path} is not a file")
        where = f"keyword file {path}"
        lines = decode_text_file(path.read_bytes(), where,
                                 "give a UTF-8 text file, one word or phrase per line").splitlines()
    else:
        if keywords is None or isinstance(keywords, bytes):
            raise ValueError(f"keywords must be a file path or a list of strings, got {keywords!r}")
        lines = list(keywords)
        bad = [w for w in lines if not isinstance(w, str)]
        if bad:
            raise ValueError(f"keywords must be strings, got {bad[0]!r} of type {type(bad[0]).__name__}")
        where = "the keyword list"
    words = [w.strip() for w in lines if w.strip() and not w.strip().startswith("#")]
    if not words:
        raise ValueError(f"{where} is empty (one word or phrase per line)")
    return words


def load_keywords(keywords, tokenizer) -> tuple[np.ndarray, list[str]]:
    """Keyword token ids and the words that have none.

    ``keywords``: a text file (one word or phrase per line; blank lines and ``#`` comments skipped)
    or a list of strings. Each entry is encoded as written and with a leading space (BPE vocabularies
    hold ``"word"`` and ``" word"`` as different tokens); every form that is exactly one token is
    kept. Entries with no one-token form are returned in the second list (and warned about).
    """
    words = read_keywords(keywords)
    unk = getattr(tokenizer.model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk) if unk else None  # an unknown word maps to it: not a hit
    ids, missing = set(), []
    for word in words:
        found = [enc[0] for form in (word, " " + word)
                 if len(enc := tokenizer.encode(form, add_special_tokens=False).ids) == 1 and enc[0] != unk_id]
        ids.update(found)
        if not found:
            missing.append(word)
    if missing:
        warnings.warn(f"{len(missing)} of {len(words)} keywords have no single token in the vocabulary "
                      f"(with or without a leading space) and are ignored: {missing}", stacklevel=2)
    return np.asarray(sorted(ids), np.int32), missing


@dataclasses.dataclass(frozen=True)
class KeywordMass(ResultIO):
    """Keyword-mass index of a bigram table (definitions in :func:`keyword_mass`).

    No ``top``: the index is a handful of numbers, with nothing to rank. ``top_k`` here is the mass
    within each row's stored top ``k`` (a float), as :func:`keyword_mass` defines it.
    """

    FORMAT = "jetjax.keyword_mass"

    n_words: int
    token_ids: list[int]
    missing: list[str]
    all_contexts: float | None
    keyword_contexts: float | None
    top_k: float
    uniform: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "KeywordMass":
        names = tuple(f.name for f in dataclasses.fields(cls))
        data = check_format(data, cls.FORMAT, "KeywordMass", required=names)
        return cls(**{name: data[name] for name in names})

    def to_json(self, path=None) -> str:
        """The index as JSON (:meth:`to_dict` and its format), written to ``path`` when given."""
        doc = {"format": self.FORMAT, "version": 1, **self.to_dict()}
        return write_text(json.dumps(json_safe(doc), allow_nan=False, ensure_ascii=False), path)

    def table(self, n: int = 10) -> str:
        """The figures as plain text, with up to ``n`` of the keywords that have no token."""
        n = check_nonnegative_int("n", n)
        fmt = lambda x: "—" if x is None else f"{x:.4e}"   # noqa: E731
        lines = [f"{self.n_words} keywords, {len(self.token_ids)} one-token forms; keyword mass: all contexts "
                 f"{fmt(self.all_contexts)}, keyword contexts {fmt(self.keyword_contexts)}, within the stored top k "
                 f"{fmt(self.top_k)}, uniform {fmt(self.uniform)}"]
        if self.missing:
            lines.append(f"{len(self.missing)} without a token: {', '.join(map(repr, self.missing[:n]))}"
                         + (", ..." if len(self.missing) > n else ""))
        return "\n".join(lines)

    def to_dataframe(self):
        """One row of the figures (needs pandas)."""
        return dataframe({k: [getattr(self, k)] for k in ("n_words", "all_contexts", "keyword_contexts", "top_k",
                                                           "uniform")} | {"n_token_ids": [len(self.token_ids)]})


def keyword_mass(table: NGramTable, keywords, *, model: Model | None = None, tokenizer=None) -> KeywordMass:
    """How much probability the jet bigram distribution puts on keyword tokens.

    With ``K`` the keyword token ids (:func:`load_keywords`), ``P(z2 | z1)`` the table's bigram
    distribution and ``Z`` its contexts (all ``V`` tokens for a full sweep):

    * ``all_contexts = (1/|Z|) Σ_{z1∈Z} Σ_{z2∈K} P(z2 | z1)``: the mass on keywords, averaged over
      every context (exact; needs ``model``, the one that made the table);
    * ``keyword_contexts``: the same average over contexts that are themselves keywords,
      ``z1 ∈ K ∩ Z`` (needs ``model``);
    * ``top_k = (1/|Z|) Σ_{z1} Σ_{j≤k, ids[z1,j]∈K} probs[z1, j]``: the mass within each row's stored
      top ``k`` (from the table alone; a lower bound of ``all_contexts``);
    * ``uniform = |K| / V``: what a uniform next-token distribution would give, for scale.

    The paper's toxicity index is such a mass; it does not publish its exact formula or list.

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2}, unk_token="a"))
      >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> t = NGramTable(contexts=np.arange(3, dtype=np.int32)[:, None],
      ...                probs=np.array([[.6], [.5], [.9]], np.float32), ids=np.array([[1], [0], [1]], np.int32),
      ...                logsumexp=np.zeros(3, np.float32), global_probs=np.zeros(0, np.float32),
      ...                global_pairs=np.zeros((0, 2), np.int32), meta={"model": {"config": {"vocab_size": 3}}})
      >>> round(keyword_mass(t, ["b"], tokenizer=tok).top_k, 4)    # (0.6 + 0.9) / 3
      0.5
    """
    if table.n != 2:
        raise ValueError(f"keyword mass is defined on bigram tables, got an n={table.n} table")
    read_keywords(keywords)  # a bad file is named before the tokenizer or the model is touched
    ids, missing = load_keywords(keywords, model_tokenizer(model, tokenizer))
    n_words = len(read_keywords(keywords))
    if ids.size == 0:
        raise ValueError(f"none of the keywords has a token in the vocabulary: {missing}")
    v = int(table.meta.get("model", {}).get("config", {}).get("vocab_size") or table.ids.max() + 1)
    top = float(np.where(np.isin(table.ids, ids), table.probs, 0).sum() / len(table))
    all_ctx = kw_ctx = None
    if model is not None:
        per_row = np.zeros(len(table))
        for sel, lp in logprob_blocks(model, table, np.arange(len(table)), ids):
            per_row[sel] = np.exp(lp.astype(np.float64)).sum(axis=1)
        all_ctx = float(per_row.mean())
        kw_rows = np.isin(table.contexts[:, 0], ids)
        kw_ctx = float(per_row[kw_rows].mean()) if kw_rows.any() else None
    return KeywordMass(n_words=n_words, token_ids=ids.tolist(), missing=missing, all_contexts=all_ctx,
                       keyword_contexts=kw_ctx, top_k=top, uniform=len(ids) / v)


# ---------------------------------------------------------------------------------------------
# Dynamics over checkpoints

@dataclasses.dataclass(frozen=True)
class NGramDynamics:
    """Jet bigram tables of successive checkpoints against the last one (see :func:`ngram_dynamics`)."""

    labels: list[str]
    k: int
    hit_ratio: list[float]
    own_mass: list[float]
    final_mass: list[float]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def ngram_dynamics(tables: "list[NGramTable]", *, k: int = 100, models: "list[Model] | None" = None,
                   labels: "list[str] | None" = None) -> NGramDynamics:
    """How the jet bigrams of checkpoints approach the final ones (the paper's hit ratio and mass).

    ``tables``: bigram tables of the same contexts, one per checkpoint, the final one last (each
    swept with ``global_k >= k``). With ``T_c`` the global top ``k`` ``(z1, z2)`` pairs of checkpoint
    ``c`` by ``P_c(z2 | z1)`` and ``F`` the last checkpoint's:

    * ``hit_ratio[c] = |T_c ∩ F| / k``;
    * ``own_mass[c] = Σ_{T_c} P_c(z2 | z1) / k``: how peaked checkpoint ``c``'s strongest bigrams are;
    * ``final_mass[c] = Σ_{F} P_c(z2 | z1) / k``: the probability checkpoint ``c`` already gives the
      final model's strongest bigrams (exact with ``models``, the checkpoints' models in order; else
      0 for pairs outside ``c``'s stored top-k per row, a lower bound).

    The paper plots a hit ratio w.r.t. the final checkpoint and a "total mass" without printing
    their formulas; these are ours.
    """
    if not tables or not all(isinstance(t, NGramTable) for t in tables):
        raise TypeError("ngram_dynamics takes a non-empty list of NGramTables (final checkpoint last)")
    k = check_positive_int("k", k)
    short = [i for i, t in enumerate(tables) if len(t.global_probs) < k]
    if short:
        raise ValueError(f"tables {short} keep fewer than k={k} global pairs; sweep them with global_k >= {k}")
    if models is not None and len(models) != len(tables):
        raise ValueError(f"models: {len(models)} given for {len(tables)} tables")
    labels = list(labels) if labels is not None else [f"checkpoint {i}" for i in range(len(tables))]
    if len(labels) != len(tables):
        raise ValueError(f"labels: {len(labels)} given for {len(tables)} tables")
    final = tables[-1]
    for t in tables[:-1]:
        if t.contexts.shape != final.contexts.shape or not np.array_equal(t.contexts, final.contexts):
            raise ValueError("the tables have different contexts; sweep every checkpoint over the same ones")
    v = int(final.meta.get("model", {}).get("config", {}).get("vocab_size") or final.ids.max() + 1)
    row_of = {tuple(c): r for r, c in enumerate(final.contexts.tolist())}

    def top_keys(t):
        return np.array([row_of[tuple(p[:-1])] * v + p[-1] for p in t.global_pairs[:k].tolist()], np.int64)

    final_keys = top_keys(final)
    hit, own, fin = [], [], []
    for i, t in enumerate(tables):
        mine = top_keys(t)
        hit.append(len(np.intersect1d(mine, final_keys)) / k)
        own.append(float(np.sum(t.global_probs[:k], dtype=np.float64)) / k)
        probs, _ = _entry_probs(t, final_keys, v, None if models is None else models[i])
        fin.append(float(probs.sum()) / k)
    return NGramDynamics(labels=labels, k=k, hit_ratio=hit, own_mass=own, final_mass=fin)
