"""What jet expansions find on a real LLM, computed each time (never typed in).

The demo, the README's figures and the tests on SmolLM2 all come from these two studies:

* :func:`lens_study`: the logit lens (order 0) against the iterative jet lenses of orders 1 and 2
  on a fixed set of prompts of several kinds: per layer, the mean over prompts and positions of
  the cosine with the model's logits, ``KL(model ‖ lens)`` and top-1 agreement.
* :func:`bigram_study`: which bigram paths (``emb>dec``, ``emb>mlp{l}>dec``, ``emb>attn{l}>dec``
  and their means) carry the bigram statistics of a corpus, on its most frequent contexts, against
  references: the model itself on the one-token context (with and without a document-start token
  before it) and the corpus's unigram distribution.

Paths are evaluated at order 0 with unit weight (the plain composition their label names, as
:func:`jetjax.jet_bigrams` computes them); a set of paths scores the mean of their logits, the
paper's ``s(x) = Σ_{e∈ξ} e(x) / |ξ|``.

Example (a random model: the numbers mean nothing, the shapes do):
  >>> from jetjax.testing import tiny_model
  >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
  >>> study = lens_study(model, [[1, 2, 3], [4, 5]], orders=(0, 1))
  >>> study.rows, study.metrics["cosine"].shape, study.n_positions
  (('h0', 'h1', 'h2'), (2, 3), 5)
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.text import text_table
from jetjax.paths.labels import Component, format_label, parse_label
from jetjax._internal.compiled import module_jit, per_model
from jetjax.models.model import Model

__all__ = ["PROMPTS", "lens_study", "LensStudy", "bigram_study", "BigramStudy", "PathSetAgreement",
           "middle_rows"]

# A fixed prompt set: five kinds of computation a small instruction-tuned LLM can do.
PROMPTS: dict[str, tuple[str, ...]] = {
    "factual recall": (
        "The capital of France is",
        "The Eiffel Tower is located in the city of",
        "Water is made of hydrogen and",
        "The largest planet in our solar system is",
        "William Shakespeare was born in the town of",
    ),
    "agreement": (
        "The keys to the old cabinet",
        "The author of the books that the students read",
        "Every one of the children",
        "The dogs that chased the cat",
        "She said that the results of the experiment",
    ),
    "counting": (
        "one, two, three, four, five,",
        "Monday, Tuesday, Wednesday,",
        "1, 2, 3, 4, 5, 6,",
        "January, February, March, April,",
        "A, B, C, D, E,",
    ),
    "code": (
        "def add(a, b):\n    return",
        "for i in range(10):\n    print(",
        "import numpy as",
        "x = [1, 2, 3]\ny = len(",
        "if __name__ == \"__main__\":\n   ",
    ),
    "dialogue": (
        "Q: What is the opposite of hot?\nA:",
        "User: Can you help me with my homework?\nAssistant:",
        "- How are you today?\n- I am fine, thank",
        "Hello! My name is Anna. What is your",
    ),
}


def all_prompts() -> list[str]:
    return [p for kind in PROMPTS.values() for p in kind]


def middle_rows(n_layers: int) -> range:
    """The middle streams ``h_l``, ``L/6 <= l <= 5L/6`` (``h_5..h_25`` of a 30-layer model)."""
    return range(int(round(n_layers / 6)), int(round(5 * n_layers / 6)) + 1)


# ---------------------------------------------------------------------------------------------
# Lenses over a prompt set

@dataclasses.dataclass(frozen=True)
class LensStudy:
    """Faithfulness of the iterative jet lenses per stream, averaged over prompts and positions.

    Attributes:
      orders: the jet orders (0 is the logit lens).
      rows: stream labels ``h0..hL``.
      metrics: ``{"cosine" | "kl" | "top1": [n_orders, n_rows]}``; ``kl`` is ``KL(model ‖ lens)`` in nats.
      n_prompts, n_positions: what the means are over (every position of every prompt counts once).
    """

    orders: tuple[int, ...]
    rows: tuple[str, ...]
    metrics: dict
    n_prompts: int
    n_positions: int

    def middle(self, metric: str, order: int) -> float:
        """The mean of ``metric`` over the middle streams (:func:`middle_rows`) at ``order``."""
        rows = middle_rows(len(self.rows) - 1)
        return float(self.metrics[metric][self.orders.index(order), rows.start:rows.stop].mean())

    def table(self) -> str:
        """One line per stream: cosine / top-1 / KL of each order. A value too wide for its column (an
        order-2 KL of 1.8e7 nats near the embedding) is written in scientific notation, and columns are
        always apart (:func:`jetjax._internal.text.text_table`)."""
        widths, decimals = (7, 6, 9), (3, 2, 2)
        group = sum(widths) + len(widths) - 1
        head = f"{'':>5} " + " ".join(f"{'order ' + str(k):>{group}}" for k in self.orders)
        m = self.metrics
        rows = [[row, *(m[name][o, r] for o in range(len(self.orders)) for name in ("cosine", "top1", "kl"))]
                for r, row in enumerate(self.rows)]
        lines = text_table(["", *("cos", "top1", "KL") * len(self.orders)], rows, (5, *widths * len(self.orders)),
                           (None, *decimals * len(self.orders)))
        return "\n".join([head, *lines])

    def to_dict(self) -> dict:
        rows = middle_rows(len(self.rows) - 1)
        return {"orders": list(self.orders), "rows": list(self.rows), "n_prompts": self.n_prompts,
                "n_positions": self.n_positions, "middle_rows": [rows.start, rows.stop - 1],
                "per_row": {m: {f"order{k}": [round(float(x), 4) for x in v[i]] for i, k in enumerate(self.orders)}
                            for m, v in self.metrics.items()},
                "middle": {m: {f"order{k}": round(self.middle(m, k), 4) for k in self.orders} for m in self.metrics}}


def _pad(model: Model, prompts) -> tuple[np.ndarray, np.ndarray]:
    seqs = [model.tokenize(p) if isinstance(p, str) else model.check_ids(p) for p in prompts]
    seqs = [np.asarray(s, np.int32).reshape(-1) for s in seqs]
    t = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros((len(seqs), t), bool)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, True
    return ids, mask


def lens_study(model: Model, prompts: Sequence[str | Sequence[int]] | None = None, orders=(0, 1, 2), *,
               batch: int = 8) -> LensStudy:
    """The iterative jet lens of each order over every stream of every prompt (default :data:`PROMPTS`).

    Prompts are right-padded to one length and run ``batch`` at a time (one compiled lens per
    order); padded positions are left out of the means (the model is causal, so padding changes
    nothing before it).
    """
    from jetjax.lenses.lens import iterative_jet_lens

    prompts = all_prompts() if prompts is None else list(prompts)
    if not prompts:
        raise ValueError("lens_study needs at least one prompt")
    ids, mask = _pad(model, prompts)
    n = len(prompts)
    size = min(batch, n)
    pad_rows = -n % size                     # repeat the first prompt so every batch has one shape
    ids = np.concatenate([ids, np.repeat(ids[:1], pad_rows, 0)])
    mask = np.concatenate([mask, np.zeros((pad_rows, mask.shape[1]), bool)])
    names = ("cosine", "kl", "top1")
    sums = {m: np.zeros((len(orders), model.config.n_layers + 1)) for m in names}
    rows = None
    for i, k in enumerate(orders):
        for start in range(0, len(ids), size):
            res = iterative_jet_lens(model, ids[start:start + size], order=k)
            rows = res.rows
            m = mask[start:start + size]
            for name in names:
                sums[name][i] += np.where(m[None], np.asarray(res.metrics[name], np.float64), 0.0).sum((1, 2))
    total = int(mask.sum())
    return LensStudy(tuple(orders), tuple(rows), {m: s / total for m, s in sums.items()}, n, total)


# ---------------------------------------------------------------------------------------------
# Bigram paths against a corpus

@dataclasses.dataclass(frozen=True)
class PathSetAgreement:
    """One path set (or reference) on the corpus's frequent contexts.

    ``agreement``: :class:`~jetjax.ngrams.CorpusAgreement` (top-1 hit rate, rank correlation, KL,
    support mass); ``copy_share``: contexts whose top-1 next token is the context token itself;
    ``model_top1``: contexts whose top-1 equals the model's own on the one-token context.
    """

    name: str
    kind: str            # "path", "mean" or "model"
    agreement: object
    copy_share: float
    model_top1: float
    top: tuple            # ((context, next, prob), ...): the most confident non-copy predictions

    def to_dict(self) -> dict:
        a = self.agreement
        return {"name": self.name, "kind": self.kind, "top1_hit_rate": round(a.top1_hit_rate, 4),
                "rank_correlation": round(a.rank_correlation, 4), "kl": round(a.kl, 4),
                "support_mass": round(a.support_mass, 4), "copy_share": round(self.copy_share, 4),
                "model_top1": round(self.model_top1, 4),
                "top": [{"context": c, "next": n, "prob": round(p, 4)} for c, n, p in self.top]}


@dataclasses.dataclass(frozen=True)
class BigramStudy:
    """Every bigram path set of :func:`bigram_study`, by name, with the corpus and its baseline."""

    results: dict
    n_contexts: int
    n_tokens: int
    unigram: dict
    bos_token: str | None

    def mlp_layers(self) -> list[PathSetAgreement]:
        """The ``emb>mlp{l}>dec`` paths, in layer order."""
        return [r for r in self.results.values() if r.kind == "path" and _kinds(r.name) == ["mlp"]]

    def attention_layers(self) -> list[PathSetAgreement]:
        """The ``emb>attn{l}>dec`` paths, in layer order (empty without ``with_attention``)."""
        return [r for r in self.results.values() if r.kind == "path" and _kinds(r.name) == ["attn"]]

    def best_mlp(self) -> PathSetAgreement:
        """The ``emb>mlp{l}>dec`` path with the highest top-1 hit rate."""
        return max(self.mlp_layers(), key=lambda r: r.agreement.top1_hit_rate)

    def table(self, names: Sequence[str] | None = None) -> str:
        """One line per path set (hit@1, rho, KL, copy, =model) and the corpus's unigram; columns are
        always apart (:func:`jetjax._internal.text.text_table`)."""
        names = list(self.results) if names is None else names
        rows = []
        for name in names:
            r = self.results[name]
            a = r.agreement
            rows.append([name, a.top1_hit_rate, a.rank_correlation, a.kl, r.copy_share, r.model_top1])
        u = self.unigram
        rows.append(["unigram of the corpus", u["top1_hit_rate"], u["rank_correlation"], u["kl"], "", ""])
        width = max(len(str(row[0])) for row in rows)
        return "\n".join(text_table(["path set", "hit@1", "rho", "KL", "copy", "=model"], rows,
                                    (width, 6, 6, 7, 6, 6), (None, 3, 3, 2, 3, 3), left=(0,)))

    def to_dict(self) -> dict:
        return {"n_contexts": self.n_contexts, "n_tokens": self.n_tokens, "bos_token": self.bos_token,
                "unigram": {k: round(v, 4) for k, v in self.unigram.items()},
                "results": {n: r.to_dict() for n, r in self.results.items()}}


def _kinds(label: str) -> list[str]:
    return [c.kind for c in parse_label(label)]


def _one_component(kind: str, layer: int) -> str:
    return format_label([Component(kind, layer)])


def bigram_path_outputs(model: Model, with_attention: bool):
    """A jitted ``fn(params, ctx [N]) -> {name: final_norm(path output) [N, d]}`` for every length-≤1
    bigram path (one compiled function for all of them, cached per model)."""
    return per_model(model, "findings", ("normed", with_attention), lambda: _build_normed(model, with_attention))


def _build_normed(model: Model, with_attention: bool):
    n = model.config.n_layers

    def fn(params, ctx):
        x0 = model.token_embed(ctx[:, None], params=params)            # [N, 1, d]: one token, no position
        norm = lambda x: model.final_norm(x[:, -1], params=params)     # noqa: E731
        out = {format_label([]): norm(x0)}
        for layer in range(n):
            out[_one_component("mlp", layer)] = norm(model.mlp(layer, x0, params=params))
            if with_attention:
                out[_one_component("attn", layer)] = norm(model.attn(layer, x0, params=params))
        return out

    return jax.jit(fn)


def _scores(normed, w, b):
    logits = normed @ w + b
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.argmax(logits, axis=-1), logp


_scores_jit = module_jit(jax.jit(_scores))


# document-start tokens tried in turn when bigram_study is not told which (GPT-2/SmolLM2, Gemma, Llama 2)
BOS_CANDIDATES = ("<|endoftext|>", "<bos>", "<s>")


def bigram_study(model: Model, text: str, *, n_contexts: int = 500, bos_token: str | None = "auto",
                 with_attention: bool = True, n_top: int = 8) -> BigramStudy:
    """Agreement of every length-≤1 bigram path, their means, and the model itself with ``text``'s
    bigrams on its ``n_contexts`` most frequent contexts.

    Path sets: ``emb>dec``; each ``emb>mlp{l}>dec``; each ``emb>attn{l}>dec`` (with
    ``with_attention``: on a one-token context attention attends to that token alone, so this is
    the layer's value-output map); ``mean: attention-free`` (the ``L + 1`` paths above without
    attention) and ``mean: all length <= 1`` (with attention). References: ``model [z]`` (the model
    on the context token alone: all paths plus the remainder of its expansion add up to exactly
    this) and ``model [bos z]`` with ``bos_token`` (when it is in the vocabulary) before it;
    ``"auto"``: the first of :data:`BOS_CANDIDATES` in the vocabulary.
    """
    from jetjax.ngrams.agreement import corpus_bigrams

    if model.tokenizer is None:
        raise ValueError("bigram_study needs a model with a tokenizer (to read the corpus)")
    v = model.config.vocab_size
    corpus = corpus_bigrams(text, model.tokenizer, v, min_count=1, n_contexts=n_contexts)
    ctx = corpus.contexts.astype(np.int32)
    w, b = per_model(model, "findings", ("unembedding",),
                     lambda: jax.jit(lambda p: model.unembedding_matrix(params=p)))(model.params)
    normed = bigram_path_outputs(model, with_attention)(model.params, jnp.asarray(ctx))
    free = [format_label([])] + [_one_component("mlp", l) for l in range(model.config.n_layers)]
    sets = {name: (x, "path") for name, x in normed.items()}
    sets["mean: attention-free"] = (sum(normed[n] for n in free) / len(free), "mean")
    if with_attention:
        sets["mean: all length <= 1"] = (sum(normed.values()) / len(normed), "mean")

    one = np.asarray(model.logits(ctx[:, None]))[:, -1]
    refs = {"model [z]": one}
    if bos_token == "auto":
        bos_token = next((t for t in BOS_CANDIDATES if model.tokenizer.token_to_id(t) is not None), None)
    bos_id = model.tokenizer.token_to_id(bos_token) if bos_token else None
    if bos_id is not None:
        pair = np.stack([np.full_like(ctx, bos_id), ctx], axis=1)
        refs[f"model [{bos_token} z]"] = np.asarray(model.logits(pair))[:, -1]
    model_top1 = one.argmax(-1)

    strings = model.token_strings(np.arange(v)) if n_top else None
    results = {}

    def record(name, kind, top1, logp):
        top1, logp = np.asarray(top1), np.asarray(logp)
        prob = np.exp(logp[np.arange(len(ctx)), top1])
        keep = np.flatnonzero(top1 != ctx)
        best = keep[np.argsort(-prob[keep], kind="stable")[:n_top]]
        top = tuple((strings[ctx[i]], strings[top1[i]], float(prob[i])) for i in best) if n_top else ()
        results[name] = PathSetAgreement(name, kind, corpus.agreement(top1, logp), float(np.mean(top1 == ctx)),
                                         float(np.mean(top1 == model_top1)), top)

    for name, (x, kind) in sets.items():
        record(name, kind, *_scores_jit(x, w, b))
    for name, logits in refs.items():
        record(name, "model", logits.argmax(-1), jax.nn.log_softmax(jnp.asarray(logits), axis=-1))
    return BigramStudy(results, len(ctx), corpus.n_tokens, results["model [z]"].agreement.unigram,
                       bos_token if bos_id is not None else None)
