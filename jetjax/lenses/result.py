"""What a lens returns: :class:`LensResult` (per-row logits, the model's logits, faithfulness metrics).

Made by :func:`jetjax.logit_lens`, :func:`jetjax.iterative_jet_lens` and :func:`jetjax.joint_jet_lens`
(:mod:`jetjax.lenses.lens`). A result holds arrays and metadata only, never the model: the token
strings its methods print are the model's vocabulary, kept as :attr:`LensResult.vocab`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jetjax._internal.checks import count_nonfinite, json_safe
from jetjax._internal.compiled import module_jit
from jetjax.html import lens_html
from jetjax._internal.results import check_format, dataframe, decode_array, encode_array, load_json, write_text

__all__ = ["LensResult", "METRICS"]

METRICS = ("cosine", "kl", "top1", "rank", "remainder_norm", "entropy")

_ARRAYS = ("ids", "logits", "model_logits", "combined", "weights", "fit_losses")


@module_jit
@jax.jit
def _faithfulness(lens, target) -> dict[str, jax.Array]:
    """Per-position metrics of ``lens`` logits against ``target`` logits (broadcast, last axis V)."""
    log_p = jax.nn.log_softmax(target, axis=-1)
    log_q = jax.nn.log_softmax(lens, axis=-1)
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    cosine = jnp.sum(lens * target, -1) / (jnp.linalg.norm(lens, axis=-1) * jnp.linalg.norm(target, axis=-1))
    top = jnp.argmax(target, axis=-1)
    top_logit = jnp.take_along_axis(lens, jnp.broadcast_to(top, lens.shape[:-1])[..., None], axis=-1)
    return {
        "cosine": cosine,
        "kl": jnp.sum(p * (log_p - log_q), axis=-1),
        "top1": (jnp.argmax(lens, axis=-1) == top).astype(lens.dtype),
        "rank": jnp.sum(lens > top_logit, axis=-1),
        "remainder_norm": jnp.linalg.norm(target - lens, axis=-1),
        "entropy": -jnp.sum(q * log_q, axis=-1),
    }


def _nested(flat: list, shape: tuple[int, ...]):
    """A flat list as nested lists of the given shape (for JSON)."""
    if not shape:
        return flat[0]
    step = len(flat) // shape[0]
    return [_nested(flat[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


@dataclasses.dataclass(frozen=True, eq=False)
class LensResult:
    """What a lens saw: per-row logits, the model's own logits, and faithfulness metrics.

    Attributes:
      kind: ``"logit"``, ``"iterative"`` or ``"joint"``.
      order: the jet order ``k``.
      granularity: ``"block"`` or ``"branch"``.
      rows: one label per row (``h3``, ``attn1``, or for the joint lens the centre's components).
      row_indices: the row indices used (see :mod:`jetjax.lenses.lens`); ``layers`` is its old name.
      ids: the input token ids, ``int32 [..., T]``.
      logits: ``[n_rows, ..., T, V]``. Iterative/logit lens: ``J^k Dec(h_l)(h_L)`` per row. Joint
        lens: the *unweighted* jet ``J^k Dec(c_i)(h_L)`` of each centre.
      model_logits: ``[..., T, V]``, ``Dec(h_L)``.
      combined: joint lens only: ``Σ_i weights[i] · logits[i]`` (``[..., T, V]``).
      weights: joint lens only: ``[n_rows, ..., T]``, on the simplex at every token.
      fit_losses: joint lens only: the fitting loss (mean over tokens of the squared logit-space
        remainder norm) before each Adam step and after the last, ``[fit_steps + 1]``.
      compute_dtype: the precision of the rows' unembedding.
      vocab: the model's token strings (index = id), or ``None`` for a model without a tokenizer
        (tokens are then shown as ``#id``). The result holds no model.

    :meth:`top` ranks the tokens of each cell (row, position) by probability: ``top(n)`` gives the
    ``n`` most probable ids and their probabilities (``top_k`` is its old, deprecated name;
    :meth:`top_tokens` the same as strings). ``to_json`` / ``load`` round-trip every array exactly.
    """

    kind: str
    order: int
    granularity: str
    rows: tuple[str, ...]
    row_indices: tuple[int, ...]
    ids: np.ndarray
    logits: jax.Array
    model_logits: jax.Array
    combined: jax.Array | None = None
    weights: jax.Array | None = None
    fit_losses: np.ndarray | None = None
    compute_dtype: str = "float32"
    vocab: tuple[str, ...] | None = dataclasses.field(default=None, repr=False)

    @property
    def layers(self) -> tuple[int, ...]:
        """Deprecated name of :attr:`row_indices` (the indices pick rows, not layers)."""
        warnings.warn("LensResult.layers is deprecated: use row_indices", DeprecationWarning, stacklevel=2)
        return self.row_indices

    @property
    def remainder(self) -> jax.Array:
        """Joint lens: ``model_logits − combined``; otherwise per row ``model_logits − logits[r]``."""
        if self.combined is not None:
            return self.model_logits - self.combined
        return self.model_logits - self.logits

    @functools.cached_property
    def metrics(self) -> dict[str, np.ndarray]:
        """Per row and position (``[n_rows, ..., T]``), each row's logits against the model's:

        * ``cosine``: cosine similarity of the logit vectors;
        * ``kl``: ``KL(model ‖ lens)`` of the softmax distributions, in nats;
        * ``top1``: 1 where the row's top token is the model's top token, else 0;
        * ``rank``: how many tokens the row scores strictly above the model's top token (0 = top);
        * ``remainder_norm``: ``‖model_logits − row logits‖₂``;
        * ``entropy``: entropy of the row's softmax distribution, in nats.

        A row whose logits hold NaN or ±inf (non-finite weights, or a high-order jet that
        overflowed) gets NaN metrics and a ``RuntimeWarning`` naming it; see :attr:`nonfinite_rows`.
        """
        metrics = {k: np.asarray(v) for k, v in _faithfulness(self.logits, self.model_logits).items()}
        bad = self._nonfinite_rows(metrics)
        model_bad = count_nonfinite(self.model_logits) > 0
        if bad or model_bad:
            where = [f"row(s) {', '.join(bad)}"] if bad else []
            where += ["the model's own logits"] if model_bad else []
            warnings.warn(f"{self.kind} lens (order {self.order}): non-finite logits in {' and '.join(where)}; "
                          "metrics and top tokens computed from them mean nothing (check the weights, or "
                          "lower the order)", RuntimeWarning, stacklevel=2)
        return metrics

    def _nonfinite_rows(self, metrics) -> tuple[str, ...]:
        # The entropy of a row's own softmax is NaN as soon as one of its logits is NaN or ±inf.
        per_row = [np.isfinite(metrics["entropy"][r]).all() for r in range(len(self.rows))]
        return tuple(label for label, ok in zip(self.rows, per_row) if not ok)

    @property
    def nonfinite_rows(self) -> tuple[str, ...]:
        """Labels of the rows whose logits hold NaN or ±inf at some position (empty when all are finite)."""
        return self._nonfinite_rows(self.metrics)

    @functools.cached_property
    def combined_metrics(self) -> dict[str, np.ndarray] | None:
        """Joint lens: the same metrics for the combined logits (``[..., T]``); else ``None``."""
        if self.combined is None:
            return None
        return {k: np.asarray(v) for k, v in _faithfulness(self.combined, self.model_logits).items()}

    # -- tokens -----------------------------------------------------------------------------
    def top(self, n: int = 5, *, which: str = "rows") -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most probable token ids and their probabilities per cell: ``([..., n] int, [..., n] float)``.

        ``which``: ``"rows"`` (``[n_rows, ..., T, n]``), ``"model"`` or ``"combined"`` (``[..., T, n]``).
        """
        logits = {"rows": self.logits, "model": self.model_logits, "combined": self.combined}.get(which)
        if which not in ("rows", "model", "combined") or logits is None:
            raise ValueError(f"which must be 'rows', 'model' or (joint lens) 'combined', got {which!r}")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= logits.shape[-1]:
            raise ValueError(f"n must be an int in 1..{logits.shape[-1]} (the vocabulary size), got {n!r}")
        probs, ids = jax.lax.top_k(jax.nn.softmax(jnp.asarray(logits), axis=-1), int(n))
        return np.asarray(ids), np.asarray(probs)

    def top_k(self, k: int = 5, *, which: str = "rows") -> tuple[np.ndarray, np.ndarray]:
        """Deprecated name of :meth:`top` (one release)."""
        warnings.warn("LensResult.top_k(k) is deprecated: use LensResult.top(n) (the same arrays)",
                      DeprecationWarning, stacklevel=2)
        return self.top(k, which=which)

    def token_strings(self, ids) -> list[str]:
        """One string per id (flattened): the vocabulary's, or ``#id`` without one."""
        flat = np.asarray(ids).reshape(-1)
        if self.vocab is not None:
            return [self.vocab[int(i)] for i in flat]
        return [f"#{int(i)}" for i in flat]

    def top_tokens(self, k: int = 5, *, which: str = "rows") -> list:
        """Top-``k`` token strings per cell, nested like :meth:`top` (``#id`` without a tokenizer)."""
        ids, _ = self.top(k, which=which)
        return _nested(self.token_strings(ids), ids.shape)

    def input_tokens(self) -> list:
        """The input tokens as strings, nested like ``ids``."""
        return _nested(self.token_strings(self.ids), self.ids.shape)

    # -- reports ----------------------------------------------------------------------------
    def table(self, n: int = 3) -> str:
        """A plain-text table: per row, the mean cosine, KL and top-1 agreement over positions, and the
        ``n`` most probable tokens at the last position (of the first sequence in a batch)."""
        m = self.metrics
        last = (0,) * (self.ids.ndim - 1) + (-1,)
        ids, probs = self.top(min(n, self.model_logits.shape[-1]))
        lines = [f"{self.kind} lens, order {self.order} ({self.granularity}, {self.compute_dtype}); tokens "
                 f"{' '.join(map(repr, self.input_tokens() if self.ids.ndim == 1 else self.input_tokens()[0]))}",
                 f"{'row':>12} {'cosine':>7} {'KL':>8} {'top1':>5}  top tokens at the last position"]
        for r, label in enumerate(self.rows):
            cell = ", ".join(f"{t!r} {p:.3f}" for t, p in zip(self.token_strings(ids[r][last]), probs[r][last]))
            lines.append(f"{label:>12} {m['cosine'][r].mean():>7.3f} {m['kl'][r].mean():>8.3f} "
                         f"{m['top1'][r].mean():>5.2f}  {cell}")
        if self.combined is not None:
            c = self.combined_metrics
            lines.append(f"{'combined':>12} {c['cosine'].mean():>7.3f} {c['kl'].mean():>8.3f} {c['top1'].mean():>5.2f}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        """The row × position grid a notebook shows (:func:`jetjax.html.lens_html`)."""
        return lens_html(self)

    def to_dataframe(self):
        """One row per (lens row, position): ``row, row_index, [sequence,] position, token``, every metric,
        and the row's most probable token ``top_token`` with ``top_prob`` (needs pandas)."""
        m = self.metrics
        shape = m["cosine"].shape                     # [R, ..., T]
        index = np.indices(shape).reshape(len(shape), -1)
        ids, probs = self.top(1)
        cols: dict[str, Any] = {"row": [self.rows[r] for r in index[0]],
                                "row_index": [self.row_indices[r] for r in index[0]]}
        if len(shape) == 3:
            cols["sequence"] = index[1]
        cols["position"] = index[-1]
        cols["token"] = self.token_strings(self.ids[tuple(index[1:])])
        cols.update({k: v.reshape(-1) for k, v in m.items()})
        cols["top_token"] = self.token_strings(ids[..., 0].reshape(-1))
        cols["top_prob"] = probs[..., 0].reshape(-1)
        return dataframe(cols)

    # -- files ------------------------------------------------------------------------------
    def to_json(self, path=None, *, top_k: int = 5, arrays: bool = True) -> str:
        """Metrics, top-``k`` tokens and probabilities per cell, weights, and (``arrays=True``, the default)
        every array and the vocabulary, as JSON that :meth:`load` / :meth:`from_json` read back.

        Non-finite numbers are written as ``null`` and the rows holding them are listed under
        ``nonfinite_rows``, so the text is always valid JSON; the arrays (``"arrays"``) are exact bytes
        (:func:`jetjax._internal.results.encode_array`). ``arrays=False`` writes only the readable
        summary (what the ``jetjax lens`` command prints), which cannot be loaded back.

        Writes to ``path`` when given; returns the JSON text either way.
        """
        ids, probs = self.top(top_k)
        model_ids, model_probs = self.top(top_k, which="model")
        out: dict[str, Any] = {
            "kind": self.kind, "order": self.order, "granularity": self.granularity,
            "compute_dtype": self.compute_dtype,
            "rows": list(self.rows), "row_indices": list(self.row_indices),
            "nonfinite_rows": list(self.nonfinite_rows),
            "model_logits_finite": count_nonfinite(self.model_logits) == 0,
            "input_ids": self.ids.tolist(), "input_tokens": self.input_tokens(),
            "metrics": {k: v.tolist() for k, v in self.metrics.items()},
            "top_k": {"ids": ids.tolist(), "tokens": _nested(self.token_strings(ids), ids.shape),
                      "probs": probs.tolist()},
            "model_top_k": {"ids": model_ids.tolist(),
                            "tokens": _nested(self.token_strings(model_ids), model_ids.shape),
                            "probs": model_probs.tolist()},
        }
        if self.combined is not None:
            out["weights"] = np.asarray(self.weights).tolist()
            out["combined_metrics"] = {k: v.tolist() for k, v in self.combined_metrics.items()}
            out["fit_losses"] = None if self.fit_losses is None else self.fit_losses.tolist()
        out = json_safe(out)   # NaN / inf become null: valid JSON
        if arrays:
            out.update({"format": "jetjax.lens_result", "version": 1,
                        "arrays": {k: encode_array(getattr(self, k)) for k in _ARRAYS},
                        "vocab": None if self.vocab is None else list(self.vocab)})
        return write_text(json.dumps(out, allow_nan=False), path)

    @classmethod
    def from_dict(cls, data: dict) -> "LensResult":
        """The result of a :meth:`to_json` document (parsed), written with ``arrays=True``."""
        data = check_format(data, "jetjax.lens_result", "LensResult",
                            required=("kind", "order", "granularity", "rows", "row_indices"))
        if "arrays" not in data:
            raise ValueError("this lens JSON was written without its arrays (to_json(arrays=False), as the jetjax "
                             "lens command prints it): it cannot be loaded back; write it with to_json()")
        a = {k: decode_array(data["arrays"].get(k)) for k in _ARRAYS}
        vocab = data.get("vocab")
        return cls(data["kind"], data["order"], data["granularity"], tuple(data["rows"]), tuple(data["row_indices"]),
                   a["ids"], a["logits"], a["model_logits"], combined=a["combined"], weights=a["weights"],
                   fit_losses=a["fit_losses"], compute_dtype=data.get("compute_dtype", "float32"),
                   vocab=None if vocab is None else tuple(vocab))

    @classmethod
    def from_json(cls, text: str) -> "LensResult":
        """The result :meth:`to_json` wrote, from its text."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def load(cls, path) -> "LensResult":
        """The result :meth:`to_json` wrote to ``path``."""
        return load_json(cls, path)
