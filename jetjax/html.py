"""HTML views of jetjax results, for notebooks: what each result type's ``_repr_html_`` returns.

Jupyter, VS Code and Colab show an object through its ``_repr_html_``. Each view here is one
self-contained HTML fragment: no external URL and no script of its own (the attribution graph's page,
which has one, runs inside a sandboxed ``<iframe srcdoc>``), every string taken from a result
HTML-escaped, the same markup for the same result, and a bounded size (what was cut is said under the
view):

* :func:`lens_html` (:class:`~jetjax.LensResult`): the picture logit-lens and tuned-lens users know, a
  grid of rows (``h0`` at the bottom, the model's own output on top) by input positions. Each cell is
  coloured by the probability the row gives the *final top token* (the model's most probable next
  token at that position), shows the row's own top token (bold where it is the final top token), and
  holds its values in its hover title.
* :func:`ngram_html` (:class:`~jetjax.ngrams.NGramTable`): the table's most probable entries.
* :func:`attribution_html` (:class:`~jetjax.PathAttribution`) and :func:`top_paths_html`
  (:class:`~jetjax.TopPaths`): the largest paths, then what the other paths add up to, the remainder
  split into its parts, and the model's own number: the rows above the total add up to it.
* :func:`graph_inline_html` (:class:`~jetjax.AttributionGraph`): its interactive page
  (:func:`jetjax.paths.graph_view.graph_html`) in an iframe, or, past a size, that of ``graph.prune()``.

Token strings are shown with their whitespace made visible, as the graph page does (:func:`visible`):
``·`` a space, ``⏎`` a newline, ``⇥`` a tab, ``∅`` the empty string, and any other character that does
not print as its escape (``\\r``, ``\\x00``, ``\\u200b``). Hover titles quote tokens
as Python writes them (``' the'``, ``'\\n'``), which is unambiguous.

Example:
  >>> visible(" the\\n")
  '·the⏎'
  >>> print(visible("\\u200b<b>"))
  \\u200b<b>
"""

from __future__ import annotations

import html
import math

import numpy as np

__all__ = ["visible", "lens_html", "ngram_html", "attribution_html", "top_paths_html", "graph_inline_html",
           "MAX_LENS_ROWS", "MAX_LENS_POSITIONS", "TABLE_ROWS", "PATH_ROWS", "MAX_GRAPH_EDGES"]

MAX_LENS_ROWS, MAX_LENS_POSITIONS = 48, 32   # a lens grid shows at most this many rows and (the last) positions
TABLE_ROWS = 20                              # n-gram entries shown
PATH_ROWS = 12                               # paths listed by name (the others are summed in one row)
MAX_GRAPH_EDGES = 40_000                     # above this, the inline graph is graph.prune()'s (~35 bytes an edge)
GRAPH_HEIGHT = (320, 760)                    # the graph iframe's height in pixels: its least and most
# In a frame shorter than a browser window the page's scrolling panes must leave room for its header.
_GRAPH_FIT = "<style>.scroll,#info{max-height:calc(100vh - 130px)}</style></head>"

_GLYPHS = {" ": "\u00b7", "\n": "\u23ce", "\t": "\u21e5"}
_BLUES = ((0.0, (247, 251, 255)), (0.25, (198, 219, 239)), (0.5, (107, 174, 214)), (0.75, (33, 113, 181)),
          (1.0, (8, 48, 107)))
_POS, _NEG = "#2b6cb0", "#c0392b"            # the graph page's signs: blue positive, red negative

