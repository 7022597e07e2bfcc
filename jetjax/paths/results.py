"""What an attribution returns, and how to read it: :class:`PathAttribution` (and :class:`TopPaths`, what
:func:`jetjax.top_paths` returns and ``method="search"`` keeps), the two measures
(:func:`remainder_ratio`, :func:`cancellation`) and the warning line, and :func:`token_id` (a
target or foil given as an id or a one-token string).

Shared by the three ways jetjax attributes a logit difference to paths (:func:`jetjax.path_attribution`
with ``method="jet"``, ``"frozen"`` or ``"search"``), so that each of them can be read the same way.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jetjax._internal.checks import check_nonnegative_int, count_nonfinite
from jetjax.html import attribution_html, top_paths_html
from jetjax._internal.results import ResultIO, check_format, dataframe, float_or_nan
from jetjax.paths.labels import EMB, SEP, label_length
from jetjax.models.model import Model

__all__ = ["EXPLAINED_WARNING", "remainder_ratio", "cancellation", "explained_warning", "PathAttribution", "TopPaths",
           "attribution_from_scores", "token_id", "one_sequence"]

EXPLAINED_WARNING = 0.5   # warn when |remainder| > this × |model total|


def remainder_ratio(remainder: float, total: float) -> float:
    """``|remainder| / |total|``: how far the paths' sum is from the model's own number, relative to
    it. 0: the paths add up to the model exactly; 0.5: they are off by half of it; ``inf`` when
    the total is 0 and the remainder is not (``nan`` for 0/0).

    Example:
      >>> remainder_ratio(711.67, 4.13) > 100, remainder_ratio(0.0, 4.13)
      (True, 0.0)
    """
    remainder, total = abs(float(remainder)), abs(float(total))
    if total == 0:
        return 0.0 if remainder == 0 else float("inf")
    return remainder / total


def cancellation(parts) -> float:
    """``Σ_i |s_i| / |Σ_i s_i|`` of the path scores ``s_i``: 1 when every path pushes the same way;
    ``c`` means the paths' sizes add up to ``c`` times their net effect, so they mostly cancel each
    other when ``c`` is large (``inf`` when they cancel exactly).

    Example:
      >>> cancellation([1.0, 2.0]), cancellation([100.0, -99.0])
      (1.0, 199.0)
    """
    parts = np.asarray(parts, np.float64)
    net, size = abs(float(parts.sum())), float(np.abs(parts).sum())
    if net == 0:
        return 1.0 if size == 0 else float("inf")
    return size / net


def explained_warning(ratio: float) -> str | None:
    if np.isfinite(ratio) and ratio <= EXPLAINED_WARNING:
        return None
    return (f"WARNING: the paths explain less than half of the model's number (|remainder| / |total| = "
            f"{ratio:.3g} > {EXPLAINED_WARNING}): read the paths as an incomplete account")


@dataclasses.dataclass(frozen=True)
class TopPaths(ResultIO):
    """The result of :func:`jetjax.top_paths`.

    Attributes:
      labels, scores: the top ``k`` paths (``emb>…>dec``, ``bias>…>dec``) and their exact scores,
        best first under ``by``.
      total: the model's own score (from its logits).
      explored: the sum of every path the search scored (the top ``k`` and all others it decoded).
      unexplored: the exact sum of every path it never scored (from subtree sums).
        ``explored + unexplored == total`` up to float rounding (``residual``).
      residual: ``total − explored − unexplored``: float rounding only.
      n_paths: how many frozen paths there are (``bias>dec`` included).
      n_prefixes: prefixes the search generated; ``n_scored``: complete paths it scored.
      bound: no unexplored path scores more than this in absolute value (0 when nothing was dropped).
      certified: ``bound`` is below the k-th score: the top ``k`` equal those of full enumeration.
      norms_exact: whether the operator norms behind ``bound`` are exact (small ``T·d``) or power
        iteration estimates times :data:`jetjax.paths.search.NORM_MARGIN`.
      score, by, beam, granularity, position, target, foil: the settings.

    :meth:`top` lists the paths in the search's own ranking (``by``); ``to_json`` / ``load`` round-trip
    (a non-finite number, e.g. an overflowed ``bound``, is written ``null`` and read back as NaN).
    """

    FORMAT = "jetjax.top_paths"

    labels: tuple[str, ...]
    scores: np.ndarray
    total: float
    explored: float
    unexplored: float
    residual: float
    n_paths: int
    n_prefixes: int
    n_scored: int
    bound: float
    certified: bool
    norms_exact: bool
    score: str
    by: str
    beam: int
    granularity: str
    position: int
    target: int | None
    foil: int | None

    def __len__(self) -> int:
        return len(self.labels)

    def top(self, n: int | None = None) -> list[tuple[str, float]]:
        """``(label, score)`` of the best ``n`` (default all ``k``)."""
        n = len(self.labels) if n is None else n
        return [(lab, float(s)) for lab, s in zip(self.labels[:n], self.scores[:n])]

    def table(self, n: int = 20) -> str:
        """A plain-text table of the best ``n`` paths and what the rest add up to."""
        lines = [f"model {self.total:+.4f} = top {len(self)} {float(self.scores.sum()):+.4f} + other scored "
                 f"{self.explored - float(self.scores.sum()):+.4f} + unexplored {self.unexplored:+.4f}",
                 f"{self.n_paths:,} paths; {self.n_prefixes:,} prefixes explored, {self.n_scored:,} paths scored "
                 f"(beam {self.beam}); " + (f"certified: no unexplored path scores above {self.bound:.4g}"
                                             if self.certified else
                                             (f"NOT certified: an unexplored path could score up to {self.bound:.4g} "
                                              "(raise beam=)" if math.isfinite(self.bound) else
                                              "NOT certified: no finite bound (the product of operator norms "
                                              "overflows float32 at this depth)"))]
        lines += [f"{s:+10.4f}  {lab}" for lab, s in self.top(n)]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The table a notebook shows (:func:`jetjax.html.top_paths_html`)."""
        return top_paths_html(self)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("labels", "scores")}
        d["paths"] = [{"label": lab, "score": float(s)} for lab, s in zip(self.labels, self.scores)]
        return {**d, "format": self.FORMAT, "version": 1}

    def to_json(self, path=None) -> str:
        """The result as JSON, as :meth:`jetjax.PathAttribution.to_json` writes one (NaN and ±inf as ``null``),
        written to ``path`` when given; :meth:`load` / :meth:`from_json` read it back."""
        return super().to_json(path)

    @classmethod
    def from_dict(cls, data: dict) -> "TopPaths":
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("labels", "scores")]
        data = check_format(data, cls.FORMAT, "TopPaths", required=(*names, "paths"))
        fields = {name: data[name] for name in names}
        for name in ("total", "explored", "unexplored", "residual", "bound"):
            fields[name] = float_or_nan(fields[name])
        return cls(labels=tuple(p["label"] for p in data["paths"]),
                   scores=np.array([float_or_nan(p["score"]) for p in data["paths"]], np.float64), **fields)

    def to_dataframe(self):
        """One row per listed path: ``label, score`` (needs pandas)."""
        return dataframe({"label": list(self.labels), "score": np.asarray(self.scores)})


