"""`jetjax graph` and `jetjax circuit` on the shipped model: the JSON they write holds the numbers the
library gives when called directly (the graph's total, nodes, effects and edges; the circuit's nodes and
faithfulness), and stdout carries the tables or, with ``--json -``, only the JSON."""

import json

import numpy as np
import pytest

import jetjax as jj
from jetjax.cli import app as cli

TEXT = "To be, or not to"
TARGET, FOIL = " be", " do"
REFERENCE = ["Good morrow, my lord.", "What light through yonder window breaks?"]
MODEL = ["--model", "shakespeare"]


@pytest.fixture(scope="module")
def shipped():
    return jj.load_shipped()


def run(capsys, *argv):
    try:
        code = cli.main([*argv, *MODEL])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def same_graph(data, graph):
    """The JSON of ``jetjax graph`` against a graph the library built itself."""
    assert data["format"] == "jetjax.attribution_graph"
    assert data["total"] == pytest.approx(graph.total, abs=1e-5)
    assert data["value"] == pytest.approx(graph.value, abs=1e-4)
    assert [n["id"] for n in data["nodes"]] == list(graph.nodes)
    np.testing.assert_allclose([n["te"] for n in data["nodes"]], graph.te, atol=1e-4)
    np.testing.assert_allclose([n["de"] for n in data["nodes"]], graph.de, atol=1e-4)
    assert len(data["edges"]) == int(np.count_nonzero(graph.edges))


def test_graph(capsys, tmp_path, shipped):
    graph = jj.attribution_graph(shipped, TEXT, TARGET, FOIL)
    path = tmp_path / "sub" / "graph.json"
    out = run(capsys, "graph", "--text", TEXT, "--target", TARGET, "--foil", FOIL, "--top", "3", "--json", str(path))
    data = json.loads(path.read_text())
    same_graph(data, graph)
    assert data["settings"]["baseline"] == "zero" and data["settings"]["heads"] is False
    assert data["settings"]["target"] == int(shipped.tokenize(TARGET)[0])
    lines = out.splitlines()
    assert lines[:5] == graph.table(3).splitlines() and lines[5] == f"wrote {path}"

    # pruned, to stdout: nothing but the JSON there
    small = graph.prune(0.8, 0.98)
    out = run(capsys, "graph", "--text", TEXT, "--target", TARGET, "--foil", FOIL, "--prune", "0.8", "0.98",
              "--json", "-")
    same_graph(json.loads(out), small)
    assert len(small) < len(graph)


def test_graph_neuronpedia_json(capsys, shipped):
    graph = jj.attribution_graph(shipped, TEXT, TARGET, FOIL).prune(0.8, 0.98)
    out = run(capsys, "graph", "--text", TEXT, "--target", TARGET, "--foil", FOIL, "--prune", "0.8", "0.98",
              "--json", "-", "--json-format", "neuronpedia")
    assert json.loads(out) == json.loads(graph.to_json(format="neuronpedia"))


def test_graph_heads_and_mean_baseline(capsys, shipped):
    """--reference alone means --baseline mean; --position picks the predicting position."""
    graph = jj.attribution_graph(shipped, TEXT, TARGET, position=-2, heads=True, baseline="mean",
                                 reference=REFERENCE)
    out = run(capsys, "graph", "--text", TEXT, "--target", TARGET, "--heads", "--position", "-2",
              "--reference", *REFERENCE, "--json", "-")
    data = json.loads(out)
    same_graph(data, graph)
    assert data["settings"]["baseline"] == "mean" and data["settings"]["heads"] is True
    assert data["settings"]["reference"] == REFERENCE and data["settings"]["foil"] is None
    assert any(".h" in n["id"] for n in data["nodes"])


def test_graph_html(capsys, tmp_path, shipped):
    if not hasattr(jj.AttributionGraph, "to_html"):
        pytest.skip("AttributionGraph.to_html is not there yet")
    path = tmp_path / "view.html"
    out = run(capsys, "graph", "--text", TEXT, "--target", TARGET, "--foil", FOIL, "--html", str(path))
    assert f"wrote {path}" in out and path.stat().st_size > 0


def test_circuit(capsys, tmp_path, shipped):
    """No --reference: the zero baseline (the CLI's default then); the library's own circuit."""
    ids = shipped.tokenize(TEXT)
    circuit = jj.find_circuit(shipped, ids, TARGET, FOIL, mode="zero")
    path = tmp_path / "circuit.json"
    out = run(capsys, "circuit", "--text", TEXT, "--target", TARGET, "--foil", FOIL, "--json", str(path))
    data = json.loads(path.read_text())
    assert data["nodes"] == list(circuit.nodes) and data["mode"] == "zero"
    assert data["faithfulness"] == pytest.approx(circuit.faithfulness, abs=1e-5)
    assert data["faithfulness"] >= 0.8 and data["target"] == 0.8
    assert data["n_components"] == circuit.n_components and data["forward_passes"] == circuit.forward_passes
    assert data["fraction"] == pytest.approx(len(circuit.nodes) / circuit.n_components)
    assert data["graph"]["total"] == pytest.approx(circuit.graph.total, abs=1e-5)
    summary = str(circuit).rsplit(",", 1)[0]          # everything but the wall time
    assert summary in out
    for node in circuit.nodes:
        assert any(line.split()[:1] == [node] for line in out.splitlines())


def test_circuit_mean_mode(capsys, shipped):
    ids = shipped.tokenize(TEXT)
    circuit = jj.find_circuit(shipped, ids, TARGET, FOIL, 0.9, mode="mean", reference=REFERENCE, max_passes=30)
    out = run(capsys, "circuit", "--text", TEXT, "--target", TARGET, "--foil", FOIL, "--faithfulness", "0.9",
              "--reference", *REFERENCE, "--max-passes", "30", "--json", "-")
    data = json.loads(out)
    assert data["nodes"] == list(circuit.nodes) and data["mode"] == "mean" and data["target"] == 0.9
    assert data["faithfulness"] == pytest.approx(circuit.faithfulness, abs=1e-5)
    assert data["forward_passes"] == circuit.forward_passes
    assert data["graph"]["settings"]["reference"] == REFERENCE
