"""Views of an attribution graph: the HTML page (drawn nodes and edges read back from headless Chromium's
DOM), the Neuronpedia / circuit-tracer JSON schema, and the jetjax JSON round trip.

The browser tests need Debian's ``chromium`` (``apt-get install chromium``); without a binary they skip.
"""

import dataclasses
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest

import jetjax as jj
from jetjax.paths.graph import AttributionGraph
from jetjax.paths.graph_view import graph_html, neuronpedia_dict
from jetjax.paths.labels import parse_node
from jetjax.testing import tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install "
                                    "chromium); the HTML view is checked in a headless browser")

NODE_FIELDS = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
               "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}


@pytest.fixture(scope="module")
def graphs():
    """``{name: (model, graph)}``; the model is kept so that ``prune`` can recompute values."""
    gpt2, llama = tiny_model(), tiny_model("llama")
    return {"gpt2": (gpt2, jj.attribution_graph(gpt2, [3, 1, 4, 1], target=5, foil=2)),
            "llama_heads": (llama, jj.attribution_graph(llama, [3, 1, 4, 1, 5, 9, 2, 6], target=5, foil=2,
                                                        heads=True))}


# -- neuronpedia / circuit-tracer JSON ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["gpt2", "llama_heads"])
def test_neuronpedia_schema_nodes_and_links(graphs, name):
    _, graph = graphs[name]
    data = neuronpedia_dict(graph)
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert {"slug", "scan", "transcoder_list", "prompt_tokens", "prompt", "node_threshold",
            "schema_version"} <= set(data["metadata"])
    assert data["metadata"]["prompt_tokens"] == list(graph.tokens)
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    nodes = data["nodes"]
    assert len(nodes) == len(graph.nodes) + 1
    # circuit-tracer's node fields, plus jetjax's own (for the round trip) on every node but the logit
    assert all(set(n) == NODE_FIELDS | {"jetjax"} for n in nodes[:-1]) and set(nodes[-1]) == NODE_FIELDS
    assert len({n["node_id"] for n in nodes}) == len(nodes) and len({n["jsNodeId"] for n in nodes}) == len(nodes)
    for n, node in zip(nodes, graph.nodes):
        p = parse_node(node)
        expected = "embedding" if p.kind == "emb" else "mlp reconstruction error" if p.constant \
            else "cross layer transcoder"
        assert n["feature_type"] == expected and n["ctx_idx"] == p.position
        assert n["layer"] == ("E" if p.kind == "emb" else str(p.layer))
        assert 0 < n["influence"] <= 1 + 1e-12 and n["clerp"].startswith(node)
    logit = nodes[-1]
    assert logit["feature_type"] == "logit" and logit["is_target_logit"] and logit["feature"] == graph.target
    assert logit["ctx_idx"] == graph.position and "(p=" in logit["clerp"]        # the frontend parses it
    assert sum(n["is_target_logit"] for n in nodes) == 1
    assert all(int(n["layer"]) < int(logit["layer"]) for n in nodes[:-1] if n["layer"] != "E")
    # every edge and every direct edge, with the graph's own weight
    ids = [n["node_id"] for n in nodes[:-1]]
    expected = {(ids[i], ids[j]): graph.edges[j, i] for j, i in zip(*np.nonzero(graph.edges))}
    expected.update({(ids[i], logit["node_id"]): graph.de[i] for i in range(len(ids)) if graph.de[i] != 0})
    got = {(link["source"], link["target"]): link["weight"] for link in data["links"]}
    assert len(got) == len(data["links"]) == len(expected)
    assert got == expected
    json.dumps(data, allow_nan=False)


def test_to_json_formats(graphs, tmp_path):
    _, graph = graphs["gpt2"]
    text = graph.to_json(tmp_path / "np.json", format="neuronpedia")
    assert json.loads((tmp_path / "np.json").read_text()) == json.loads(text) == neuronpedia_dict(graph)
    with pytest.raises(ValueError, match="jetjax.*neuronpedia"):
        graph.to_json(format="graphml")


