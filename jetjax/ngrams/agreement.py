"""Corpus agreement: how well a jet bigram table matches the bigrams of a text (hit@1, Spearman ρ,
KL on the shared support, support mass), computed for all contexts at once."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jetjax._internal.checks import check_positive_int
from jetjax.models.model import Model
from jetjax.ngrams.analysis import logprob_blocks, model_tokenizer
from jetjax.ngrams.table import NGramTable

__all__ = ["corpus_agreement", "CorpusAgreement", "corpus_bigrams", "CorpusBigrams"]


@dataclasses.dataclass(frozen=True)
class CorpusAgreement:
    """How well a jet bigram table matches a corpus's empirical bigrams (see :func:`corpus_agreement`)."""

    n_tokens: int
    n_contexts: int
    min_count: int
    top1_hit_rate: float
    rank_correlation: float
    kl: float
    support_mass: float
    unigram: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _segment_ranks(seg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties share their mean rank) of ``values`` within each segment ``seg``."""
    order = np.lexsort((values, seg))
    s_seg, s_val = seg[order], values[order]
    new_run = np.ones(len(order), bool)
    new_run[1:] = (s_seg[1:] != s_seg[:-1]) | (s_val[1:] != s_val[:-1])
    run = np.cumsum(new_run) - 1
    position = np.arange(len(order)) - np.searchsorted(s_seg, s_seg) + 1.0
    ranks = np.empty(len(order))
    ranks[order] = (np.bincount(run, weights=position) / np.bincount(run))[run]
    return ranks


def _agreement(seg: np.ndarray, nxt: np.ndarray, c: np.ndarray, top1: np.ndarray,
               logq: np.ndarray) -> tuple[float, float, float]:
    """(hit@1, mean rank correlation, mean KL) over the contexts, all at once: ``seg [M]`` the context
    (0..N-1, contiguous and ascending) of each observed successor ``nxt [M]`` with its count ``c [M]``;
    ``top1 [N]`` the predicted next token per context, ``logq [M]`` the predicted log-probabilities of
    the observed successors. The rank correlation is Spearman's (Pearson on average ranks) over the
    contexts with two or more successors whose counts and predictions both vary; the KL renormalises
    the predictions over those successors in log space, so a prediction far below float64's smallest
    probability (a peaked path puts -800 nats on a successor) stays finite instead of underflowing."""
    n = int(seg[-1]) + 1
    sizes = np.bincount(seg, minlength=n)
    starts = np.cumsum(sizes) - sizes
    c_max = np.maximum.reduceat(c, starts)
    hits = np.bincount(seg, weights=(c == c_max[seg]) & (nxt == top1[seg]), minlength=n) > 0

    def varies(x):
        return np.maximum.reduceat(x, starts) > np.minimum.reduceat(x, starts)

    valid = (sizes > 1) & varies(c) & varies(logq)
    rx, ry = _segment_ranks(seg, c), _segment_ranks(seg, logq)
    dx = rx - (np.bincount(seg, weights=rx, minlength=n) / sizes)[seg]
    dy = ry - (np.bincount(seg, weights=ry, minlength=n) / sizes)[seg]
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.bincount(seg, weights=dx * dy, minlength=n) / np.sqrt(
            np.bincount(seg, weights=dx * dx, minlength=n) * np.bincount(seg, weights=dy * dy, minlength=n))
        top = np.maximum.reduceat(logq, starts)
        lse = top + np.log(np.add.reduceat(np.exp(logq - top[seg]), starts))
        p_hat = c / np.add.reduceat(c, starts)[seg]
        kl = np.bincount(seg, weights=p_hat * (np.log(p_hat) - (logq - lse[seg])), minlength=n)
    return float(np.mean(hits)), float(np.mean(rho[valid])) if valid.any() else float("nan"), float(np.mean(kl))


@dataclasses.dataclass(frozen=True)
class CorpusBigrams:
    """The bigram counts of a corpus, grouped by context (see :func:`corpus_bigrams`).

    Attributes:
      n_tokens: tokens in the corpus.
      min_count: contexts seen fewer times were dropped.
      contexts: ``int [N]``: the contexts kept, ascending.
      successors: per context, ``(next ids [m], counts [m])`` of the observed successors.
      unigram: ``float [V]``: the corpus's token counts.
    """

    n_tokens: int
    min_count: int
    contexts: np.ndarray
    successors: dict
    unigram: np.ndarray

    @functools.cached_property
    def _flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(seg, nxt, counts, rows)``: every observed successor with its context's index in
        :attr:`successors`' order, and per context its row in :attr:`contexts`."""
        row = {int(z): r for r, z in enumerate(self.contexts)}
        groups = list(self.successors.items())
        sizes = [len(nxt) for _, (nxt, _) in groups]
        seg = np.repeat(np.arange(len(groups)), sizes)
        nxt = np.concatenate([np.asarray(nxt, np.int64) for _, (nxt, _) in groups])
        c = np.concatenate([np.asarray(cnt, np.float64) for _, (_, cnt) in groups])
        return seg, nxt, c, np.asarray([row[int(z)] for z, _ in groups], np.int64)

    @functools.cached_property
    def _unigram_agreement(self) -> tuple[float, float, float]:
        """The corpus's own unigram distribution as the prediction for every context (the same for any table)."""
        seg, nxt, c, rows = self._flat
        u = self.unigram
        top1 = np.full(len(rows), int(np.argmax(u)), np.int64)
        return _agreement(seg, nxt, c, top1, np.log(u[nxt] / u.sum()))

    def agreement(self, top1: np.ndarray, logprobs: np.ndarray) -> CorpusAgreement:
        """A :class:`CorpusAgreement` of predictions for :attr:`contexts`: ``top1 [N]`` the predicted
        next token and ``logprobs [N, V]`` (or ``[N, V']`` covering every observed successor id) the
        predicted log-probabilities, one row per context in order."""
        top1, logprobs = np.asarray(top1), np.asarray(logprobs)
        n = len(self.contexts)
        if top1.shape != (n,) or logprobs.ndim != 2 or logprobs.shape[0] != n:
            raise ValueError(f"expected top1 [{n}] and logprobs [{n}, V], got {top1.shape} and {logprobs.shape}")
        seg, nxt, c, rows = self._flat
        logq = logprobs[rows[seg], nxt].astype(np.float64)
        jet = _agreement(seg, nxt, c, top1[rows].astype(np.int64), logq)
        support = float(np.mean(np.bincount(seg, weights=np.exp(logq), minlength=len(rows))))
        base = self._unigram_agreement
        return CorpusAgreement(n_tokens=self.n_tokens, n_contexts=n, min_count=self.min_count,
                               top1_hit_rate=jet[0], rank_correlation=jet[1], kl=jet[2], support_mass=support,
                               unigram={"top1_hit_rate": base[0], "rank_correlation": base[1], "kl": base[2]})