_STYLE = """<style>
.jj-view{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;font-size:12px;color:#222;background:#fff;
padding:6px 8px;display:inline-block;max-width:100%;overflow-x:auto;box-sizing:border-box}
.jj-view .jj-head{font-weight:600;margin:0 0 4px}
.jj-view .jj-sub,.jj-view .jj-note{color:#555;margin:2px 0}
.jj-view .jj-warn{color:#8a4b00;background:#fff4e0;border-left:3px solid #e69a28;padding:2px 6px;margin:4px 0}
.jj-view table{border-collapse:collapse;margin:4px 0}
.jj-view th,.jj-view td{padding:2px 6px;text-align:left;vertical-align:middle;border:0;background:none;color:#222}
.jj-view .jj-num{text-align:right;font-family:ui-monospace,Menlo,Consolas,monospace;white-space:nowrap}
.jj-view code,.jj-view .jj-tok{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre}
.jj-view .jj-tok{background:#eef1f5;border-radius:3px;padding:0 3px}
.jj-view table.jj-grid td{width:56px;max-width:56px;overflow:hidden;text-align:center;font-size:11px;
font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;border:1px solid #fff;padding:3px 2px}
.jj-view table.jj-grid td.jj-hit{font-weight:700}
.jj-view table.jj-grid th{font-weight:400;color:#555;text-align:right;white-space:nowrap}
.jj-view table.jj-grid tr.jj-input th,.jj-view table.jj-grid tr.jj-pos th{text-align:center;max-width:60px;
overflow:hidden}
.jj-view table.jj-grid tr.jj-input th{font-family:ui-monospace,Menlo,Consolas,monospace;white-space:pre;
color:#222;border-top:1px solid #999}
.jj-view table.jj-grid tr.jj-pos th{font-size:10px;color:#999}
.jj-view table.jj-grid tr.jj-model td{border-bottom:2px solid #999}
.jj-view tr.jj-sum td{border-top:1px solid #bbb}
.jj-view tr.jj-part td{color:#555}
.jj-view tr.jj-in td:first-child{padding-left:22px}
.jj-view tr.jj-total td{border-top:2px solid #444;font-weight:600}
.jj-view .jj-ws{opacity:.55}
.jj-view .jj-key{display:inline-block;width:14px;height:10px;vertical-align:middle;margin-left:1px}
</style>"""


# -- strings and colours ------------------------------------------------------------------------------

def _pieces(token: str) -> list[tuple[str, bool]]:
    """``(text, stands in)`` per character: its glyph or escape (``True``), or the character itself."""
    pieces = [(_GLYPHS[ch], True) if ch in _GLYPHS else (ch, False) if ch.isprintable() else
              (ch.encode("unicode_escape").decode("ascii"), True) for ch in token]
    return pieces or [("\u2205", True)]


def visible(token: str) -> str:
    """``token`` with its whitespace and unprintable characters made visible (module docstring); not escaped."""
    return "".join(text for text, _ in _pieces(token))


def _tok(token: str, limit: int | None = None) -> str:
    """``token`` made visible, cut to ``limit`` characters with an ellipsis, HTML-escaped; the glyphs and
    escapes that stand in for characters are greyed, so that a literal ``·`` or ``\\n`` reads apart."""
    pieces = _pieces(token)
    if limit is not None and sum(len(text) for text, _ in pieces) > limit:
        kept, room = [], limit - 1
        for text, glyph in pieces:
            if room <= 0:
                break
            kept.append((text[:room], glyph))
            room -= len(text)
        pieces = kept + [("\u2026", False)]
    return "".join(f'<span class="jj-ws">{html.escape(text)}</span>' if glyph else html.escape(text)
                   for text, glyph in pieces)


def _attr(*lines: str) -> str:
    """A ``title`` attribute's escaped value, one line per argument (``&#10;`` breaks the lines)."""
    return html.escape("\n".join(lines), quote=True).replace("\n", "&#10;")


def _blue(p: float) -> str:
    """The colour of probability ``p`` on a white-to-navy scale; grey for NaN."""
    if not math.isfinite(p):
        return "#bbbbbb"
    p = min(max(p, 0.0), 1.0)
    for (p0, c0), (p1, c1) in zip(_BLUES, _BLUES[1:]):
        if p <= p1:
            f = (p - p0) / (p1 - p0)
            return "#" + "".join(f"{round(a + f * (b - a)):02x}" for a, b in zip(c0, c1))
    return "#08306b"


def _num(x: float, fmt: str = "+.4f") -> str:
    """A number as text (``nan``/``inf`` as Python writes them), in a cell whose title holds its exact value."""
    return f'<td class="jj-num" title="{html.escape(repr(float(x)))}">{format(float(x), fmt)}</td>'


