"""Model diffing: what fine-tuning changed, read off jet bigrams, and checked against data.

Two studies of a base model and a fine-tuned one (e.g. SmolLM2 and SmolLM2 with the shipped
Shakespeare LoRA adapter, :mod:`jetjax.io.adapters`), both computed, never typed in:

* :func:`bigram_diff`: the full jet bigram tables of a path set over the whole vocabulary for both
  models (data-free), the entries that gained and lost most probability
  (:func:`~jetjax.ngrams.diff_tables`, exact probabilities), how many rows changed their top-1, and
  a keyword-mass index (:func:`~jetjax.ngrams.keyword_mass`) of both.
* :func:`data_check`: does the jet bigram diff predict how the *model itself* changed? On a corpus
  (held-out Shakespeare), for every observed bigram ``(z1, z2)`` of its frequent contexts, the change
  of the model's own next-token probability on the one-token context ``[z1]`` (base → tuned, one
  forward pass per context set, no sampling) against the change of the jet bigram probability
  ``P_jet(z2 | z1)``: Spearman rank correlations, and the overlap of the ``n_top`` most gained pairs
  of each, next to the same figures with the jet changes shuffled across pairs (the chance level).

Example (two random tiny models sharing a vocabulary; the figures mean nothing, the shapes do):
  >>> from tokenizers import Tokenizer, models, pre_tokenizers
  >>> from jetjax.testing import tiny_model
  >>> sizes = dict(d_model=8, d_head=4, d_mlp=16, vocab_size=5, scale=0.02)
  >>> a, b = tiny_model(seed=0, **sizes), tiny_model(seed=1, **sizes)
  >>> tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate("a b c d e".split())}, unk_token="a"))
  >>> tok.pre_tokenizer = pre_tokenizers.Whitespace()
  >>> a.tokenizer = b.tokenizer = tok
  >>> check = data_check(a, b, "a b c a b d e a c " * 5, paths=("emb>mlp0>dec",), min_count=1, n_top=2,
  ...                    n_shuffles=10)
  >>> check.n_pairs, check.n_top, sorted(check.per_path)
  (7, 2, ['emb>dec', 'emb>mlp0>dec', 'emb>mlp1>dec'])
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.checks import check_nonnegative_int
from jetjax._internal.compiled import per_model
from jetjax._internal.results import ResultIO, check_format, dataframe, float_or_nan
from jetjax.models.model import Model
from jetjax.ngrams.analysis import TableDiff

__all__ = ["bigram_diff", "BigramDiff", "data_check", "DataCheck"]


# ---------------------------------------------------------------------------------------------
# Data-free: the full tables

@dataclasses.dataclass(frozen=True)
class BigramDiff(ResultIO):
    """Jet bigram tables of a base (``a``) and a fine-tuned model (``b``), compared.

    Attributes:
      paths: the path set (their logits averaged, as :func:`jetjax.jet_bigrams`).
      diff: the :class:`~jetjax.ngrams.analysis.TableDiff` (exact probabilities).
      top1_changed: fraction of the ``V`` contexts whose most probable next token differs.
      keywords: ``{"file", "a", "b"}`` keyword-mass dicts (:class:`~jetjax.ngrams.analysis.KeywordMass`)
        or ``None``.

    :meth:`top` lists the entries that gained most probability (:meth:`TableDiff.top`); ``to_json`` /
    ``load`` round-trip.
    """

    FORMAT = "jetjax.bigram_diff"

    paths: tuple[str, ...]
    vocab_size: int
    diff: TableDiff
    top1_changed: float
    keywords: dict | None

    def to_dict(self) -> dict:
        return {"format": self.FORMAT, "version": 1, "paths": list(self.paths), "vocab_size": self.vocab_size,
                "diff": self.diff.to_dict(), "top1_changed": self.top1_changed, "keywords": self.keywords}

    @classmethod
    def from_dict(cls, data: dict) -> "BigramDiff":
        data = check_format(data, cls.FORMAT, "BigramDiff", required=("paths", "vocab_size", "diff", "top1_changed"))
        return cls(paths=tuple(data["paths"]), vocab_size=data["vocab_size"], diff=TableDiff.from_dict(data["diff"]),
                   top1_changed=float_or_nan(data["top1_changed"]), keywords=data.get("keywords"))

    def top(self, n: int = 20) -> list[tuple[tuple[str, ...], str, float]]:
        """``(context, next, Δp)`` of the ``n`` entries that gained most probability."""
        return self.diff.top(n)

    def table(self, n: int = 10) -> str:
        """:meth:`to_markdown` with ``n`` entries per list."""
        return self.to_markdown(n)

    def to_dataframe(self):
        """The diff's records (:meth:`TableDiff.to_dataframe`; needs pandas)."""
        return self.diff.to_dataframe()

    def to_markdown(self, n: int = 10) -> str:
        out = [f"Jet bigrams `{' + '.join(self.paths)}` over all {self.vocab_size} one-token contexts: the "
               f"top-1 next token changed for **{self.top1_changed:.4f}** of them.", "",
               "| most gained: context → next | p base | p tuned | Δp |", "|---|---:|---:|---:|"]
        out += [f"| `{''.join(r['context'])!r}` → `{r['next']!r}` | {r['p_a']:.4f} | {r['p_b']:.4f} | "
                f"{r['delta']:+.4f} |" for r in self.diff.gained_prob[:n]]
        out += ["", "| most lost: context → next | p base | p tuned | Δp |", "|---|---:|---:|---:|"]
        out += [f"| `{''.join(r['context'])!r}` → `{r['next']!r}` | {r['p_a']:.4f} | {r['p_b']:.4f} | "
                f"{r['delta']:+.4f} |" for r in self.diff.lost_prob[:n]]
        if self.keywords:
            ka, kb = self.keywords["a"], self.keywords["b"]
            kwc = (f"{ka['keyword_contexts']:.3e} → {kb['keyword_contexts']:.3e}"
                   if ka["keyword_contexts"] is not None else "none of the contexts is a keyword")
            out += ["", f"Keyword mass of `{self.keywords['file']}` ({self.keywords['a']['n_words']} words, "
                        f"{len(ka['token_ids'])} one-token forms; uniform {ka['uniform']:.3e}): all contexts "
                        f"**{ka['all_contexts']:.3e} → {kb['all_contexts']:.3e}** "
                        f"(×{kb['all_contexts'] / ka['all_contexts']:.2f}); keyword contexts {kwc}."]
        return "\n".join(out)


