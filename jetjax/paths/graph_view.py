"""Views of an :class:`~jetjax.paths.graph.AttributionGraph`: one self-contained HTML page, and the JSON
schema that circuit-tracer writes (its local server and Neuronpedia load it).

**HTML** (:func:`graph_html`, ``graph.to_html(path)``): one file, no server and no network (data as
embedded JSON, inline SVG, CSS and script; not one external URL). Columns are token positions, with the
token strings on the axis (spaces shown as ``·``, newlines as ``⏎``); rows are, from the bottom, ``emb``,
then per layer ``attn{l}`` and ``mlp{l}``; the logit node sits in the top row above the predicting
position (shaded). With ``heads=True`` an attention row holds each position's heads side by side
(``h0`` left), and the output projection's bias (a source) right of them, drawn dashed. Node size
grows with influence (:meth:`~AttributionGraph.influence`), fill is the sign of TE (blue +, red −),
``emb`` nodes are squares. Edge width is ``|w|`` (relative to the largest drawn), colour its sign.
Hover a node (or edge) for its values; click a node to pick out its in- and out-edges and list them
(hidden ones included); click the background to clear. ``page.html#mlp0@2`` opens with that node picked.

*Constants are folded out*: a component's constant ``bias>c@p`` (its one edge goes into ``c@p``) is not
drawn; the info panel shows its edge as the component's ``constant in-edge``. It still takes part
in the selection below, exactly as in :meth:`~AttributionGraph.prune`.

*The sliders* select what is drawn by the rule of ``graph.prune(node_threshold, edge_threshold)``,
computed in the page from the embedded influences and edges: components ranked by influence are kept
until they hold ``node_threshold`` of the components' total influence (sources, ``emb`` and output
projection biases, always); then, among edges between kept nodes (direct edges to the logit
included), those carrying ``edge_threshold`` of the flow (an edge's flow: its receiver's influence
times ``|w|`` over the receiver's ``Σ|in-edges|``; a direct edge's: ``|DE|`` over the kept ``Σ|DE|``).
At the defaults (0.8, 0.98) the page draws the non-constant nodes and edges of ``graph.prune()``.
Every drawn node is an SVG ``<g data-node="<node id>">`` (the logit one ``logit@{position}``), every
drawn edge a ``<path data-source=… data-target=… data-weight=…>``. The page embeds every edge: for a
large graph, view ``graph.prune(...)`` (the sliders then select within it).

**Neuronpedia / circuit-tracer JSON** (:func:`neuronpedia_dict`, ``graph.to_json(path,
format="neuronpedia")``): ``{metadata, qParams, nodes, links}`` with circuit-tracer's node fields.
Mapping:

* ``emb@p`` → ``feature_type "embedding"``, layer ``"E"``, ``node_id "E_{token id}_{p}"``;
* components (``attn{l}``, ``attn{l}.h{h}``, ``mlp{l}``) → the frontend's ordinary feature type,
  ``"cross layer transcoder"`` (it has no type for whole components; this one draws them in their
  layer's row, clickable, with influence), layer ``l``; ``feature`` numbers the component within its
  layer: 0 ``attn``, 1 ``mlp``, ``2+h`` head ``h``. ``node_id "{l}_{feature}_{p}"``; the ``clerp``
  (the label the frontend shows) is our node id with its TE and DE;
* constants (``bias>…``, each component's and, with heads, the output projection's) →
  ``"mlp reconstruction error"``, feature ``−(1 + the component's feature)``: like circuit-tracer's
  error nodes they are sources that no feature explains (some frontend versions relabel them
  ``Err: mlp``);
* one logit node for the number explained, ``logit(target) − logit(foil)``: ``feature_type "logit"``,
  layer ``n_layers + 1``, feature = the target id, ``is_target_logit`` true. jetjax explains a logit
  (difference), not a probability, so ``token_prob`` keeps the schema default 0 and the clerp's
  ``(p=0)``, which the frontend parses, is a placeholder;
* ``influence`` as circuit-tracer writes it: the cumulative share of all nodes ranked by
  :meth:`~AttributionGraph.influence` down to this one (small = important; ``null`` for the logit);
  ``activation`` is ``null`` (a component has no scalar activation);
* links: every edge ``{source, target, weight}`` (``weight`` = ``edges[j, i]``) and every kept direct
  edge (``weight`` = DE) into the logit node. ``metadata.scan`` defaults to ``"jetjax"``.

*Round trip*: what the schema has no field for rides along in fields the frontend ignores, so that
``AttributionGraph.load`` rebuilds the same graph (:func:`graph_fields_from_neuronpedia`): each node but
the logit carries ``"jetjax": {"id", "te", "de", "direct"}`` (our node id, its TE, DE and whether the
graph keeps its direct edge), and ``metadata["jetjax"]`` holds the graph's ``format``, ``version``,
``settings`` (target, foil, their strings, position, baseline, heads, reference), ``total``,
``constant``, ``value`` and ``ids``; the tokens are ``metadata.prompt_tokens``, the edges the links
(those into the logit node are the direct edges, whose weights are the nodes' DEs).

Example:
  >>> import jetjax as jj
  >>> from jetjax.testing import tiny_model
  >>> graph = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
  >>> page = graph_html(graph)
  >>> page.startswith("<!DOCTYPE html>"), "http" in page
  (True, False)
  >>> sorted(neuronpedia_dict(graph))
  ['links', 'metadata', 'nodes', 'qParams']
  >>> back = graph_fields_from_neuronpedia(neuronpedia_dict(graph))
  >>> back["nodes"] == graph.nodes, bool((back["edges"] == graph.edges).all())
  (True, True)
"""