@pytest.mark.parametrize("name", ["gpt2", "llama_heads"])
def test_jetjax_json_round_trip(graphs, name, tmp_path):
    _, graph = graphs[name]
    graph.to_json(tmp_path / "g.json", format="jetjax")
    back = AttributionGraph.load(tmp_path / "g.json")
    assert back.nodes == graph.nodes and back.tokens == graph.tokens and back.ids == graph.ids
    for field in ("de", "te", "edges", "direct"):
        np.testing.assert_array_equal(getattr(back, field), getattr(graph, field))
    assert (back.total, back.constant, back.value, back.target, back.foil, back.position, back.heads) == \
        (graph.total, graph.constant, graph.value, graph.target, graph.foil, graph.position, graph.heads)


def _assert_same_graph(back, graph):
    assert type(back) is AttributionGraph
    for field in ("de", "te", "edges", "direct"):
        got, want = getattr(back, field), getattr(graph, field)
        assert got.dtype == want.dtype and got.shape == want.shape, field
        np.testing.assert_array_equal(got, want, err_msg=field)
    for field in dataclasses.fields(AttributionGraph):
        if field.name not in ("de", "te", "edges", "direct", "_source"):
            assert getattr(back, field.name) == getattr(graph, field.name), field.name


@pytest.mark.parametrize("name", ["gpt2", "llama_heads"])
def test_neuronpedia_json_round_trip(graphs, name, tmp_path):
    _, graph = graphs[name]
    assert graph.heads == (name == "llama_heads")
    if name == "gpt2":     # the graph has constants (bias>…) and a decoder constant to carry
        assert graph.constant != 0 and any(n.startswith("bias>") for n in graph.nodes)
    text = graph.to_json(tmp_path / "np.json", format="neuronpedia")
    back = AttributionGraph.load(tmp_path / "np.json")
    _assert_same_graph(back, graph)
    assert back.to_json(format="neuronpedia") == text                  # and it writes the same file again
    _assert_same_graph(AttributionGraph.from_dict(json.loads(text)), graph)


def test_neuronpedia_json_round_trip_pruned(graphs, tmp_path):
    """A pruned graph: some direct edges dropped (``direct`` false), its own frozen ``value``."""
    model, graph = graphs["llama_heads"]
    small = graph.prune(0.5, 0.9, model=model)
    assert not small.direct.all() and small.value != graph.value
    small.to_json(tmp_path / "np.json", format="neuronpedia")
    _assert_same_graph(AttributionGraph.load(tmp_path / "np.json"), small)


def test_neuronpedia_json_corrupted(graphs, tmp_path):
    _, graph = graphs["gpt2"]
    data = neuronpedia_dict(graph)
    bad = json.loads(json.dumps(data))
    bad["links"][3]["source"] = "7_99_0"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="'7_99_0'.*not a node"):
        AttributionGraph.load(tmp_path / "bad.json")
    bad = json.loads(json.dumps(data))
    bad["links"][-1]["target"] = "L_ghost"                                  # a direct edge into no logit
    with pytest.raises(ValueError, match="'L_ghost'.*not a node"):
        AttributionGraph.from_dict(bad)
    foreign = json.loads(json.dumps(data))                   # circuit-tracer's own file: no jetjax fields
    del foreign["metadata"]["jetjax"]
    with pytest.raises(ValueError, match="no jetjax fields"):
        AttributionGraph.from_dict(foreign)
    twice = json.loads(json.dumps(data))
    twice["nodes"][1]["node_id"] = twice["nodes"][0]["node_id"]
    with pytest.raises(ValueError, match="twice"):
        AttributionGraph.from_dict(twice)
    missing = json.loads(json.dumps(data))
    del missing["nodes"][2]["jetjax"]["te"]
    with pytest.raises(ValueError, match="malformed.*'te'"):
        AttributionGraph.from_dict(missing)