@dataclasses.dataclass(frozen=True)
class PathAttribution(ResultIO):
    """Which paths push ``logit(target) − logit(foil)`` at one position (see :func:`path_attribution`).

    Attributes:
      labels, scores: every path and its contribution (``scores[i]`` is path ``i``'s logit of
        ``target`` minus its logit of ``foil``; its logit of ``target`` when there is no foil).
      total: the model's own ``logit(target) − logit(foil)``.
      remainder: ``total − Σ scores``.
      remainder_share: ``|remainder| / (|remainder| + Σ_i |scores_i|)``: the part of the absolute
        attribution mass the paths leave unexplained (0: all of it is in the paths; 1: none). When
        the paths cancel each other this is small even if the remainder dwarfs the total: read it
        with the next two.
      remainder_ratio: ``|remainder| / |total|``: how far the paths' sum is from the model's own
        number, relative to it (0: exact; above 0.5 the paths explain less than half of it, and
        :meth:`table` and the CLI say so).
      cancellation: ``Σ_i |scores_i| / |Σ_i scores_i|``: 1 when all paths push the same way; ``c``
        when their sizes add up to ``c`` times their net effect.
      components: for each component (``"attn3"``, ``"block0"``, ...), the sum of the scores of
        all paths through it; ``direct``: the score of its one-component path ``emb><c>>dec``
        (present when that path was computed).
      target, foil, position: token ids (``foil`` may be None) and the 0-based position.
      semantics: what a path is: ``"jet"`` (Algorithm 2: each path applies the jets of its
        components to its own vector) or ``"frozen"`` (every nonlinear factor held at the forward
        pass, so paths are linear in their source and all of them add up to the model exactly).
      method: how the paths were chosen (:func:`jetjax.path_attribution`'s ``method``): ``"jet"``
        (every path of the settings, Algorithm 2), ``"frozen"`` (every frozen path up to
        ``max_length``) or ``"search"`` (the ``k`` largest frozen paths found by
        :func:`jetjax.top_paths`; the remainder is then ``unlisted + unexplored``).
      search: for ``method="search"``, the :class:`jetjax.TopPaths` behind it (``None`` otherwise).
      unlisted: the sum of the paths the search scored but did not list (0 for other methods).
      unexplored: the exact sum of the paths the search never scored (0 for other methods).

    :meth:`top` lists the paths that push the number most (largest scores first; :meth:`bottom` the
    most negative). ``to_json`` / ``load`` round-trip (the search's own report included; a non-finite
    number is written ``null`` and read back as NaN).
    """

    FORMAT = "jetjax.path_attribution"

    labels: tuple[str, ...]
    scores: np.ndarray
    total: float
    remainder: float
    remainder_share: float
    components: dict[str, float]
    direct: dict[str, float]
    target: int
    foil: int | None
    position: int
    order: int
    granularity: str
    target_str: str | None = None
    foil_str: str | None = None
    semantics: str = "jet"
    method: str = "jet"
    search: "TopPaths | None" = None

    @property
    def unlisted(self) -> float:
        return 0.0 if self.search is None else self.search.explored - float(self.scores.sum())

    @property
    def unexplored(self) -> float:
        return 0.0 if self.search is None else self.search.unexplored

    @property
    def remainder_ratio(self) -> float:
        return remainder_ratio(self.remainder, self.total)

    @property
    def cancellation(self) -> float:
        return cancellation(self.scores)

    @property
    def warning(self) -> str | None:
        """One line when the paths explain less than half of the model's number, else ``None``."""
        return explained_warning(self.remainder_ratio)

    def top(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` paths that push the prediction most (largest scores first)."""
        n = check_nonnegative_int("n", n)
        idx = np.argsort(-self.scores, kind="stable")[:n]
        return [(self.labels[i], float(self.scores[i])) for i in idx]

    def bottom(self, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` paths that push against it most (most negative first)."""
        n = check_nonnegative_int("n", n)
        idx = np.argsort(self.scores, kind="stable")[:n]
        return [(self.labels[i], float(self.scores[i])) for i in idx]

    def table(self, n: int = 10) -> str:
        """A plain-text report: totals, the top and bottom paths, and the components."""
        n = check_nonnegative_int("n", n)
        what = repr(self.target_str) if self.target_str is not None else str(self.target)
        if self.foil is not None:
            what += f" − {self.foil_str!r}" if self.foil_str is not None else f" − {self.foil}"
        lines = []
        bad = count_nonfinite(self.scores) + count_nonfinite([self.total])
        if bad:
            lines.append(f"WARNING: {bad} of the numbers below are NaN or inf (non-finite weights or a jet "
                         "that overflowed); they mean nothing")
        lines += [f"logit({what}) at position {self.position}: model {self.total:+.4f} = "
                  f"Σ {len(self.labels)} {'listed ' if self.search is not None else ''}{self.semantics} paths {float(self.scores.sum()):+.4f} + remainder "
                  f"{self.remainder:+.4f}",
                  f"  |remainder|/|total| {self.remainder_ratio:.3g}, cancellation Σ|s|/|Σs| "
                  f"{self.cancellation:.3g}, remainder share {self.remainder_share:.1%}"]
        if self.warning:
            lines.append(self.warning)
        if self.search is not None:
            res = self.search
            lines.append(f"  remainder = {res.n_scored - len(self.labels):,} other scored paths {self.unlisted:+.4f} + "
                         f"unexplored paths (exact) {self.unexplored:+.4f}"
                         + (f" + rounding {res.residual:+.2g}" if abs(res.residual) > 1e-4 * max(1.0, abs(self.total))
                            else ""))
            lines.append(f"  {res.n_paths:,} frozen paths, {res.n_prefixes:,} prefixes explored (beam {res.beam}); "
                         + ("certified: these are the top paths of full enumeration" if res.certified else
                            "not certified: an unexplored path could outscore the listed ones "
                            + (f"(bound {res.bound:.3g}; raise beam=)" if math.isfinite(res.bound) else
                               "(no finite bound: the product of operator norms overflows float32 at this depth)")))
        lines.append("top paths:")
        lines += [f"  {score:+10.4f}  {label}" for label, score in self.top(n)]
        lines.append("bottom paths:")
        lines += [f"  {score:+10.4f}  {label}" for label, score in self.bottom(n)]
        lines.append("components (Σ over the listed paths through it):" if self.search is not None else
                     "components (Σ over paths through it):")
        ranked = sorted(self.components.items(), key=lambda kv: -abs(kv[1]))
        lines += [f"  {score:+10.4f}  {name}" for name, score in ranked[:n]]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The table a notebook shows, the remainder split out (:func:`jetjax.html.attribution_html`)."""
        return attribution_html(self)

    def to_dict(self) -> dict:
        return {
            "format": self.FORMAT, "version": 1,
            "target": self.target, "foil": self.foil, "target_str": self.target_str, "foil_str": self.foil_str,
            "position": self.position, "order": self.order, "granularity": self.granularity,
            "semantics": self.semantics, "method": self.method,
            "unlisted": self.unlisted, "unexplored": self.unexplored,
            "search": None if self.search is None else {
                "n_paths": self.search.n_paths, "n_prefixes": self.search.n_prefixes,
                "n_scored": self.search.n_scored, "beam": self.search.beam, "bound": self.search.bound,
                "certified": self.search.certified, "residual": self.search.residual},
            "total": self.total, "remainder": self.remainder, "remainder_share": self.remainder_share,
            "remainder_ratio": self.remainder_ratio, "cancellation": self.cancellation,
            "explains_less_than_half": self.warning is not None,
            "n_paths": len(self.labels),
            "paths": [{"label": lab, "score": float(sc)} for lab, sc in zip(self.labels, self.scores)],
            "components": self.components, "direct": self.direct,
            "nonfinite": count_nonfinite(self.scores) + count_nonfinite([self.total]),
            "top_paths": None if self.search is None else self.search.to_dict(),
        }

    def to_json(self, path=None) -> str:
        """The attribution as JSON (NaN and ±inf, never expected, are written as ``null``), written to
        ``path`` when given; :meth:`load` / :meth:`from_json` read it back."""
        return super().to_json(path)

    @classmethod
    def from_dict(cls, data: dict) -> "PathAttribution":
        data = check_format(data, cls.FORMAT, "PathAttribution",
                            required=("paths", "total", "remainder", "remainder_share", "components", "direct",
                                      "target", "foil", "position", "order", "granularity"))
        floats = lambda d: {k: float_or_nan(v) for k, v in d.items()}   # noqa: E731
        search = data.get("top_paths")
        return cls(labels=tuple(p["label"] for p in data["paths"]),
                   scores=np.array([float_or_nan(p["score"]) for p in data["paths"]], np.float64),
                   total=float_or_nan(data["total"]), remainder=float_or_nan(data["remainder"]),
                   remainder_share=float_or_nan(data["remainder_share"]), components=floats(data["components"]),
                   direct=floats(data["direct"]), target=data["target"], foil=data["foil"],
                   position=data["position"], order=data["order"], granularity=data["granularity"],
                   target_str=data.get("target_str"), foil_str=data.get("foil_str"),
                   semantics=data.get("semantics", "jet"), method=data.get("method", "jet"),
                   search=None if search is None else TopPaths.from_dict(search))

    def to_dataframe(self):
        """One row per path: ``label, length`` (components it goes through) ``, score`` (needs pandas)."""
        return dataframe({"label": list(self.labels), "length": [label_length(lab) for lab in self.labels],
                          "score": np.asarray(self.scores)})


def attribution_from_scores(labels, scores, total: float, **fields) -> PathAttribution:
    """A :class:`PathAttribution` of decoded path labels and their scores against the model's ``total``.

    Derives what every method reports the same way: ``remainder = total − Σ scores``, its share of
    the absolute mass, and per component the sum of the scores of the paths through it
    (``components``) and the score of its one-component embedding path (``direct``). ``fields``
    are the remaining attributes (``target``, ``foil``, ``position``, ``order``, ``granularity``, ...).

    Example:
      >>> att = attribution_from_scores(("emb>attn0>dec", "emb>attn0>mlp1>dec", "bias>mlp1>dec"),
      ...                               np.array([1.0, 0.5, -0.25]), 2.0, target=3, foil=None, position=0,
      ...                               order=0, granularity="branch")
      >>> att.remainder, att.components, att.direct
      (0.75, {'attn0': 1.5, 'mlp1': 0.25}, {'attn0': 1.0})
    """
    remainder = total - float(scores.sum())
    mass = abs(remainder) + float(np.abs(scores).sum())
    components: dict[str, float] = {}
    direct: dict[str, float] = {}
    for label, sc in zip(labels, scores):
        parts = label.split(SEP)             # source, components..., "dec"
        for name in parts[1:-1]:
            components[name] = components.get(name, 0.0) + float(sc)
        if parts[0] == EMB and len(parts) == 3:
            direct[parts[1]] = float(sc)
    return PathAttribution(labels, scores, total, remainder, abs(remainder) / mass if mass else 0.0, components,
                           direct, **fields)


def one_sequence(model: Model, ids, what: str):
    """``ids`` (token ids, or a text to tokenize) as one checked sequence ``[T]``; errors name ``what``.

    Example:
      >>> from jetjax.testing import tiny_model
      >>> one_sequence(tiny_model(), [[1, 2]], "top_paths")
      Traceback (most recent call last):
      ...
      ValueError: top_paths takes one sequence of token ids [T], got shape (1, 2); loop over a batch yourself
    """
    if isinstance(ids, str):
        ids = model.tokenize(ids)
    ids = model.check_ids(ids)
    if ids.ndim != 1:
        raise ValueError(f"{what} takes one sequence of token ids [T], got shape {tuple(ids.shape)}; loop over a "
                         "batch yourself")
    return ids


def token_id(model: Model, token, what: str) -> tuple[int, str | None]:
    """``(id, text)`` of a target/foil given as a token id or a one-token string; errors name ``what``."""
    if isinstance(token, str):
        if not token:
            raise ValueError(f"{what} '' is the empty string; give a one-token string (e.g. ' Paris') or a token id")
        ids = model.tokenize(token, special_tokens=False)   # the token itself, no <bos>
        if ids.size != 1:
            raise ValueError(f"{what} {token!r} is {ids.size} tokens, expected exactly one "
                             "(words usually need their leading space, e.g. ' the')")
        unk = getattr(getattr(model.tokenizer, "model", None), "unk_token", None)
        token_to_id = getattr(model.tokenizer, "token_to_id", None)
        if unk and token != unk and token_to_id is not None and int(ids[0]) == token_to_id(unk):
            raise ValueError(f"{what} {token!r} is not in the vocabulary: the tokenizer maps it to its unknown "
                             f"token {unk!r}")
        return int(ids[0]), token
    if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
        raise TypeError(f"{what} must be a token id (int) or a one-token string, got {token!r}")
    v = model.config.vocab_size
    if not 0 <= token < v:
        raise ValueError(f"{what} token id {token} is out of range for a vocabulary of {v} (valid: 0..{v - 1})")
    text = model.detokenize([int(token)]) if model.tokenizer is not None else None
    return int(token), text