def corpus_bigrams(text: str, tokenizer, vocab_size: int, *, min_count: int = 5,
                   n_contexts: int | None = None) -> CorpusBigrams:
    """Bigram counts of ``text`` for the contexts seen at least ``min_count`` times, cut to the
    ``n_contexts`` most frequent of them (ties broken by token id) when given.

    Example:
      >>> from tokenizers import Tokenizer, models, pre_tokenizers
      >>> tok = Tokenizer(models.WordLevel({"a": 0, "b": 1, "c": 2}, unk_token="a"))
      >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
      >>> cb = corpus_bigrams("a b a b a c", tok, 3, min_count=1)
      >>> cb.contexts.tolist(), cb.successors[0][0].tolist(), cb.successors[0][1].tolist()
      ([0, 1], [1, 2], [2.0, 1.0])
    """
    min_count = check_positive_int("min_count", min_count)
    ids = np.asarray(tokenizer.encode(text, add_special_tokens=False).ids, np.int64)
    if ids.size < 2:
        raise ValueError("the corpus has fewer than two tokens")
    v = vocab_size
    pairs, counts = np.unique(ids[:-1] * v + ids[1:], return_counts=True)  # sorted, so grouped by z1
    ctx_of = pairs // v
    ctx_total = np.bincount(ctx_of, weights=counts, minlength=v)
    frequent = np.flatnonzero(ctx_total >= min_count)
    n_contexts = check_positive_int("n_contexts", n_contexts, optional=True)
    if n_contexts is not None:
        order = np.argsort(-ctx_total[frequent], kind="stable")[:n_contexts]
        frequent = np.sort(frequent[order])
    if frequent.size == 0:
        raise ValueError(f"no context occurs {min_count} times in the corpus; lower min_count")
    lo, hi = np.searchsorted(ctx_of, frequent), np.searchsorted(ctx_of, frequent, side="right")
    by_ctx = {int(z1): (pairs[a:b] % v, counts[a:b].astype(np.float64)) for z1, a, b in zip(frequent, lo, hi)}
    return CorpusBigrams(n_tokens=int(ids.size), min_count=min_count, contexts=frequent, successors=by_ctx,
                         unigram=np.bincount(ids, minlength=v).astype(np.float64))