def bigram_diff(base: Model, tuned: Model, paths: Sequence[str] = ("emb>mlp0>dec",), *, n: int = 20,
                top_k: int = 10, keywords=None, progress: bool = True) -> BigramDiff:
    """Sweep the jet bigram tables of ``paths`` for both models and compare them (see the module)."""
    from jetjax.ngrams import diff_tables, jet_bigrams, keyword_mass
    from jetjax.ngrams.analysis import check_same_vocabulary

    check_same_vocabulary(base, tuned)   # before two full-vocabulary sweeps
    if keywords is not None:
        from jetjax.ngrams.analysis import read_keywords

        read_keywords(keywords)   # a bad keyword file is named before the sweeps
    paths = (paths,) if isinstance(paths, str) else tuple(paths)
    a = jet_bigrams(base, paths, top_k=top_k, progress=progress)
    b = jet_bigrams(tuned, paths, top_k=top_k, progress=progress)
    diff = diff_tables(a, b, n=n, models=(base, tuned))
    kw = None
    if keywords is not None:
        kw = {"file": getattr(keywords, "name", str(keywords)).rsplit("/", 1)[-1],
              "a": keyword_mass(a, keywords, model=base).to_dict(), "b": keyword_mass(b, keywords, model=tuned).to_dict()}
    return BigramDiff(paths=paths, vocab_size=base.config.vocab_size, diff=diff,
                      top1_changed=float(np.mean(a.ids[:, 0] != b.ids[:, 0])), keywords=kw)