def _view(body: list[str], *, block: bool = False) -> str:
    style = ' style="display:block;overflow:visible"' if block else ""
    return f'{_STYLE}<div class="jj-view"{style}>' + "".join(body) + "</div>"


def _note(text: str, cls: str = "jj-note") -> str:
    return f'<div class="{cls}">{html.escape(text)}</div>'


def _legend() -> str:
    keys = "".join(f'<span class="jj-key" style="background:{_blue(p)}"></span>' for p in np.linspace(0, 1, 9))
    return f'<div class="jj-sub">p = 0 {keys} 1</div>'


# -- lens results ---------------------------------------------------------------------------------------

def _probs(logits) -> np.ndarray:
    """Softmax over the last axis, in float64."""
    x = np.asarray(logits, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        x = np.exp(x - x.max(axis=-1, keepdims=True))
        return x / x.sum(axis=-1, keepdims=True)


def _picked(n: int, most: int, *, last: bool) -> np.ndarray:
    """Indices of at most ``most`` of ``n`` items: the last ``most`` (``last``) or evenly spread, both ends kept."""
    if n <= most:
        return np.arange(n)
    if last:
        return np.arange(n - most, n)
    return np.unique(np.round(np.linspace(0, n - 1, most)).astype(int))


def lens_html(result, *, max_rows: int = MAX_LENS_ROWS, max_positions: int = MAX_LENS_POSITIONS) -> str:
    """A :class:`~jetjax.LensResult` as a row × position grid (module docstring), of the first sequence of a
    batch, its last ``max_positions`` positions and at most ``max_rows`` rows (evenly spread, first and last
    kept); the cells' hover titles give the row and position, ``p`` of the final top token, and the cell's
    own top token with its probability."""
    ids = np.asarray(result.ids)
    seq = (0,) * (ids.ndim - 1)
    n_pos, n_rows = ids.shape[-1], len(result.rows)
    positions = _picked(n_pos, max_positions, last=True)
    rows = _picked(n_rows, max_rows, last=False)
    inputs = result.token_strings(ids[seq][positions])
    model = _probs(np.asarray(result.model_logits[seq])[positions])            # [t, V]
    final = np.argmax(np.nan_to_num(model, nan=-1.0), axis=-1)
    final_str = result.token_strings(final)
    grid = [("model", "the model's output", model)]
    if result.combined is not None:
        grid.append(("combined", "the joint lens's weighted sum", _probs(np.asarray(result.combined[seq])[positions])))
    grid += [(result.rows[r], f"row {result.rows[r]}", _probs(np.asarray(result.logits[(int(r),) + seq])[positions]))
             for r in rows[::-1]]
    table = ['<table class="jj-grid">', '<tr class="jj-pos"><th></th>']
    table += [f"<th>{int(t)}</th>" for t in positions]
    table.append("</tr>")
    for r, (label, what, probs) in enumerate(grid):
        top = np.argmax(np.nan_to_num(probs, nan=-1.0), axis=-1)
        top_str = result.token_strings(top)
        cls = ' class="jj-model"' if label == "model" else ""
        table.append(f'<tr{cls}><th title="{_attr(what)}">{html.escape(label)}</th>')
        for c, t in enumerate(positions):
            p, p_top = float(probs[c, final[c]]), float(probs[c, top[c]])
            title = _attr(f"{label} \u00b7 position {int(t)} \u00b7 input {inputs[c]!r}",
                          f"p({final_str[c]!r}) = {p:.4g}  (the final top token)",
                          f"top token {top_str[c]!r}: p = {p_top:.4g}")
            hit = ' class="jj-hit"' if r and top[c] == final[c] and math.isfinite(p) else ""
            ink = "#fff" if p > 0.5 else "#111"
            table.append(f'<td{hit} style="background:{_blue(p)};color:{ink}" title="{title}">'
                         f"{_tok(top_str[c], 7) if math.isfinite(p) else 'n/a'}</td>")
        table.append("</tr>")
    table.append('<tr class="jj-input"><th>input</th>')
    table += [f'<th title="{_attr(f"position {int(t)}: id {int(i)}, {s!r}")}">{_tok(s, 8)}</th>'
              for t, i, s in zip(positions, ids[seq][positions], inputs)]
    table.append("</tr></table>")
    head = f"{result.kind} lens, order {result.order} ({result.granularity}, {result.compute_dtype})"
    body = [f'<div class="jj-head">{html.escape(head)}</div>',
            _note("colour: the probability each row gives the final top token (the model's most probable next "
                  "token at that position); text: the row's own top token, bold where it is the final one. "
                  "Hover a cell for its values. \u00b7 space, \u23ce newline, \u21e5 tab."),
            _legend(), "".join(table)]
    cut = []
    if ids.ndim > 1:
        cut.append(f"sequence 0 of {int(np.prod(ids.shape[:-1]))} shown")
    if len(positions) < n_pos:
        cut.append(f"the last {len(positions)} of {n_pos} positions shown (0..{n_pos - len(positions) - 1} cut)")
    if len(rows) < n_rows:
        cut.append(f"{len(rows)} of {n_rows} rows shown, evenly spread")
    if cut:
        body.append(_note("; ".join(cut) + ". result.table() and result.to_dataframe() hold everything."))
    return _view(body)


# -- n-gram tables --------------------------------------------------------------------------------------

def ngram_html(table, n: int = TABLE_ROWS) -> str:
    """An :class:`~jetjax.ngrams.NGramTable` as its ``n`` most probable ``context → next`` entries, token
    strings made visible; each token's hover title gives its id and string, each probability's its exact value."""
    def token(i) -> str:
        s = table.tokens[int(i)] if table.tokens is not None else f"#{int(i)}"
        return f'<span class="jj-tok" title="{_attr(f"id {int(i)}: {s!r}")}">{_tok(s, 24)}</span>'

    stored = len(table.global_probs)
    shown = min(int(n), stored)
    head = (f"{len(table)} contexts, n={table.n}, top {table.top_k} next tokens per context (paths "
            f"{table.meta.get('paths')}, order {table.meta.get('order')})")
    rows = ['<table><tr><th class="jj-num">#</th><th class="jj-num">prob</th><th>context</th><th></th>'
            "<th>next</th></tr>"]
    for rank, (pair, p) in enumerate(zip(table.global_pairs[:shown], table.global_probs[:shown]), 1):
        rows.append(f'<tr><td class="jj-num">{rank}</td>{_num(p, ".4f")}<td>{" ".join(token(t) for t in pair[:-1])}'
                    f"</td><td>\u2192</td><td>{token(pair[-1])}</td></tr>")
    rows.append("</table>")
    body = [f'<div class="jj-head">{html.escape(head)}</div>', "".join(rows)]
    note = f"the {shown} most probable of the {stored} entries the table keeps over all contexts"
    if table.meta.get("filtered"):
        note += " (a filtered table)"
    body.append(_note(note + "; table.lookup(context) lists one context's next tokens. "
                      "\u00b7 space, \u23ce newline, \u21e5 tab."))
    return _view(body)


# -- path attributions ----------------------------------------------------------------------------------

def _bar(x: float, scale: float) -> str:
    """A two-sided bar: negative values grow left of the centre (red), positive ones right of it (blue)."""
    w = 0 if not (math.isfinite(x) and scale > 0) else round(min(abs(x) / scale, 1.0) * 70)
    neg = f'<span style="display:inline-block;height:9px;width:{w}px;background:{_NEG}"></span>' if x < 0 else ""
    pos = f'<span style="display:inline-block;height:9px;width:{w}px;background:{_POS}"></span>' if x > 0 else ""
    return (f'<td style="white-space:nowrap;padding:0"><span style="display:inline-block;width:70px;'
            f'text-align:right">{neg}</span><span style="display:inline-block;width:1px;height:13px;'
            f'background:#888;vertical-align:middle"></span><span style="display:inline-block;width:70px">{pos}'
            "</span></td>")


def _path_rows(paths, parts, total: float) -> str:
    """The listed paths, then ``parts`` (``(name, value, class)``: sums, the remainder and its pieces), then
    the total; bars share one scale."""
    values = [s for _, s in paths] + [v for _, v, _ in parts] + [total]
    scale = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    out = ['<table><tr><th>path</th><th class="jj-num">score</th><th></th></tr>']
    out += [f"<tr><td><code>{html.escape(label)}</code></td>{_num(s)}{_bar(s, scale)}</tr>" for label, s in paths]
    out += [f'<tr class="{cls}"><td>{html.escape(name)}</td>{_num(v)}{_bar(v, scale)}</tr>' for name, v, cls in parts]
    out.append(f'<tr class="jj-total"><td>the model\'s number (total)</td>{_num(total)}{_bar(total, scale)}</tr>'
               "</table>")
    return "".join(out)


def _visible_rounding(residual: float, total: float) -> bool:
    """Whether a search's rounding residual is worth a row (as its text table decides)."""
    return not abs(residual) <= 1e-4 * max(1.0, abs(total))


def _what(att) -> str:
    def logit(token, text) -> str:
        return f"logit({text!r})" if text is not None else f"logit({token})"

    foil = f" \u2212 {logit(att.foil, att.foil_str)}" if att.foil is not None else ""
    return f"{logit(att.target, att.target_str)}{foil} at position {att.position}"


def attribution_html(att, n: int = PATH_ROWS) -> str:
    """A :class:`~jetjax.PathAttribution` as a table: the ``n`` paths of largest ``|score|``, the sum of the
    others, their sum over all paths, the remainder (for ``method="search"`` split into the scored paths it
    did not list and the unexplored ones), and the model's number; then the measures and any warning, and
    the components of largest ``|Σ|``."""
    scores = np.asarray(att.scores, np.float64)
    order = np.argsort(-np.abs(scores), kind="stable")[:max(int(n), 0)]
    paths = [(att.labels[i], float(scores[i])) for i in order]
    parts = []
    if len(order) < len(scores):
        parts.append((f"the other {len(scores) - len(order)} paths", float(scores.sum() - scores[order].sum()),
                      "jj-part"))
    parts.append((f"\u03a3 all {len(scores)} {'listed ' if att.search is not None else ''}paths",
                  float(scores.sum()), "jj-sum"))
    parts.append(("remainder (total \u2212 \u03a3 paths)", float(att.remainder), "jj-sum"))
    if att.search is not None:       # the search's remainder, split: what it scored but did not list, the rest
        parts.append((f"of which: scored, not listed ({att.search.n_scored - len(scores):,} paths)",
                      float(att.unlisted), "jj-part jj-in"))
        parts.append(("of which: never scored (exact sum)", float(att.unexplored), "jj-part jj-in"))
        if _visible_rounding(att.search.residual, att.total):
            parts.append(("of which: float rounding", float(att.search.residual), "jj-part jj-in"))
    head = f"{_what(att)}: {att.semantics} paths (method {att.method}, order {att.order}, {att.granularity})"
    body = [f'<div class="jj-head">{html.escape(head)}</div>', _path_rows(paths, parts, float(att.total)),
            _note(f"|remainder| / |total| {att.remainder_ratio:.3g}; cancellation \u03a3|s| / |\u03a3s| "
                  f"{att.cancellation:.3g}; remainder share {att.remainder_share:.1%}")]
    bad = int(np.count_nonzero(~np.isfinite(scores))) + (not math.isfinite(float(att.total)))
    if bad:
        body.append(_note(f"{bad} of these numbers are NaN or inf: they mean nothing", "jj-warn"))
    if att.warning:
        body.append(_note(att.warning, "jj-warn"))
    if len(order) < len(scores):
        body.append(_note(f"the {len(order)} paths of largest |score| of {len(scores)} shown; att.top(n), "
                          "att.bottom(n) and att.to_dataframe() list them all"))
    comps = sorted(att.components.items(), key=lambda kv: -abs(kv[1]))[:8]
    if comps:
        rows = "".join(f"<tr><td><code>{html.escape(name)}</code></td>{_num(v)}"
                       + (_num(att.direct[name]) if name in att.direct else "<td></td>") + "</tr>"
                       for name, v in comps)
        body.append('<details><summary class="jj-sub">components (\u03a3 over the paths through each; direct: '
                    f'its path emb&gt;c&gt;dec), the {len(comps)} largest of {len(att.components)}</summary>'
                    '<table><tr><th>component</th><th class="jj-num">\u03a3</th><th class="jj-num">direct</th>'
                    f"</tr>{rows}</table></details>")
    return _view(body)


def top_paths_html(res, n: int = PATH_ROWS) -> str:
    """A :class:`~jetjax.TopPaths` as a table: its first ``n`` paths (the search's ranking), the rest it
    listed, the paths it scored but did not list, the exact sum of those it never scored, float rounding, and
    the model's number; then whether the ranking is certified."""
    scores = np.asarray(res.scores, np.float64)
    k = min(max(int(n), 0), len(scores))
    paths = [(label, float(s)) for label, s in zip(res.labels[:k], scores[:k])]
    parts = []
    if k < len(scores):
        parts.append((f"the other {len(scores) - k} listed paths", float(scores[k:].sum()), "jj-part"))
    parts += [(f"scored, not listed ({res.n_scored - len(scores):,} paths)", float(res.explored - scores.sum()),
               "jj-part"),
              ("never scored (exact sum)", float(res.unexplored), "jj-part")]
    if _visible_rounding(res.residual, res.total):
        parts.append(("float rounding", float(res.residual), "jj-part"))
    what = f"top {len(scores)} frozen paths by {res.by} ({res.score}, {res.granularity}) at position {res.position}"
    cert = (f"certified: no unexplored path scores above {res.bound:.4g}, so these are the top paths of full "
            "enumeration" if res.certified else
            f"not certified: an unexplored path could score up to {res.bound:.4g} (raise beam=)")
    body = [f'<div class="jj-head">{html.escape(what)}</div>', _path_rows(paths, parts, float(res.total)),
            _note(f"{res.n_paths:,} paths; {res.n_prefixes:,} prefixes explored, {res.n_scored:,} paths scored "
                  f"(beam {res.beam})"), _note(cert, "jj-note" if res.certified else "jj-warn")]
    return _view(body)


# -- attribution graphs ---------------------------------------------------------------------------------

def graph_inline_html(graph, *, max_edges: int = MAX_GRAPH_EDGES) -> str:
    """An :class:`~jetjax.AttributionGraph`'s interactive page (``graph.to_html``'s) in a sandboxed iframe
    (``srcdoc``; scripts run, nothing reaches the notebook). A graph of more than ``max_edges`` edges shows
    ``graph.prune()`` instead (the note says so); one that is still larger shows its text table."""
    from jetjax.paths.graph_view import graph_html       # here, not above: jetjax.paths imports this module
    from jetjax.paths.labels import parse_node

    shown, notes = graph, []
    n_edges = int(np.count_nonzero(graph.edges))
    if n_edges > max_edges:
        shown = graph.prune()
        notes.append(f"the whole graph ({len(graph)} nodes, {n_edges:,} edges) is too large to embed: shown is "
                     f"graph.prune() ({len(shown)} nodes, {int(np.count_nonzero(shown.edges)):,} edges); "
                     "graph.to_html(path) writes the whole page")
        if np.count_nonzero(shown.edges) > max_edges:
            notes[-1] = (f"the graph ({len(graph)} nodes, {n_edges:,} edges) is too large to embed, even pruned: "
                         "graph.to_html(path) writes its page")
            return _view([_note(notes[0], "jj-warn"), f"<pre>{html.escape(graph.table(20))}</pre>"])
    layers = 1 + max((parse_node(n).layer for n in shown.nodes if parse_node(n).layer is not None), default=-1)
    # the page's rows: emb, attn/mlp per layer, logit; 50 px each, plus its header and token axis
    height = min(max(150 + (2 * layers + 2) * 50 + 60, GRAPH_HEIGHT[0]), GRAPH_HEIGHT[1])
    page = graph_html(shown).replace("</head>", _GRAPH_FIT, 1)
    frame = (f'<iframe sandbox="allow-scripts" title="attribution graph" srcdoc="{html.escape(page)}" '
             f'style="width:100%;min-width:640px;height:{height}px;border:1px solid #ddd;background:#fff;'
             'box-sizing:border-box"></iframe>')
    return _view([_note(t, "jj-warn") for t in notes] + [frame], block=True)