def corpus_agreement(table: NGramTable, text: str, model: Model, *, tokenizer=None,
                     min_count: int = 5, n_contexts: int | None = None) -> CorpusAgreement:
    """Agreement between a jet bigram table and the bigrams of ``text`` (tokenized with the model's tokenizer).

    With ``c(z1, z2)`` the corpus bigram counts and ``F`` the contexts seen at least ``min_count``
    times, averaged over ``z1 ∈ F`` (each context counts once):

    * ``top1_hit_rate``: the table's most probable next token is a most frequent corpus successor;
    * ``rank_correlation``: Spearman ρ between ``c(z1, ·)`` and ``P(· | z1)`` over the observed
      successors (contexts with fewer than two distinct successors, or constant counts, skipped);
    * ``kl``: ``KL(p̂ ‖ q̃)`` on the shared support, ``p̂ = c(z1, ·)/c(z1)`` and ``q̃`` the jet
      distribution renormalised over the observed successors;
    * ``support_mass``: the jet probability ``Σ_{observed z2} P(z2 | z1)`` of that support.

    With ``n_contexts = N``, ``F`` is further cut to the ``N`` most frequent of those contexts
    (ties broken by token id), e.g. ``n_contexts=500, min_count=1`` for "the 500 most frequent".

    ``unigram`` gives the same three metrics for the corpus's own unigram distribution used as the
    prediction for every context (an in-sample baseline the jet table should beat).
    ``model`` must be the one that made the table (exact probabilities of observed successors).
    The table needs a row for every context in ``F`` (a full bigram table, or
    :func:`~jetjax.ngrams.sweep_contexts` over ``corpus_bigrams(...).contexts``).
    """
    if table.n != 2:
        raise ValueError(f"corpus agreement is defined on bigram tables, got an n={table.n} table")
    if not isinstance(text, str):
        hint = " (decode bytes first: data.decode('utf-8'))" if isinstance(text, (bytes, bytearray)) else ""
        raise TypeError(f"text must be a str, got {type(text).__name__}{hint}")
    if not text.strip():
        raise ValueError("text is empty: corpus agreement needs a corpus to count bigrams in")
    corpus = corpus_bigrams(text, model_tokenizer(model, tokenizer), model.config.vocab_size, min_count=min_count,
                            n_contexts=n_contexts)
    row_of = {int(z): r for r, z in enumerate(table.contexts[:, 0])}
    missing = [int(z1) for z1 in corpus.contexts if int(z1) not in row_of]
    if missing:
        raise ValueError(f"the table has no row for corpus contexts {missing[:10]}; use a full bigram table")
    rows = np.asarray([row_of[int(z1)] for z1 in corpus.contexts])
    logp = np.concatenate([lp for _, lp in logprob_blocks(model, table, rows)])
    return corpus.agreement(table.ids[rows, 0], logp)