# -- the page, statically ---------------------------------------------------------------------------

def test_page_is_self_contained(graphs, tmp_path):
    _, graph = graphs["llama_heads"]
    path = graph.to_html(tmp_path / "g.html")
    page = path.read_text(encoding="utf-8")
    assert page == graph_html(graph)
    assert not re.search(r"https?:|\bsrc=|\bhref=|@import|url\(", page)
    data = json.loads(re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', page, re.S)[1])
    assert data["nodes"] == list(graph.nodes) and data["tokens"] == list(graph.tokens)
    assert len(data["edges"]) == np.count_nonzero(graph.edges)
    with pytest.raises(ValueError, match="node_threshold"):
        graph_html(graph, node_threshold=0)


def test_page_escapes_token_strings(graphs):
    _, graph = graphs["gpt2"]
    odd = dataclasses.replace(graph, tokens=("</script><b>x", "a&b", " <!--", "\n"))
    page = graph_html(odd)
    assert "</script><b>" not in page and page.count("</script>") == 2


# -- the page in a headless browser -----------------------------------------------------------------

class _Drawn(HTMLParser):
    def __init__(self):
        super().__init__()
        self.nodes, self.edges = [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "data-node" in a:
            self.nodes.append(a["data-node"])
        if "data-source" in a:
            key = (a["data-source"], a["data-target"])
            assert key not in self.edges, f"edge {key} drawn twice"
            self.edges[key] = float(a["data-weight"])


def _chromium(page_path, tmp_path, *extra):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, page_path.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def _expected(graph, node_threshold, edge_threshold):
    """What the page must draw: ``graph.prune``'s nodes and edges without the folded constants, plus the
    logit node and the kept direct edges."""
    small = graph.prune(node_threshold, edge_threshold)
    full = graph.index

    def folded(n):
        p = parse_node(n)
        return p.constant and f"{p.receiver}@{p.position}" in full

    logit = f"logit@{graph.position}"
    nodes = {n for n in small.nodes if not folded(n)} | {logit}
    edges = {(small.nodes[i], small.nodes[j]): small.edges[j, i] for j, i in zip(*np.nonzero(small.edges))
             if not folded(small.nodes[i])}
    edges.update({(small.nodes[i], logit): small.de[i] for i in np.flatnonzero(small.direct)})
    return nodes, edges


@needs_chromium
@pytest.mark.parametrize("name,thresholds", [("gpt2", None), ("gpt2", (0.5, 0.9)), ("gpt2", (1.0, 1.0)),
                                             ("llama_heads", None), ("llama_heads", (0.95, 0.7))])
def test_browser_draws_the_pruned_graph(graphs, name, thresholds, tmp_path):
    _, graph = graphs[name]
    nt, et = thresholds or (0.8, 0.98)
    path = tmp_path / "g.html"
    path.write_text(graph_html(graph) if thresholds is None else
                    graph_html(graph, node_threshold=nt, edge_threshold=et), encoding="utf-8")
    dom = _chromium(path, tmp_path, "--dump-dom").stdout
    drawn = _Drawn()
    drawn.feed(dom)
    nodes, edges = _expected(graph, nt, et)
    assert len(drawn.nodes) == len(set(drawn.nodes)), "a node drawn twice"
    assert set(drawn.nodes) == nodes
    assert drawn.edges == edges                                  # the same edges, with the graph's weights
    assert len(nodes) > 4 and len(edges) > 4
    assert f"drawn: {len(nodes)} of" in dom


@needs_chromium
def test_browser_screenshot(graphs, tmp_path):
    _, graph = graphs["llama_heads"]
    path = graph.to_html(tmp_path / "g.html")
    png = tmp_path / "g.png"
    _chromium(path, tmp_path, f"--screenshot={png}", "--window-size=1400,900")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