from __future__ import annotations

import html
import json
import re

import numpy as np

from jetjax._internal.checks import json_safe
from jetjax.paths.labels import EMB, LOGIT, parse_node

__all__ = ["graph_html", "neuronpedia_dict", "is_neuronpedia", "graph_fields_from_neuronpedia",
           "NODE_THRESHOLD", "EDGE_THRESHOLD"]

NODE_THRESHOLD, EDGE_THRESHOLD = 0.8, 0.98     # the sliders' defaults (those of AttributionGraph.prune)
FORMAT = "jetjax.attribution_graph"             # the jetjax file format (AttributionGraph.to_dict), also
                                               # marking a Neuronpedia file's metadata["jetjax"]
NEURONPEDIA_KEYS = ("metadata", "qParams", "nodes", "links")


def _check(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return float(value)


def _number(graph) -> str:
    target = graph.target_str if graph.target_str is not None else str(graph.target)
    text = f"logit({target!r})"
    if graph.foil is not None:
        text += f" − logit({graph.foil_str if graph.foil_str is not None else str(graph.foil)!r})"
    return f"{text} at position {graph.position} ({graph.tokens[graph.position]!r})"


def _view_data(graph, node_threshold: float, edge_threshold: float) -> dict:
    """The page's data: per node its role (``s`` source, ``c`` component, ``k`` folded constant and
    ``recv`` its component), row and sub-slot within its cell; the edges ``[i, j, w]`` (``i → j``)."""
    parsed = [parse_node(n) for n in graph.nodes]
    index = {n: i for i, n in enumerate(graph.nodes)}
    n_layers = 1 + max((p.layer for p in parsed if p.layer is not None), default=-1)
    n_heads = 1 + max((p.head for p in parsed if p.head is not None), default=-1)
    role, recv, row, sub = [], [], [], []
    for p in parsed:
        own = index.get(f"{p.receiver}@{p.position}")
        folded = p.constant and own is not None
        role.append("k" if folded else "s" if p.constant or p.kind == EMB else "c")
        recv.append(own if folded else -1)
        row.append(0 if p.kind == EMB else 1 + 2 * p.layer + (p.kind == "mlp"))
        sub.append(p.head if p.head is not None else n_heads if p.constant and not folded else 0)
    nsub = [1] * (1 + 2 * n_layers)
    for r, s, ro in zip(row, sub, role):
        if ro != "k":
            nsub[r] = max(nsub[r], s + 1)
    dst, src = np.nonzero(graph.edges)                   # row-major: the order prune ranks edges in
    return {
        "nodes": list(graph.nodes), "kind": [p.kind for p in parsed], "pos": [p.position for p in parsed],
        "role": role, "recv": recv, "row": row, "sub": sub, "nsub": nsub,
        "rows": ["emb"] + [f"{k}{layer}" for layer in range(n_layers) for k in ("attn", "mlp")],
        "te": graph.te, "de": graph.de, "infl": graph.influence(), "direct": [bool(d) for d in graph.direct],
        "edges": [[int(i), int(j), float(graph.edges[j, i])] for j, i in zip(dst, src)],
        "tokens": list(graph.tokens), "position": graph.position, "logit": f"{LOGIT}@{graph.position}",
        "nodeThreshold": node_threshold, "edgeThreshold": edge_threshold,
    }


def graph_html(graph, *, node_threshold: float = NODE_THRESHOLD, edge_threshold: float = EDGE_THRESHOLD) -> str:
    """The whole HTML page of ``graph`` (module docstring: layout, sliders, what is drawn), its sliders
    starting at ``node_threshold`` and ``edge_threshold``. Self-contained: no external URL at all.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> graph = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
      >>> page = graph_html(graph, node_threshold=0.5)
      >>> 'id="graph-data"' in page, "<svg" in page, "https:" in page
      (True, True, False)
    """
    data = _view_data(graph, _check("node_threshold", node_threshold), _check("edge_threshold", edge_threshold))
    data["number"] = f"{_number(graph)} = {graph.total:+.4f}"
    payload = json.dumps(json_safe(data), allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    summary = (f"frozen value of this graph {graph.value:+.4f} (decoder constant {graph.constant:+.4f}); "
               f"{len(graph.nodes)} nodes, {int(np.count_nonzero(graph.edges))} edges; heads {graph.heads}; "
               f"baseline {graph.baseline}")
    fields = {"TITLE": html.escape(f"attribution graph: {_number(graph)}"), "HEAD": html.escape(data["number"]),
              "SUMMARY": html.escape(summary), "NT": f"{node_threshold:g}", "ET": f"{edge_threshold:g}",
              "STYLE": _STYLE, "DATA": payload, "SCRIPT": _SCRIPT}
    return re.sub(r"%([A-Z]+)%", lambda m: fields[m[1]], _PAGE)      # one pass: nothing inserted is rescanned


def _feature(p) -> int:
    """A component's number within its layer (0 attn, 1 mlp, 2+h head h); a constant's, −(1 + its own)."""
    own = 2 + p.head if p.head is not None else (0 if p.kind == "attn" else 1)
    return -1 - own if p.constant else own


def neuronpedia_dict(graph, *, slug: str = "jetjax-graph", scan: str = "jetjax") -> dict:
    """``graph`` in the JSON schema circuit-tracer writes for its frontend and Neuronpedia:
    ``{metadata, qParams, nodes, links}`` (the mapping of nodes: module docstring).

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> graph = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
      >>> data = neuronpedia_dict(graph)
      >>> len(data["nodes"]) == len(graph.nodes) + 1, data["nodes"][0]["node_id"], data["nodes"][-1]["feature_type"]
      (True, 'E_3_0', 'logit')
      >>> [n["node_id"] for n in data["nodes"] if n["clerp"].startswith("mlp1@3")]
      ['1_1_3']
    """
    parsed = [parse_node(n) for n in graph.nodes]
    n_layers = 1 + max((p.layer for p in parsed if p.layer is not None), default=-1)
    infl = graph.influence()
    order = np.argsort(-infl, kind="stable")
    cum = np.cumsum(infl[order])
    share = np.full(len(infl), np.nan)
    if len(cum) and cum[-1] > 0:
        share[order] = cum / cum[-1]
    def node(node_id, feature, layer, ctx, ftype, js, clerp, influence, target=False):
        return {"node_id": node_id, "feature": feature, "layer": layer, "ctx_idx": ctx, "feature_type": ftype,
                "token_prob": 0.0, "is_target_logit": target, "run_idx": 0, "reverse_ctx_idx": 0, "jsNodeId": js,
                "clerp": clerp, "influence": influence, "activation": None}

    nodes = []
    for i, p in enumerate(parsed):
        clerp, q = f"{graph.nodes[i]}: TE {graph.te[i]:+.4g}, DE {graph.de[i]:+.4g}", p.position
        if p.kind == EMB:
            tok = graph.ids[q]
            nodes.append(node(f"E_{tok}_{q}", q, "E", q, "embedding", f"E_{tok}-{q}", clerp, share[i]))
        else:
            f, kind = _feature(p), "mlp reconstruction error" if p.constant else "cross layer transcoder"
            nodes.append(node(f"{p.layer}_{f}_{q}", f, str(p.layer), q, kind, f"{p.layer}_{f}-{q}", clerp, share[i]))
        nodes[-1]["jetjax"] = {"id": graph.nodes[i], "te": float(graph.te[i]), "de": float(graph.de[i]),
                               "direct": bool(graph.direct[i])}
    ids = [n["node_id"] for n in nodes]
    target = graph.target_str if graph.target_str is not None else str(graph.target)
    foil = "" if graph.foil is None else f' − "{graph.foil_str if graph.foil_str is not None else graph.foil}"'
    logit = f"{n_layers + 1}_{graph.target}_{graph.position}"
    nodes.append(node(logit, graph.target, str(n_layers + 1), graph.position, "logit",
                      f"L_{graph.target}-{graph.position}", f'Output "{target}"{foil} = {graph.total:+.4f} (p=0)',
                      None, target=True))
    dst, src = np.nonzero(graph.edges)
    links = [{"source": ids[i], "target": ids[j], "weight": float(graph.edges[j, i])} for j, i in zip(dst, src)]
    links += [{"source": ids[i], "target": logit, "weight": float(graph.de[i])}
              for i in np.flatnonzero(np.asarray(graph.direct, bool) & (graph.de != 0))]
    metadata = {"slug": slug, "scan": scan, "transcoder_list": [], "prompt_tokens": list(graph.tokens),
                "prompt": "".join(graph.tokens), "node_threshold": None, "schema_version": 1,
                "jetjax": _graph_values(graph)}
    qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return json_safe({"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links})



def _graph_values(graph) -> dict:
    """The graph-level values the schema has no field for (``metadata["jetjax"]``)."""
    return {"format": FORMAT, "version": 1,
            "settings": {"target": graph.target, "foil": graph.foil, "target_str": graph.target_str,
                         "foil_str": graph.foil_str, "position": graph.position, "baseline": graph.baseline,
                         "heads": graph.heads, "reference": list(graph.reference) if graph.reference else None},
            "total": graph.total, "constant": graph.constant, "value": graph.value, "ids": list(graph.ids)}


def is_neuronpedia(data) -> bool:
    """Whether ``data`` (parsed JSON) is in the Neuronpedia / circuit-tracer schema: a dict with the
    top-level keys ``metadata``, ``qParams``, ``nodes`` and ``links`` (and no jetjax ``format``)."""
    return isinstance(data, dict) and "format" not in data and all(k in data for k in NEURONPEDIA_KEYS)


def _number_or_nan(value) -> float:
    return float("nan") if value is None else float(value)      # json_safe wrote NaN as null


def graph_fields_from_neuronpedia(data: dict) -> dict:
    """The constructor arguments of the ``AttributionGraph`` that :func:`neuronpedia_dict` wrote as
    ``data`` (``AttributionGraph.load`` / ``from_dict`` call this on such a file): nodes, TE, DE and
    direct flags from each node's ``"jetjax"`` field, edges from the links (those into the logit node,
    the direct edges, are skipped: their weights are the DEs), the rest from ``metadata["jetjax"]``
    and ``metadata.prompt_tokens``. A ``ValueError`` for a file without jetjax's fields (one written by
    circuit-tracer itself) or an inconsistent one (a link naming a node that is not in the file, a
    node listed twice, a field missing).

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> graph = jj.attribution_graph(tiny_model(), [3, 1, 4, 1], target=5, foil=2)
      >>> fields = graph_fields_from_neuronpedia(neuronpedia_dict(graph))
      >>> fields["nodes"] == graph.nodes, fields["total"] == graph.total, fields["tokens"] == graph.tokens
      (True, True, True)
    """
    if not is_neuronpedia(data):
        raise ValueError(f"not a Neuronpedia / circuit-tracer graph (its top-level keys must be {NEURONPEDIA_KEYS})")
    meta = data["metadata"]
    extra = meta.get("jetjax") if isinstance(meta, dict) else None
    if not isinstance(extra, dict) or extra.get("format") != FORMAT:
        raise ValueError("this Neuronpedia / circuit-tracer graph has no jetjax fields (metadata['jetjax']): only a "
                         "file written by graph.to_json(path, format='neuronpedia') can be loaded as an "
                         "AttributionGraph")
    try:
        own, index, logits = [], {}, set()
        for n in data["nodes"]:
            node_id = n["node_id"]
            if node_id in index or node_id in logits:
                raise ValueError(f"a Neuronpedia graph file lists the node {node_id!r} twice")
            if n.get("feature_type") == "logit":
                logits.add(node_id)
                continue
            if not isinstance(n.get("jetjax"), dict):
                raise ValueError(f"the node {node_id!r} has no 'jetjax' field (not written by jetjax)")
            index[node_id] = len(own)
            own.append(n["jetjax"])
        if len(logits) != 1:
            raise ValueError(f"a jetjax graph has one logit node, the file has {len(logits)}")
        nodes = tuple(n["id"] for n in own)
        for n in nodes:
            parse_node(n)
        if len(set(nodes)) != len(nodes):
            raise ValueError("a Neuronpedia graph file gives two nodes the same jetjax id")
        edges = np.zeros((len(nodes), len(nodes)))
        for link in data["links"]:
            source, target = link["source"], link["target"]
            for end in (source, target):
                if end not in index and end not in logits:
                    raise ValueError(f"a link names {end!r}, which is not a node of the file")
            if source in logits:
                raise ValueError(f"a link leaves the logit node {source!r}")
            if target not in logits:                    # into the logit: a direct edge, its weight the DE
                edges[index[target], index[source]] = float(link["weight"])
        s = extra["settings"]
        return dict(nodes=nodes, de=np.array([_number_or_nan(n["de"]) for n in own], np.float64),
                    te=np.array([_number_or_nan(n["te"]) for n in own], np.float64), edges=edges,
                    direct=np.array([bool(n["direct"]) for n in own], bool), total=_number_or_nan(extra["total"]),
                    constant=_number_or_nan(extra["constant"]), value=_number_or_nan(extra["value"]),
                    ids=tuple(int(i) for i in extra["ids"]), tokens=tuple(meta["prompt_tokens"]),
                    target=s["target"], foil=s["foil"], position=s["position"], baseline=s["baseline"],
                    heads=s["heads"], target_str=s["target_str"], foil_str=s["foil_str"],
                    reference=tuple(s["reference"]) if s["reference"] else None)
    except (KeyError, TypeError) as err:
        raise ValueError(f"a malformed jetjax Neuronpedia graph file ({type(err).__name__}: {err})") from None


# -- the page ------------------------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>%TITLE%</title><style>%STYLE%</style></head>
<body>
<div class="head"><b>%HEAD%</b><div class="sum">%SUMMARY%</div></div>
<div class="controls">
<label>node threshold <input type="range" id="nt" min="0.01" max="1" step="0.01" value="%NT%"> <span id="ntv"></span></label>
<label>edge threshold <input type="range" id="et" min="0.01" max="1" step="0.01" value="%ET%"> <span id="etv"></span></label>
<span id="counts"></span>
<span class="legend"><i class="sw pos"></i>positive <i class="sw neg"></i>negative &middot; width |w| &middot;
size influence &middot; &#9632; emb &middot; dashed: output bias &middot; constants folded into their component</span>
</div>
<div class="main"><div class="scroll"><svg id="graph"></svg></div><div id="info"></div></div>
<script type="application/json" id="graph-data">%DATA%</script>
<script>%SCRIPT%</script>
</body></html>
"""

_STYLE = """
body{font:13px system-ui,sans-serif;margin:8px;color:#222}
svg{display:block}
.sum{color:#555;margin:2px 0 6px}
.controls{display:flex;gap:16px;align-items:center;flex-wrap:wrap;margin-bottom:6px}
.controls input{vertical-align:middle;width:140px}
.legend{color:#555;font-size:12px}.sw{display:inline-block;width:18px;height:4px;margin:0 3px 2px 6px}
.sw.pos{background:#2b6cb0}.sw.neg{background:#c53030}
.main{display:flex;gap:10px;align-items:flex-start}
.scroll{overflow:auto;border:1px solid #ddd;flex:0 1 auto;max-height:88vh}
#info{flex:0 0 290px;font:12px ui-monospace,monospace;white-space:pre-wrap;border:1px solid #ddd;padding:6px 8px;
max-height:88vh;overflow:auto}
#info .h{font-weight:bold}#info .off{color:#999}
.col{fill:#f6f6f6}.col.pred{fill:#fff1c9}.grid{stroke:#e4e4e4}
.tok{font:12px ui-monospace,monospace;text-anchor:middle;fill:#222}.posn{font:9px sans-serif;text-anchor:middle;fill:#999}
.rowlab{font:11px ui-monospace,monospace;text-anchor:end;fill:#555}.hlab{font:8px sans-serif;fill:#aaa;text-anchor:middle}
.edge{fill:none;stroke-opacity:.5}.edge.pos{stroke:#2b6cb0}.edge.neg{stroke:#c53030}
.edge.dim{stroke-opacity:.04}.edge.hi{stroke-opacity:.95}
.node{cursor:pointer}.node>circle,.node>rect{stroke:#333;stroke-width:1}
.node.pos>circle,.node.pos>rect{fill:#9cc0ea}.node.neg>circle,.node.neg>rect{fill:#f3a494}
.node.src>circle{stroke-dasharray:2 1.5}.node.logit>rect{fill:#ffd45e}.node.sel>*{stroke:#000;stroke-width:2.5}
.node.dim{opacity:.25}
"""

_SCRIPT = r"""
"use strict";
(function () {
const D = JSON.parse(document.getElementById("graph-data").textContent);
const svg = document.getElementById("graph"), NS = svg.namespaceURI, $ = (id) => document.getElementById(id);
const N = D.nodes.length, T = D.tokens.length, R = D.rows.length;
const maxSub = D.nsub.reduce((a, b) => Math.max(a, b), 1);
const colW = Math.max(84, 19 * maxSub + 24), rowH = 50, left = 64, top = 14, axis = 40;
const W = left + T * colW + 12, H = top + (R + 1) * rowH + axis;
for (const [k, v] of [["width", W], ["height", H], ["viewBox", `0 0 ${W} ${H}`]]) svg.setAttribute(k, v);
const el = (tag, attrs, parent) => {
  const e = document.createElementNS(NS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
};
const fmt = (w) => (w === null ? "n/a" : (w >= 0 ? "+" : "") + w.toPrecision(4));
const rowY = (r) => top + (R - r) * rowH + rowH / 2;
const cellW = (n) => colW * Math.min(0.86, 0.3 * n);
const xs = D.nodes.map((_, i) => {
  const n = D.nsub[D.row[i]], w = cellW(n);
  return left + D.pos[i] * colW + (colW - w) / 2 + (D.sub[i] + 0.5) * w / n;
});
const ys = D.nodes.map((_, i) => rowY(D.row[i]));
const lx = left + D.position * colW + colW / 2, ly = rowY(R);
const showTok = (s) => {
  s = s.replace(/\n/g, "\u23ce").replace(/\t/g, "\u21e5").replace(/ /g, "\u00b7");
  const m = Math.floor(colW / 7.6);
  return s.length > m ? s.slice(0, m - 1) + "\u2026" : s;
};
// the background: columns, rows, the token axis
const bg = el("g", {}, svg);
for (let p = 0; p < T; p++) {
  el("rect", {x: left + p * colW + 2, y: top, width: colW - 4, height: (R + 1) * rowH,
              class: p === D.position ? "col pred" : "col"}, bg);
  const t = el("text", {x: left + p * colW + colW / 2, y: top + (R + 1) * rowH + 16, class: "tok"}, bg);
  t.textContent = showTok(D.tokens[p]);
  el("title", {}, t).textContent = JSON.stringify(D.tokens[p]);
  el("text", {x: left + p * colW + colW / 2, y: top + (R + 1) * rowH + 30, class: "posn"}, bg).textContent = p;
}
for (let r = 0; r <= R; r++) {
  el("line", {x1: left, x2: W - 12, y1: rowY(r), y2: rowY(r), class: "grid"}, bg);
  el("text", {x: left - 8, y: rowY(r) + 4, class: "rowlab"}, bg).textContent = r < R ? D.rows[r] : "logit";
  if (r > 0 && r < R && D.nsub[r] > 1 && D.rows[r].startsWith("attn"))
    for (let s = 0; s < D.nsub[r]; s++) {
      const w = cellW(D.nsub[r]), x = left + D.position * colW + (colW - w) / 2 + (s + 0.5) * w / D.nsub[r];
      el("text", {x: x, y: rowY(r) - 13, class: "hlab"}, bg).textContent = s < D.nsub[r] - 1 ? "h" + s : "b";
    }
}
const gE = el("g", {}, svg), gN = el("g", {}, svg);
// adjacency of the full graph, for the info panel; j = -1 is the logit node
const inE = D.nodes.map(() => []), outE = D.nodes.map(() => []), logitIn = [];
for (const [i, j, w] of D.edges) { inE[j].push([i, w]); outE[i].push([j, w]); }
for (let i = 0; i < N; i++) if (D.direct[i] && D.de[i]) { outE[i].push([-1, D.de[i]]); logitIn.push([i, D.de[i]]); }
const name = (i) => (i < 0 ? D.logit : D.nodes[i]);

// what is drawn: the rule of AttributionGraph.prune, on the same numbers in the same order
function select(tn, te) {
  const keep = D.role.map((r) => r === "s"), comp = [];
  for (let i = 0; i < N; i++) if (D.role[i] === "c") comp.push(i);
  comp.sort((a, b) => D.infl[b] - D.infl[a]);           // stable: ties keep the graph's order
  let total = 0, acc = 0;
  for (const i of comp) total += D.infl[i];
  for (const i of comp) {
    if (total <= 0 || acc >= tn * total) break;
    keep[i] = true;
    acc += D.infl[i];
  }
  for (let i = 0; i < N; i++) if (D.role[i] === "k") keep[i] = keep[D.recv[i]];
  const insum = new Float64Array(N);
  for (const [, j, w] of D.edges) insum[j] += Math.abs(w);
  const flows = [];
  for (const [i, j, w] of D.edges) {
    const f = keep[i] && keep[j] ? (Math.abs(w) / insum[j]) * D.infl[j] : 0;
    if (f > 0) flows.push([f, i, j, w]);
  }
  let dsum = 0;
  for (let i = 0; i < N; i++) if (D.direct[i] && keep[i]) dsum += Math.abs(D.de[i]);
  for (let i = 0; i < N; i++) {
    const f = D.direct[i] && keep[i] && dsum > 0 ? Math.abs(D.de[i]) / dsum : 0;
    if (f > 0) flows.push([f, i, -1, D.de[i]]);
  }
  flows.sort((a, b) => b[0] - a[0]);
  let all = 0, cum = 0;
  for (const e of flows) all += e[0];
  const limit = te * all * (1 - 1e-12), edges = [];
  for (const e of flows) {
    if (cum >= limit) break;
    edges.push(e);
    cum += e[0];
  }
  return {keep, edges};
}

let selected = null;
function draw() {
  const tn = +$("nt").value, te = +$("et").value;
  $("ntv").textContent = tn.toFixed(2);
  $("etv").textContent = te.toFixed(2);
  const S = select(tn, te);
  gE.replaceChildren();
  gN.replaceChildren();
  const edges = S.edges.filter((e) => D.role[e[1]] !== "k" && (e[2] < 0 || D.role[e[2]] !== "k"));
  const wmax = edges.reduce((m, e) => Math.max(m, Math.abs(e[3])), 1e-300);
  edges.sort((a, b) => Math.abs(a[3]) - Math.abs(b[3]));    // the strongest on top
  for (const [, i, j, w] of edges) {
    const x1 = xs[i], y1 = ys[i], x2 = j < 0 ? lx : xs[j], y2 = j < 0 ? ly : ys[j];
    const gap = (y1 - y2) / rowH, b = Math.abs(x2 - x1) < colW / 2 && gap > 1.5 ? Math.min(colW * 0.4, 9 * gap) : 0;
    const dy = (y1 - y2) * 0.45;
    const p = el("path", {d: `M${x1},${y1} C${x1 + b},${y1 - dy} ${x2 + b},${y2 + dy} ${x2},${y2}`,
                          class: w >= 0 ? "edge pos" : "edge neg", "stroke-width": (0.5 + 5.5 * Math.abs(w) / wmax).toFixed(2),
                          "data-source": D.nodes[i], "data-target": name(j), "data-weight": w}, gE);
    el("title", {}, p).textContent = `${D.nodes[i]} \u2192 ${name(j)}: ${fmt(w)}`;
  }
  const drawn = [];
  for (let i = 0; i < N; i++) if (S.keep[i] && D.role[i] !== "k") drawn.push(i);
  const imax = drawn.reduce((m, i) => Math.max(m, D.infl[i] || 0), 1e-300);
  for (const i of drawn) {
    const g = el("g", {class: `node ${D.te[i] >= 0 ? "pos" : "neg"}${D.role[i] === "s" && D.kind[i] !== "emb" ? " src" : ""}`,
                       "data-node": D.nodes[i], transform: `translate(${xs[i].toFixed(1)},${ys[i]})`}, gN);
    const r = 3 + 6 * Math.sqrt(Math.max(0, D.infl[i] || 0) / imax);
    if (D.kind[i] === "emb") el("rect", {x: -r, y: -r, width: 2 * r, height: 2 * r, rx: 1.5}, g);
    else el("circle", {r: r.toFixed(2)}, g);
    el("title", {}, g).textContent = describe(i).join("\n");
    hook(g, i);
  }
  const g = el("g", {class: "node logit", "data-node": D.logit, transform: `translate(${lx},${ly})`}, gN);
  el("rect", {x: -9, y: -9, width: 18, height: 18, transform: "rotate(45)"}, g);
  el("title", {}, g).textContent = describe(-1).join("\n");
  hook(g, -1);
  const nAll = D.role.filter((r) => r !== "k").length + 1;
  const eAll = D.edges.filter((e) => D.role[e[0]] !== "k").length + logitIn.length;
  $("counts").textContent = `drawn: ${drawn.length + 1} of ${nAll} nodes, ${edges.length} of ${eAll} edges`;
  if (selected !== null && selected >= 0 && !S.keep[selected]) selected = null;
  highlight();
}
function describe(i) {
  if (i < 0) return [D.logit, D.number, `direct edges in: ${logitIn.length}`];
  const lines = [D.nodes[i], `token ${JSON.stringify(D.tokens[D.pos[i]])} at position ${D.pos[i]}`,
                 `TE ${fmt(D.te[i])}   DE ${fmt(D.de[i])}`, `influence ${fmt(D.infl[i])}`];
  for (const [k, w] of inE[i]) if (D.role[k] === "k") lines.push(`constant in-edge ${fmt(w)} (${D.nodes[k]})`);
  return lines;
}
function hook(g, i) {
  g.addEventListener("mouseenter", () => info(i));
  g.addEventListener("mouseleave", () => info(selected));
  g.addEventListener("click", (ev) => { ev.stopPropagation(); selected = selected === i ? null : i; highlight(); });
}
function highlight() {
  const id = selected === null ? null : name(selected), near = new Set([id]);
  for (const p of gE.children) {
    const on = p.dataset.source === id || p.dataset.target === id;
    if (on) { near.add(p.dataset.source); near.add(p.dataset.target); }
    p.setAttribute("class", p.getAttribute("class").replace(/ (hi|dim)/g, "") + (id === null ? "" : on ? " hi" : " dim"));
  }
  for (const g of gN.children) {
    g.classList.toggle("sel", g.dataset.node === id);
    g.classList.toggle("dim", id !== null && !near.has(g.dataset.node));
  }
  info(selected);
}
function info(i) {
  const box = $("info");
  box.replaceChildren();
  const line = (text, cls) => { const d = document.createElement("div"); d.textContent = text; if (cls) d.className = cls; box.appendChild(d); };
  if (i === null) { line("Hover a node for its values; click one for its in- and out-edges (click the background to clear)."); return; }
  describe(i).forEach((t, k) => line(t, k ? "" : "h"));
  if (i !== selected) return;
  const drawnEdges = new Set([...gE.children].map((p) => p.dataset.source + " " + p.dataset.target));
  for (const [title, list, into] of [["in-edges", i < 0 ? logitIn : inE[i], true], ["out-edges", i < 0 ? [] : outE[i], false]]) {
    line(`\n${title} (${list.length}; grey: not drawn)`, "h");
    const top = [...list].sort((a, b) => Math.abs(b[1]) - Math.abs(a[1])).slice(0, 25);
    for (const [k, w] of top) {
      const a = into ? name(k) : name(i), b = into ? name(i) : name(k);
      line(`${fmt(w).padStart(11)}  ${into ? a : b}`, drawnEdges.has(a + " " + b) ? "" : "off");
    }
    if (list.length > top.length) line(`  ... ${list.length - top.length} more`, "off");
  }
}
svg.addEventListener("click", () => { selected = null; highlight(); });
$("nt").addEventListener("input", draw);
$("et").addEventListener("input", draw);
const pick = decodeURIComponent(location.hash.slice(1));     // page.html#mlp0@2 opens with that node picked
if (pick) selected = pick === D.logit ? -1 : D.nodes.indexOf(pick) >= 0 ? D.nodes.indexOf(pick) : null;
draw();
})();
"""