# ---------------------------------------------------------------------------------------------
# Against data

@dataclasses.dataclass(frozen=True)
class DataCheck(ResultIO):
    """How well jet bigram changes predict the model's own changes on a corpus (see :func:`data_check`).

    Attributes:
      paths: the jet bigram path set of the headline figures.
      n_tokens, n_contexts, n_pairs, min_count: the corpus, its contexts and observed pairs.
      spearman_dlogp, spearman_dp: rank correlation over pairs of Δ log-probability / Δ probability.
      top_overlap: ``|top-n gained (jet) ∩ top-n gained (model)| / n`` by Δ probability.
      shuffled: the same three figures with the jet changes permuted across pairs:
        ``{name: (mean, 95th percentile)}`` over ``n_shuffles`` permutations (correlations as ``|ρ|``).
      per_path: Spearman of Δ log-probability for each single attention-free path
        (``None`` where the path did not change at all).

    :meth:`top` ranks the single paths by that Spearman ρ; ``to_json`` / ``load`` round-trip.
    """

    FORMAT = "jetjax.data_check"

    paths: tuple[str, ...]
    n_tokens: int
    n_contexts: int
    n_pairs: int
    min_count: int
    n_top: int
    n_shuffles: int
    spearman_dlogp: float
    spearman_dp: float
    top_overlap: float
    shuffled: dict
    per_path: dict

    @classmethod
    def from_dict(cls, data: dict) -> "DataCheck":
        names = tuple(f.name for f in dataclasses.fields(cls))
        data = dict(check_format(data, cls.FORMAT, "DataCheck", required=names))
        data["paths"] = tuple(data["paths"])
        data["shuffled"] = {k: tuple(float_or_nan(x) for x in v) for k, v in data["shuffled"].items()}
        for name in ("spearman_dlogp", "spearman_dp", "top_overlap"):
            data[name] = float_or_nan(data[name])
        return cls(**{name: data[name] for name in names})

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """``(path, ρ)`` of the ``n`` single paths whose Δ log-probabilities rank the pairs most like the
        model's (largest Spearman ρ first; paths that did not change are left out)."""
        n = check_nonnegative_int("n", n)
        ranked = sorted(((k, v) for k, v in self.per_path.items() if v is not None), key=lambda kv: -kv[1])
        return [(k, float(v)) for k, v in ranked[:n]]

    def table(self, n: int = 5) -> str:
        """The headline figures against the shuffled baseline, and the :meth:`top` ``n`` single paths, as text."""
        s = self.shuffled
        lines = [f"{self.n_pairs} pairs of {self.n_contexts} contexts ({self.n_tokens} tokens), jet paths "
                 f"{' + '.join(self.paths)}: jet Δ vs model Δ (shuffled mean, 95th percentile)",
                 f"  Spearman ρ, Δ log p {self.spearman_dlogp:+.3f} ({s['spearman_dlogp'][0]:.3f}, "
                 f"{s['spearman_dlogp'][1]:.3f})",
                 f"  Spearman ρ, Δ p     {self.spearman_dp:+.3f} ({s['spearman_dp'][0]:.3f}, "
                 f"{s['spearman_dp'][1]:.3f})",
                 f"  top-{self.n_top} overlap   {self.top_overlap:.3f} ({s['top_overlap'][0]:.3f}, "
                 f"{s['top_overlap'][1]:.3f})", "single paths by ρ(Δ log p):"]
        return "\n".join(lines + [f"  {rho:+.3f}  {path}" for path, rho in self.top(n)])

    def to_dataframe(self):
        """One row per single path: ``path, spearman_dlogp`` (needs pandas)."""
        return dataframe({"path": list(self.per_path), "spearman_dlogp": list(self.per_path.values())})

    def to_markdown(self) -> str:
        s = self.shuffled
        best = max(((k, v) for k, v in self.per_path.items() if v is not None), key=lambda kv: kv[1])
        return "\n".join([
            f"{self.n_pairs} observed bigrams of the {self.n_contexts} most frequent contexts of held-out text "
            f"({self.n_tokens} tokens); jet path set `{' + '.join(self.paths)}`:", "",
            "| | jet Δ vs model Δ | jet Δ shuffled: mean | 95th percentile |", "|---|---:|---:|---:|",
            f"| Spearman ρ, Δ log p | **{self.spearman_dlogp:.3f}** | {s['spearman_dlogp'][0]:.3f} | "
            f"{s['spearman_dlogp'][1]:.3f} |",
            f"| Spearman ρ, Δ p | **{self.spearman_dp:.3f}** | {s['spearman_dp'][0]:.3f} | {s['spearman_dp'][1]:.3f} |",
            f"| top-{self.n_top} gained overlap | **{self.top_overlap:.3f}** | {s['top_overlap'][0]:.3f} | "
            f"{s['top_overlap'][1]:.3f} |", "",
            f"(Shuffled correlations are |ρ|, over {self.n_shuffles} permutations of the jet Δ across pairs.) "
            f"Best single attention-free path: `{best[0]}`, ρ(Δ log p) = {best[1]:.3f}."])


