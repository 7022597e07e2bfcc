"""Pictures of lens results, saved as PNG: the lens table, metric-vs-layer curves, joint-lens weights.

matplotlib is imported inside each function (``import jetjax`` stays free of it), and figures
are built without pyplot, so nothing here touches global plotting state.
"""

from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np

from jetjax._internal.text import number_cell, text_table  # noqa: F401 (re-exported: jetjax.viz.text_table)
from jetjax.lenses.result import METRICS, LensResult


def _save(fig, path, **kwargs) -> None:
    """``fig.savefig``, without one warning per token whose script the font lacks (Gemma's vocabulary
    holds every script; such a token is drawn as boxes, which the picture's reader sees anyway)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        fig.savefig(path, **kwargs)

__all__ = ["show_token", "number_cell", "text_table", "lens_table", "metric_curves", "joint_weights", "study_curves", "bigram_layers",
           "diff_bars", "loss_curve", "graph_picture"]

_METRIC_TITLES = {
    "cosine": "cosine with model logits",
    "kl": "KL(model ‖ lens), nats",
    "top1": "top-1 agreement with model",
    "rank": "rank of model's top token",
    "remainder_norm": "‖model − lens‖₂ (logits)",
    "entropy": "entropy of lens, nats",
}

_SYMLOG = {"kl": 0.01, "rank": 1.0, "remainder_norm": 1.0}


def show_token(token: str, width: int | None = None) -> str:
    r"""A token made visible (spaces as ␣, newlines as ↵, tabs as ⇥, the empty string as ∅) and, with
    ``width``, cut to that many characters.

    >>> show_token(" the\n"), show_token("Shakespeare", 6)
    ('␣the↵', 'Shake…')
    """
    text = token.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥") or "∅"
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _show(token: str, width: int = 9) -> str:
    """:func:`show_token` for matplotlib text, where ``$`` must stay literal."""
    return show_token(token, width).replace("$", r"\$")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _fit_title(fig, *texts, max_tries: int = 6) -> None:
    """Wrap titles and labels (``ax.title``, ``ax.xaxis.label``, a ``suptitle``) onto more lines until each
    lies inside the figure: matplotlib's layout makes room above and below the axes for them, never
    beside, so a long one on a narrow figure is cut at the edges. A ``"; "`` is the first place to break."""
    import textwrap

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    for _ in range(max_tries):
        fig.canvas.draw()   # the layout first: where a text lies depends on it
        frame, wide = fig.bbox, []
        for t in texts:
            box = t.get_window_extent()
            if box.x0 < frame.x0 - 0.5 or box.x1 > frame.x1 + 0.5:
                wide.append((t, box))
        if not wide:
            return
        for t, box in wide:
            lines = t.get_text().splitlines()
            flat = " ".join(" ".join(lines).split())
            if len(lines) == 1 and "; " in flat:
                t.set_text(flat.replace("; ", ";\n"))
                continue
            longest = max(map(len, lines))
            width = max(10, int(longest * 0.95 * frame.width / box.width))
            t.set_text("\n".join(textwrap.fill(line, width) for line in lines))


def _batch_slice(result: LensResult, batch: int) -> int:
    n_batch = result.ids.shape[0] if result.ids.ndim == 2 else 1
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 0 <= batch < n_batch:
        raise IndexError(f"batch must be an int in 0..{n_batch - 1} (the result holds {n_batch} prompt(s)), "
                         f"got {batch!r}")
    return int(batch)


def _pick(array: np.ndarray, result: LensResult, batch: int, lead: int) -> np.ndarray:
    """``array[:lead..., batch]`` when the result is batched (``lead`` leading axes kept)."""
    return array[(slice(None),) * lead + (batch,)] if result.ids.ndim == 2 else array


def lens_table(result: LensResult, path, *, batch: int = 0, positions: slice | None = None,
               title: str | None = None, dpi: int = 110) -> str:
    """The lens as a table: rows = lens rows, columns = input tokens, cell = top predicted token.

    Each cell shows the row's most likely next token at that position, its background coloured
    by that token's probability; tokens in bold agree with the model's own top token. The bottom
    row(s) show the model itself (and, for a joint lens, the combined lens).

    Args:
      result: a :class:`~jetjax.lenses.LensResult`.
      path: where to write the PNG.
      batch: which prompt of a batched result.
      positions: a slice of token positions to draw (default: all).
      title: the figure title (default: what lens it is).

    Returns the path written.

    Example:
      >>> import os, tempfile
      >>> import jetjax.lenses.lens as lenses, jetjax.viz as viz
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> lens = lenses.logit_lens(model, [1, 2, 3])
      >>> out = viz.lens_table(lens, os.path.join(tempfile.mkdtemp(), "lens.png"))
      >>> os.path.getsize(out) > 0
      True
    """
    from matplotlib import colormaps

    b = _batch_slice(result, batch)
    cols = slice(None) if positions is None else positions
    ids, probs = result.top(1)
    rows = [(label, _pick(ids[r, ..., 0], result, b, 0)[cols], _pick(probs[r, ..., 0], result, b, 0)[cols])
            for r, label in enumerate(result.rows)]
    model_ids, model_probs = (_pick(a[..., 0], result, b, 0)[cols] for a in result.top(1, which="model"))
    extra = [("model", model_ids, model_probs)]
    if result.combined is not None:
        c_ids, c_probs = (_pick(a[..., 0], result, b, 0)[cols] for a in result.top(1, which="combined"))
        extra.insert(0, ("combined", c_ids, c_probs))
    table = rows + extra
    inputs = [_show(t) for t in result.token_strings(_pick(result.ids, result, b, 0)[cols])]
    n_rows, n_cols = len(table), len(inputs)

    fig = _figure(1.6 + 0.78 * n_cols, 1.5 + 0.34 * n_rows)
    ax = fig.add_subplot()
    grid = np.stack([p for _, _, p in table])
    cmap = colormaps["YlGnBu"]
    image = ax.imshow(grid, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
    for i, (_, tok_ids, tok_probs) in enumerate(table):
        texts = result.token_strings(tok_ids)
        for j in range(n_cols):
            agrees = tok_ids[j] == model_ids[j]
            ax.text(j, i, _show(texts[j]), ha="center", va="center", fontsize=8,
                    fontweight="bold" if agrees else "normal",
                    color="white" if tok_probs[j] > 0.55 else "black")
    ax.axhline(len(rows) - 0.5, color="black", linewidth=1.5)  # the lens above, the model below
    ax.set_yticks(range(n_rows), [label for label, _, _ in table])
    ax.set_xticks(range(n_cols), inputs, rotation=45 if max(map(len, inputs)) > 4 else 0, ha="right"
                  if max(map(len, inputs)) > 4 else "center", fontsize=8)
    ax.set_xlabel("input token (the cell predicts the token after it)")
    ax.tick_params(length=0)
    kind = "logit lens" if result.kind == "logit" else f"{result.kind} jet lens, order {result.order}"
    fig.colorbar(image, ax=ax, label="probability", shrink=0.9, pad=0.01)
    ax.set_title(title or f"{kind} ({result.granularity}): top token per cell; bold = model's top token")
    _fit_title(fig, ax.title, ax.xaxis.label)
    _save(fig, path, dpi=dpi)
    return str(path)


def metric_curves(results: Sequence[LensResult] | Mapping[str, LensResult], path, *,
                  metrics: Sequence[str] = ("cosine", "kl", "top1", "rank"), dpi: int = 110) -> str:
    """Metrics against layer for several lenses (e.g. orders 0, 1, 2), one panel per metric.

    Lines are means over prompts and positions; the band spans the 25th to 75th percentile.
    All results must have the same rows.

    Args:
      results: lens results, or ``{legend label: result}`` (default labels: kind and order).
      path: where to write the PNG.
      metrics: names from :data:`jetjax.lenses.METRICS`.

    Example:
      >>> import os, tempfile
      >>> import jetjax.lenses.lens as lenses, jetjax.viz as viz
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> runs = [lenses.iterative_jet_lens(model, [1, 2, 3], order=k) for k in (0, 1)]
      >>> out = viz.metric_curves(runs, os.path.join(tempfile.mkdtemp(), "curves.png"))
      >>> os.path.getsize(out) > 0
      True
    """
    if isinstance(results, Mapping):
        named = list(results.items())
    else:
        named = [(f"{r.kind} k={r.order}" if r.kind != "logit" else "logit lens (k=0)", r) for r in results]
    if not named:
        raise ValueError("metric_curves needs at least one lens result")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    rows = named[0][1].rows
    for label, r in named:
        if r.rows != rows:
            raise ValueError(f"all results need the same rows to share an x axis: {label!r} has {r.rows}, "
                             f"the first has {rows}")

    n_cols = len(metrics) if len(metrics) <= 4 else (len(metrics) + 1) // 2
    n_grid_rows = -(-len(metrics) // n_cols)
    fig = _figure(0.6 + 3.6 * n_cols, 0.4 + 3.0 * n_grid_rows)
    axes = fig.subplots(n_grid_rows, n_cols, squeeze=False).ravel()
    for unused in axes[len(metrics):]:
        unused.set_visible(False)
    x = np.arange(len(rows))
    for ax, metric in zip(axes, metrics):
        for label, r in named:
            values = r.metrics[metric].reshape(len(rows), -1).astype(float)
            line, = ax.plot(x, values.mean(1), marker="o", markersize=3, label=label)
            low, high = np.percentile(values, [25, 75], axis=1)
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        if metric in _SYMLOG:  # these span orders of magnitude across layers
            ax.set_yscale("symlog", linthresh=_SYMLOG[metric])
        ax.set_title(_METRIC_TITLES[metric], fontsize=10)
        step = max(1, len(rows) // 12)
        ax.set_xticks(x[::step], rows[::step], rotation=45 if len(rows) > 8 else 0, fontsize=8)
        ax.set_xlabel("lens row (layer)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    _save(fig, path, dpi=dpi)
    return str(path)


def joint_weights(result: LensResult, path, *, batch: int = 0, dpi: int = 110) -> str:
    """The joint lens's weights per centre and token, and (when fitted) the fitting loss.

    Example:
      >>> import os, tempfile
      >>> import jetjax.lenses.lens as lenses, jetjax.viz as viz
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> lens = lenses.joint_jet_lens(model, [1, 2, 3], fit_steps=10)
      >>> out = viz.joint_weights(lens, os.path.join(tempfile.mkdtemp(), "weights.png"))
      >>> os.path.getsize(out) > 0
      True
    """
    if result.kind != "joint":
        raise ValueError(f"joint_weights draws a joint jet lens's weights; this result is a {result.kind} lens")
    b = _batch_slice(result, batch)
    weights = _pick(np.asarray(result.weights), result, b, 1)
    inputs = [_show(t) for t in result.token_strings(_pick(result.ids, result, b, 0))]
    n_rows, n_cols = weights.shape
    fitted = result.fit_losses is not None

    fig = _figure(2.0 + 0.6 * n_cols + (3.2 if fitted else 0.0), 1.4 + 0.32 * n_rows)
    grid = fig.add_gridspec(1, 2, width_ratios=[max(n_cols, 2), 5]) if fitted else fig.add_gridspec(1, 1)
    ax = fig.add_subplot(grid[0])
    image = ax.imshow(weights, cmap="magma_r", vmin=0.0, vmax=max(float(weights.max()), 1e-6),
                      aspect="auto", interpolation="nearest")
    if n_cols * n_rows <= 400:
        for i in range(n_rows):
            for j in range(n_cols):
                ax.text(j, i, f"{weights[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if weights[i, j] > 0.6 * weights.max() else "black")
    ax.set_yticks(range(n_rows), result.rows)
    ax.set_xticks(range(n_cols), inputs, rotation=45, ha="right", fontsize=8)
    ax.set_title(f"joint jet lens weights (order {result.order}, {'fitted' if fitted else 'given'})")
    fig.colorbar(image, ax=ax, label="weight", shrink=0.9, pad=0.01)
    if fitted:
        loss_ax = fig.add_subplot(grid[1])
        loss_ax.plot(np.arange(len(result.fit_losses)), result.fit_losses)
        loss_ax.set_yscale("log")
        loss_ax.set_xlabel("Adam step")
        loss_ax.set_title("mean squared remainder norm", fontsize=10)
        loss_ax.grid(alpha=0.3)
    _save(fig, path, dpi=dpi)
    return str(path)


def study_curves(study, path, *, dpi: int = 110) -> str:
    """A :class:`~jetjax.studies.findings.LensStudy` as curves against layer: cosine, top-1 and KL per order.

    The middle streams (:func:`~jetjax.studies.findings.middle_rows`) are shaded.

    Example:
      >>> import os, tempfile
      >>> import jetjax.viz as viz
      >>> from jetjax.studies.findings import lens_study
      >>> from jetjax.testing import tiny_model
      >>> model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
      >>> study = lens_study(model, [[1, 2, 3]], orders=(0, 1))
      >>> os.path.getsize(viz.study_curves(study, os.path.join(tempfile.mkdtemp(), "c.png"))) > 0
      True
    """
    from jetjax.studies.findings import middle_rows

    fig = _figure(12.0, 3.6)
    axes = fig.subplots(1, 3)
    x = np.arange(len(study.rows))
    mid = middle_rows(len(study.rows) - 1)
    for ax, metric in zip(axes, ("cosine", "top1", "kl")):
        for i, k in enumerate(study.orders):
            label = "logit lens (k=0)" if k == 0 else f"jet lens k={k}"
            ax.plot(x, study.metrics[metric][i], marker="o", markersize=3, label=label)
        ax.axvspan(mid.start - 0.5, mid.stop - 0.5, color="grey", alpha=0.12, linewidth=0)
        if metric == "kl":
            ax.set_yscale("symlog", linthresh=0.1)
        ax.set_title(_METRIC_TITLES[metric], fontsize=10)
        step = max(1, len(x) // 10)
        ax.set_xticks(x[::step], study.rows[::step], fontsize=8)
        ax.set_xlabel("stream h_l (shaded: the middle layers)", fontsize=8)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"lens faithfulness per stream: mean over {study.n_prompts} prompts, {study.n_positions} positions",
                 fontsize=10)
    _save(fig, path, dpi=dpi)
    return str(path)


def bigram_layers(study, path, *, dpi: int = 110) -> str:
    """Which MLPs carry bigrams: per layer ``l``, the ``emb>mlp{l}>dec`` path's corpus top-1 hit rate,
    its copy share and its agreement with the model's own one-token prediction, from a
    :class:`~jetjax.studies.findings.BigramStudy`, with the references as horizontal lines."""
    layers = study.mlp_layers()
    x = np.arange(len(layers))
    fig = _figure(11.0, 3.8)
    left, right = fig.subplots(1, 2)
    left.bar(x, [r.agreement.top1_hit_rate for r in layers], color="tab:blue", label="emb>mlp{l}>dec")
    refs = [(n, r.agreement.top1_hit_rate) for n, r in study.results.items() if r.kind in ("model", "mean")]
    refs.append(("corpus unigram", study.unigram["top1_hit_rate"]))
    for (name, value), color in zip(refs, ("tab:orange", "tab:green", "tab:red", "tab:purple", "black", "tab:brown")):
        left.axhline(value, linestyle="--", color=color, linewidth=1.2, label=f"{name}: {value:.3f}")
    left.set_title(f"top-1 is a most frequent successor ({study.n_contexts} most frequent contexts)", fontsize=9)
    left.set_xlabel("MLP layer l")
    left.legend(fontsize=7)
    right.plot(x, [r.copy_share for r in layers], marker="o", markersize=3, label="top-1 = the context token (copy)")
    right.plot(x, [r.model_top1 for r in layers], marker="o", markersize=3, label="top-1 = the model's on [z]")
    right.set_title("emb>mlp{l}>dec: what the top-1 is", fontsize=9)
    right.set_xlabel("MLP layer l")
    right.set_ylim(0, 1)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    _save(fig, path, dpi=dpi)
    return str(path)


def diff_bars(diff, path, *, n: int = 15, title: str = "", dpi: int = 110) -> str:
    """The ``n`` jet bigrams that gained and lost most probability from table ``a`` to ``b``, as two
    horizontal bar charts (from :func:`jetjax.ngrams.diff_tables`; bars are ``p_b − p_a``)."""
    fig = _figure(11.0, 0.32 * n + 1.4)
    axes = fig.subplots(1, 2)
    for ax, records, color, name in ((axes[0], diff.gained_prob[:n], "tab:green", "gained"),
                                     (axes[1], diff.lost_prob[:n], "tab:red", "lost")):
        labels = [f"{_show(''.join(r['context']), 14)} → {_show(r['next'], 14)}" for r in records]
        y = np.arange(len(records))[::-1]
        ax.barh(y, [r["delta"] for r in records], color=color)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_xlabel("Δ probability (b − a)")
        ax.set_title(f"most {name}", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path, dpi=dpi)
    return str(path)


def loss_curve(card: dict, path) -> str:
    """The card's training loss per step (and its 10-step mean) with the held-out loss before and
    after as horizontal lines, as a PNG."""
    loss = np.asarray(card["train_loss"])
    fig = _figure(6.5, 3.2)
    ax = fig.subplots()
    ax.plot(loss, color="tab:blue", alpha=0.35, linewidth=1, label="training loss (one batch)")
    if len(loss) >= 10:
        ax.plot(np.arange(9, len(loss)), np.convolve(loss, np.ones(10) / 10, mode="valid"), color="tab:blue",
                label="10-step mean")
    for key, color in (("held_out_loss_before", "tab:red"), ("held_out_loss_after", "tab:green")):
        ax.axhline(card[key], linestyle="--", color=color, label=f"{key.replace('_', ' ')}: {card[key]:.3f}")
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path, dpi=110)
    return str(path)


def graph_picture(graph, path, *, highlight: Sequence[str] = (), n_edges: int = 60, dpi: int = 110) -> str:
    """An attribution graph (:class:`~jetjax.AttributionGraph`) as a picture: positions as columns (token
    strings below), rows ``emb``, then ``attn{l}`` / ``mlp{l}`` per layer upwards, the logit on top. A
    node's area is its ``|TE|`` and its colour the sign (blue +, red −); the nodes of ``highlight`` (a
    circuit) are ringed in black and the ``n_edges`` strongest edges among them (and into the logit) are
    drawn, width ``|w|``, colour its sign. Heads share their component's row, side by side; constants
    are left out (their weight is part of their component's TE).

    Example:
      >>> import jetjax as jj, tempfile, os
      >>> from jetjax.testing import tiny_model
      >>> g = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
      >>> p = graph_picture(g, os.path.join(tempfile.mkdtemp(), "g.png"), highlight=["mlp1@3", "attn1@3"])
      >>> os.path.getsize(p) > 10_000
      True
    """
    from jetjax.paths.labels import parse_node

    nodes = [parse_node(n) for n in graph.nodes]
    layers = 1 + max((n.layer for n in nodes if n.layer is not None), default=0)
    t = graph.position + 1
    heads = 1 + max((n.head for n in nodes if n.head is not None), default=0)

    def xy(n):
        if n.kind == "emb":
            return float(n.position), 0.0
        x = float(n.position)
        if n.head is not None:
            x += (n.head - (heads - 1) / 2) * 0.7 / max(heads, 1)
        return x, 1.0 + 2 * n.layer + (n.kind == "mlp")

    shown = [i for i, n in enumerate(nodes) if not n.constant]
    te = np.abs(graph.te[shown])
    size = 10 + 240 * te / te.max() if te.max() > 0 else np.full(len(shown), 10.0)
    keep = set(highlight)
    fig = _figure(max(7.0, 1.3 * t + 2.5), max(5.0, 0.13 * (2 * layers + 2) + 2))
    ax = fig.subplots()
    top = 1.0 + 2 * layers                         # the row after mlp{L-1}
    # edges among the highlighted nodes (and into the logit), strongest first
    index = graph.index
    pairs = [(abs(graph.edges[index[b], index[a]]), a, b) for a in keep for b in keep
             if a in index and b in index and graph.edges[index[b], index[a]] != 0]
    pairs += [(abs(graph.de[index[a]]), a, None) for a in keep if a in index and graph.de[index[a]] != 0]
    pairs.sort(key=lambda p: -p[0])
    wmax = pairs[0][0] if pairs else 1.0
    for w, a, b in pairs[:n_edges]:
        xa, ya = xy(parse_node(a))
        xb, yb = (float(graph.position), top) if b is None else xy(parse_node(b))
        weight = graph.de[index[a]] if b is None else graph.edges[index[b], index[a]]
        ax.plot([xa, xb], [ya, yb], color="tab:blue" if weight > 0 else "tab:red", alpha=0.6,
                linewidth=0.4 + 3.0 * w / wmax, zorder=1)
    pts = np.array([xy(nodes[i]) for i in shown])
    colors = np.array(["tab:blue" if graph.te[i] > 0 else "tab:red" for i in shown])
    ringed = np.array([graph.nodes[i] in keep for i in shown], bool)
    ax.scatter(pts[~ringed, 0], pts[~ringed, 1], s=size[~ringed], c=colors[~ringed], alpha=0.3, linewidths=0,
               zorder=2)
    if ringed.any():
        ax.scatter(pts[ringed, 0], pts[ringed, 1], s=size[ringed] + 30, c=colors[ringed], alpha=0.85,
                   edgecolors="black", linewidths=1.8, zorder=3)
        for (x, y), i in zip(pts[ringed], np.asarray(shown)[ringed]):
            ax.annotate(graph.nodes[i].split("@")[0], (x, y), xytext=(6, 3), textcoords="offset points",
                        fontsize=7, zorder=4)
    ax.scatter([graph.position], [top], s=120, marker="D", c="gold", edgecolors="black", zorder=3)
    ax.set_xticks(range(t), [_show(tok, 10) for tok in graph.tokens], rotation=45, ha="right", fontsize=8)
    rows = ["emb"] + [f"{k}{l}" for l in range(layers) for k in ("attn", "mlp")] + ["logit"]
    step = max(1, len(rows) // 64)
    ax.set_yticks(range(0, len(rows), step), rows[::step], fontsize=6 if len(rows) > 30 else 8)
    ax.set_xlim(-0.6, t - 0.4)
    foil = f" − logit({_show(graph.foil_str or str(graph.foil), 12)})" if graph.foil is not None else ""
    ax.set_title(f"logit({_show(graph.target_str or str(graph.target), 12)}){foil} = {graph.total:+.3f}: "
                 f"node area |TE|, blue +, red −; ringed: {len(keep)} circuit nodes", fontsize=9)
    ax.grid(alpha=0.2)
    _save(fig, path, dpi=dpi)
    return str(path)