def _rank(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    r = rankdata(x)
    return (r - r.mean()) / (np.linalg.norm(r - r.mean()) or 1.0)


def _blocks(ctx: np.ndarray, rows: np.ndarray, nxt: np.ndarray, block: int):
    """Contexts in blocks of ``block`` and their pairs, every block padded to one shape (one compile):
    yields ``(ctx [block], rows [P], nxt [P], n_real_pairs)`` with ``rows`` local to the block."""
    counts = [int(np.sum((rows >= lo) & (rows < lo + block))) for lo in range(0, len(ctx), block)]
    width = max(counts)
    for i, lo in enumerate(range(0, len(ctx), block)):
        sel = (rows >= lo) & (rows < lo + block)
        c = np.zeros(block, np.int32)
        c[:len(ctx[lo:lo + block])] = ctx[lo:lo + block]
        r, z = np.zeros(width, np.int32), np.zeros(width, np.int32)
        r[:counts[i]], z[:counts[i]] = rows[sel] - lo, nxt[sel]
        yield jnp.asarray(c), jnp.asarray(r), jnp.asarray(z), counts[i]


def _gather_logp(model: Model, make_logits, ctx: np.ndarray, rows: np.ndarray, nxt: np.ndarray,
                 block: int = 256) -> dict[str, np.ndarray]:
    """``{name: log P(nxt | ctx[rows])}`` for the logits ``make_logits(params, w, b, ctx)`` returns
    (``{name: [N, V]}``), computed by blocks of contexts so that no ``[N, V]`` array is kept."""
    w, b = per_model(model, "diffing", ("unembedding",),
                     lambda: jax.jit(lambda p: model.unembedding_matrix(params=p)))(model.params)
    fn = jax.jit(lambda p, w, b, c, r, z: {k: jax.nn.log_softmax(x, axis=-1)[r, z]
                                           for k, x in make_logits(p, w, b, c).items()})
    out: dict[str, list] = {}
    for c, r, z, n in _blocks(ctx, rows, nxt, block):
        for k, x in fn(model.params, w, b, c, r, z).items():
            out.setdefault(k, []).append(np.asarray(x)[:n])
    return {k: np.concatenate(v) for k, v in out.items()}


def data_check(base: Model, tuned: Model, text: str, paths: Sequence[str] = ("emb>mlp0>dec",), *,
               n_contexts: int = 500, min_count: int = 5, n_top: int = 50, n_shuffles: int = 1000,
               seed: int = 0) -> DataCheck:
    """Compare jet bigram changes with the model's own changes on the bigrams of ``text``.

    Contexts: the ``n_contexts`` most frequent tokens of ``text`` seen at least ``min_count`` times
    (:func:`~jetjax.ngrams.corpus_bigrams`, the base's tokenizer); pairs: every observed successor of
    each. For each model, ``log P_model(z2 | [z1])`` (the model on the one-token context) and
    ``log P_jet(z2 | z1)`` (the path set's softmax, as the tables); ``Δ = tuned − base``. Pairs are
    counted once each (not weighted by frequency). The shuffled baseline permutes the jet Δ across
    pairs with ``numpy.random.default_rng(seed)``.
    """
    from jetjax.studies.findings import bigram_path_outputs
    from jetjax.ngrams.agreement import corpus_bigrams
    from jetjax.ngrams.scorer import context_scorer

    if base.tokenizer is None:
        raise ValueError("data_check needs a base model with a tokenizer (to read the corpus)")
    if (base.config.vocab_size, base.config.d_model) != (tuned.config.vocab_size, tuned.config.d_model):
        raise ValueError("data_check compares two versions of one model (same vocabulary and width)")
    paths = (paths,) if isinstance(paths, str) else tuple(paths)
    v = base.config.vocab_size
    corpus = corpus_bigrams(text, base.tokenizer, v, min_count=min_count, n_contexts=n_contexts)
    ctx = corpus.contexts.astype(np.int32)
    rows = np.concatenate([np.full(len(corpus.successors[int(z)][0]), r) for r, z in enumerate(ctx)])
    nxt = np.concatenate([corpus.successors[int(z)][0] for z in ctx]).astype(np.int32)
    if len(rows) < max(3, n_top):
        raise ValueError(f"only {len(rows)} observed pairs: fewer than n_top={n_top}; use more text or lower min_count")

    def figures(model):
        scorer, normed = context_scorer(model, paths), bigram_path_outputs(model, False)

        def logits(p, w, b, c):
            out = {k: x @ w + b for k, x in normed(p, c).items()}
            out["jet"] = scorer(p, c[:, None]) @ w + b
            out["model"] = model.logits(c[:, None], params=p)[:, -1]
            return out

        return _gather_logp(model, logits, ctx, rows, nxt)

    fa, fb = figures(base), figures(tuned)
    d_logp = {k: fb[k].astype(np.float64) - fa[k] for k in fa}
    d_p = {k: np.exp(fb[k].astype(np.float64)) - np.exp(fa[k].astype(np.float64)) for k in fa}
    rj, rm = _rank(d_logp["jet"]), _rank(d_logp["model"])
    pj, pm = _rank(d_p["jet"]), _rank(d_p["model"])
    top_m = set(np.argsort(-d_p["model"], kind="stable")[:n_top].tolist())

    def overlap(dp_jet):
        return len(top_m & set(np.argsort(-dp_jet, kind="stable")[:n_top].tolist())) / n_top

    rng = np.random.default_rng(seed)
    sh = {"spearman_dlogp": [], "spearman_dp": [], "top_overlap": []}
    for _ in range(n_shuffles):
        perm = rng.permutation(len(rows))
        sh["spearman_dlogp"].append(abs(float(rj[perm] @ rm)))
        sh["spearman_dp"].append(abs(float(pj[perm] @ pm)))
        sh["top_overlap"].append(overlap(d_p["jet"][perm]))
    shuffled = {k: (float(np.mean(x)), float(np.percentile(x, 95))) for k, x in sh.items()}
    per_path = {k: (float(_rank(d) @ rm) if np.any(d != 0) else None)
                for k, d in d_logp.items() if k not in ("jet", "model")}
    return DataCheck(paths=paths, n_tokens=corpus.n_tokens, n_contexts=len(ctx), n_pairs=len(rows),
                     min_count=min_count, n_top=n_top, n_shuffles=n_shuffles,
                     spearman_dlogp=float(rj @ rm), spearman_dp=float(pj @ pm),
                     top_overlap=overlap(d_p["jet"]), shuffled=shuffled, per_path=per_path)


# ---------------------------------------------------------------------------------------------
# The README's study of the shipped adapter

HEADLINE_PATHS = ("emb>mlp0>dec",)   # SmolLM2's bigram-carrying path (README, "Which MLPs carry bigrams")


def adapter_report(base: Model, adapter="shakespeare", *, text: str | None = None, out_dir=None,
                   checkpoints: Sequence = (), progress: bool = True) -> dict:
    """The README's figures for a base model and a LoRA adapter of it: :func:`bigram_diff` of
    :data:`HEADLINE_PATHS` with the archaic-English keyword mass, :func:`data_check` on ``text``
    (default: the shipped held-out Shakespeare), and, given adapter ``checkpoints`` (files, in
    training order), :func:`~jetjax.ngrams.ngram_dynamics` over base, checkpoints and the adapter.
    With ``out_dir``, writes ``report.md``, ``report.json`` and ``gained_lost.png`` there.
    Returns ``{"markdown", "diff", "check", "dynamics"}``."""
    import json
    from pathlib import Path

    from jetjax.io.adapters import adapter_path, load_adapter, merge_adapter
    from jetjax.io.assets import shipped_text

    keywords = Path(__file__).parent.parent / "assets" / "keywords" / "archaic.txt"
    path = adapter_path(adapter)
    tuned = merge_adapter(base, load_adapter(path))
    step_adapters = [load_adapter(c) for c in checkpoints]
    steps = [merge_adapter(base, a) for a in step_adapters]   # every file checked before any sweep
    text = shipped_text("validation.txt") if text is None else text
    diff = bigram_diff(base, tuned, HEADLINE_PATHS, n=10, keywords=keywords, progress=progress)
    check = data_check(base, tuned, text, HEADLINE_PATHS)
    parts = [diff.to_markdown(), "", check.to_markdown()]
    dynamics = None
    if checkpoints:
        from jetjax import jet_bigrams
        from jetjax.ngrams import ngram_dynamics

        models = [base] + steps + [tuned]
        tables = [jet_bigrams(m, HEADLINE_PATHS, top_k=10, global_k=1000, progress=progress) for m in models]
        labels = ["base"] + [a.card.get("steps_done", Path(c).stem) for a, c in zip(step_adapters, checkpoints)] + ["final"]
        dynamics = ngram_dynamics(tables, k=1000, models=models, labels=[str(x) for x in labels])
        parts += ["", "| step | " + " | ".join(dynamics.labels) + " |", "|---|" + "---:|" * len(dynamics.labels),
                  "| hit ratio (top 1000) | " + " | ".join(f"{x:.3f}" for x in dynamics.hit_ratio) + " |",
                  "| own top-1000 mass | " + " | ".join(f"{x:.3f}" for x in dynamics.own_mass) + " |",
                  "| mass on the final top 1000 | " + " | ".join(f"{x:.3f}" for x in dynamics.final_mass) + " |"]
    markdown = "\n".join(parts) + "\n"
    if out_dir is not None:
        from jetjax import viz

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.md").write_text(markdown)
        record = {"diff": json.loads(diff.diff.to_json()), "top1_changed": diff.top1_changed,
                  "keywords": diff.keywords, "check": dataclasses.asdict(check),
                  "dynamics": None if dynamics is None else dynamics.to_dict()}
        (out / "report.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        viz.diff_bars(diff.diff, out / "gained_lost.png", n=10,
                      title=f"{' + '.join(HEADLINE_PATHS)}: SmolLM2 + Shakespeare LoRA vs SmolLM2")
    return {"markdown": markdown, "diff": diff, "check": check, "dynamics": dynamics}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m jetjax.studies.diffing",
                                 description="The README's diff of SmolLM2 and its Shakespeare LoRA adapter.")
    ap.add_argument("--out", required=True, help="directory for report.md, report.json and gained_lost.png")
    ap.add_argument("--adapter", default="shakespeare", help="adapter file or shipped name (default shakespeare)")
    ap.add_argument("--checkpoints", nargs="*", default=(), help="intermediate adapters, in training order")
    args = ap.parse_args()
    from jetjax.io.assets import load

    print(adapter_report(load("smollm2"), args.adapter, out_dir=args.out, checkpoints=args.checkpoints)["markdown"])
