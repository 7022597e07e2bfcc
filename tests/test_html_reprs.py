"""The notebook views (``_repr_html_``) of lens results, n-gram tables, path attributions and attribution
graphs, rendered in headless Chromium and read back from its DOM: every value shown is checked against
one the test computes from the result's own arrays.

The browser tests need Debian's ``chromium`` (``apt-get install chromium``); without a binary they skip.
``JETJAX_HTML_SCREENSHOTS=<dir>`` keeps the screenshots (one PNG per view) in ``<dir>``.
"""

import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import jetjax as jj
from jetjax.html import MAX_LENS_POSITIONS, graph_inline_html, lens_html, ngram_html
from jetjax.ngrams import jet_bigrams
from jetjax.paths.labels import parse_node
from jetjax.testing import tiny_model

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (Debian: apt-get install "
                                    "chromium); the HTML views are checked in a headless browser")

# 19 token strings (the tiny model's vocabulary size): whitespace of every kind, markup, the empty string
VOCAB = ("the", " the", "\n", "\t", " <b>&amp;", "\r\n", "", " king", "KING", "</style><script>x()</script>",
         ",", " my", " lord", "\u200b", " a", "b", " thou", "  art", "\t\n ")
IDS = [3, 1, 4, 1, 5, 9, 2, 6]


def shown(token: str) -> str:
    """What the views must print for ``token``: whitespace as glyphs, other unprintables escaped."""
    out = ""
    for ch in token:
        out += {" ": "\u00b7", "\n": "\u23ce", "\t": "\u21e5"}.get(ch, ch if ch.isprintable() else
                                                                   ch.encode("unicode_escape").decode())
    return out or "\u2205"


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def softmax(x) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def results():
    gpt2, llama = tiny_model(), tiny_model("llama")
    return {
        "lens": dataclasses.replace(jj.iterative_jet_lens(gpt2, IDS, order=1), vocab=VOCAB),
        "joint": dataclasses.replace(jj.joint_jet_lens(gpt2, IDS, order=1, fit_steps=3), vocab=VOCAB),
        "batched": dataclasses.replace(jj.logit_lens(gpt2, np.array([IDS, IDS[::-1]])), vocab=VOCAB),
        "long": jj.logit_lens(llama, np.arange(40) % 19),
        "table": dataclasses.replace(jet_bigrams(gpt2, "emb>mlp0>dec", top_k=4, progress=False), tokens=VOCAB),
        "att": jj.path_attribution(gpt2, IDS, target=5, foil=2, granularity="branch"),
        "search": jj.path_attribution(gpt2, IDS, target=5, foil=2, method="search", k=16),
        "top_paths": jj.top_paths(gpt2, IDS, target=5, foil=2, k=16),
        "graph": dataclasses.replace(jj.attribution_graph(gpt2, IDS, target=5, foil=2),
                                     tokens=tuple(VOCAB[i] for i in IDS)),
    }


# -- the DOM, as the browser built it -----------------------------------------------------------------

class El:
    def __init__(self, tag, attrs):
        self.tag, self.attrs, self.children = tag, attrs, []

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def all(self, tag=None, cls=None):
        for c in self.children:
            if isinstance(c, El):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.attrs.get("class", "").split()):
                    yield c
                yield from c.all(tag, cls)

    def kids(self, tag):
        return [c for c in self.children if isinstance(c, El) and c.tag == tag]


class Tree(HTMLParser):
    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.root = El("#root", {})
        self.stack = [self.root]
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        el = El(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(el)
        if tag not in self.VOID:
            self.stack.append(el)

    def handle_endtag(self, tag):
        while len(self.stack) > 1 and self.stack.pop().tag != tag:
            pass

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def chromium(page: Path, tmp_path, *extra) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *extra, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout


def page_of(fragment: str, tmp_path, name="view") -> Path:
    path = tmp_path / f"{name}.html"
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{name}</title></head><body>'
                    f"{fragment}</body></html>", encoding="utf-8")
    return path


def dom(fragment: str, tmp_path) -> El:
    """The body of the page holding ``fragment``, as Chromium parsed and built it."""
    body = next(Tree(chromium(page_of(fragment, tmp_path), tmp_path, "--dump-dom")).root.all("body"))
    assert not list(body.all("script")), "a view runs no script of its own"
    return body


def number(cell: El) -> float:
    """A number cell's exact value (its title) after checking its text shows it to 4 decimals."""
    value = float(cell.attrs["title"])
    if math.isfinite(value):
        assert abs(float(cell.text()) - value) <= 5.001e-5 * max(1.0, abs(value)), (cell.text(), value)
    return value


# -- lens results --------------------------------------------------------------------------------------

TITLE = re.compile(r"(\S+) \u00b7 position (\d+) \u00b7 input (.*)\np\((.*)\) = (\S+)  \(the final top token\)\n"
                   r"top token (.*): p = (\S+)")


def check_grid(body: El, res, seq=(), positions=None, rows=None):
    """Every cell of the grid against the result's logits: ``p`` of the final top token, the cell's top token,
    its text, its bold mark, and the colour order; returns the number of cells."""
    ids = np.asarray(res.ids)[seq]
    positions = list(range(len(ids))) if positions is None else positions
    rows = list(range(len(res.rows))) if rows is None else rows
    model = softmax(np.asarray(res.model_logits)[seq])
    final = model.argmax(-1)
    expected = {"model": model} | ({"combined": softmax(np.asarray(res.combined)[seq])}
                                   if res.combined is not None else {})
    expected |= {res.rows[r]: softmax(np.asarray(res.logits)[(r,) + seq]) for r in rows}
    tok = (lambda i: VOCAB[i]) if res.vocab is not None else (lambda i: f"#{i}")
    grid = next(body.all("table", "jj-grid"))
    trs = grid.kids("tbody")[0].kids("tr") if grid.kids("tbody") else grid.kids("tr")
    assert [int(th.text()) for th in trs[0].kids("th")[1:]] == positions
    assert [tr.kids("th")[0].text() for tr in trs[1:-1]] == list(expected)[:len(expected) - len(rows)] + \
        [res.rows[r] for r in rows[::-1]]                             # the model on top, h0 at the bottom
    assert [th.text() for th in trs[-1].kids("th")[1:]] == [cut(shown(tok(int(ids[t]))), 8) for t in positions]
    colours = []
    for tr in trs[1:-1]:
        label = tr.kids("th")[0].text()
        cells = tr.kids("td")
        assert len(cells) == len(positions)
        for cell, t in zip(cells, positions):
            m = TITLE.fullmatch(cell.attrs["title"])
            assert m, cell.attrs["title"]
            probs = expected[label][t]
            top = int(probs.argmax())
            assert (m[1], int(m[2]), m[3], m[4], m[6]) == \
                (label, t, repr(tok(int(ids[t]))), repr(tok(int(final[t]))), repr(tok(top)))
            assert float(m[5]) == pytest.approx(probs[final[t]], rel=1e-3, abs=1e-6)
            assert float(m[7]) == pytest.approx(probs[top], rel=1e-3, abs=1e-6)
            assert cell.text() == cut(shown(tok(top)), 7)
            assert ("jj-hit" in cell.attrs.get("class", "")) == (label != "model" and top == final[t])
            rgb = re.search(r"background:#([0-9a-f]{6})", cell.attrs["style"])[1]
            colours.append((probs[final[t]], sum(int(rgb[i:i + 2], 16) for i in (0, 2, 4))))
    # darker where the final top token is more probable
    colours.sort()
    assert all(a[1] >= b[1] for a, b in zip(colours, colours[1:]) if b[0] - a[0] > 0.02)
    return sum(len(tr.kids("td")) for tr in trs)


@needs_chromium
@pytest.mark.parametrize("name", ["lens", "joint"])
def test_lens_grid_in_browser(results, name, tmp_path):
    res = results[name]
    body = dom(res._repr_html_(), tmp_path)
    extra = 2 if res.combined is not None else 1                     # the model's row (and the combined one)
    assert check_grid(body, res) == (len(res.rows) + extra) * len(IDS)
    text = body.text()
    assert f"{res.kind} lens, order {res.order}" in text and "shown" not in text      # nothing was cut
    assert "\u00b7the" in text and "\u23ce" in text                                  # visible whitespace


@needs_chromium
def test_lens_grid_cut_and_batched(results, tmp_path):
    res = results["batched"]
    body = dom(lens_html(res, max_positions=3, max_rows=2), tmp_path)
    n = len(IDS)
    assert check_grid(body, res, seq=(0,), positions=[n - 3, n - 2, n - 1], rows=[0, len(res.rows) - 1]) == 3 * 3
    assert f"sequence 0 of 2 shown; the last 3 of {n} positions shown (0..{n - 4} cut); 2 of {len(res.rows)} rows " \
           "shown" in body.text()
    long = results["long"]                                            # the default bound: the last 32 positions
    body = dom(long._repr_html_(), tmp_path)
    first = 40 - MAX_LENS_POSITIONS
    assert check_grid(body, long, positions=list(range(first, 40))) == (len(long.rows) + 1) * MAX_LENS_POSITIONS
    assert f"the last {MAX_LENS_POSITIONS} of 40 positions shown (0..{first - 1} cut)" in body.text()


def test_lens_grid_nonfinite_row(results):
    """A row whose logits hold NaN shows grey ``n/a`` cells with ``nan`` in their titles, the others their values."""
    res = results["lens"]
    logits = np.asarray(res.logits).copy()
    logits[1, 2, 0] = np.nan
    body = Tree(lens_html(dataclasses.replace(res, logits=logits))).root
    cells = {(tr.kids("th")[0].text(), i): td for tr in body.all("tr") for i, td in enumerate(tr.kids("td"))}
    assert cells[(res.rows[1], 2)].text() == "n/a" and "= nan" in cells[(res.rows[1], 2)].attrs["title"]
    assert "#bbbbbb" in cells[(res.rows[1], 2)].attrs["style"]
    assert sum(td.text() == "n/a" for td in cells.values()) == 1
    final = int(np.asarray(res.model_logits)[3].argmax())
    m = TITLE.fullmatch(cells[(res.rows[1], 3)].attrs["title"])
    assert float(m[5]) == pytest.approx(softmax(logits[1, 3])[final], rel=1e-3, abs=1e-6)


# -- n-gram tables -------------------------------------------------------------------------------------

def token_cells(td: El) -> list[tuple[str, str]]:
    return [(s.text(), s.attrs["title"]) for s in td.all("span", "jj-tok")]


@needs_chromium
@pytest.mark.parametrize("n", [20, 1000])
def test_ngram_table_in_browser(results, n, tmp_path):
    table = results["table"]
    body = dom(table._repr_html_() if n == 20 else ngram_html(table, n=n), tmp_path)
    stored = len(table.global_probs)
    rows = next(body.all("table")).all("tr")
    rows = [tr for tr in rows if tr.kids("td")]
    assert len(rows) == min(n, stored)
    order = np.argsort(-table.global_probs, kind="stable")                 # the table's own ranking, rebuilt
    for rank, (tr, g) in enumerate(zip(rows, order), 1):
        tds = tr.kids("td")
        assert int(tds[0].text()) == rank and number(tds[1]) == float(table.global_probs[g])
        context, nxt = table.global_pairs[g][:-1], table.global_pairs[g][-1]
        assert token_cells(tds[2]) == [(cut(shown(VOCAB[i]), 24), f"id {i}: {VOCAB[i]!r}") for i in context]
        assert token_cells(tds[4]) == [(cut(shown(VOCAB[nxt]), 24), f"id {nxt}: {VOCAB[nxt]!r}")]
    text = body.text()
    assert f"the {min(n, stored)} most probable of the {stored} entries" in text
    assert f"{len(table)} contexts, n=2, top 4 next tokens per context" in text
    if n > stored:        # every context is shown: each kind of whitespace appears as its glyph
        for glyphs in ("\u00b7the", "\u23ce", "\u21e5", "\u00b7<b>&amp;", "\u2205", "\\u200b", "\\r\u23ce"):
            assert glyphs in text, glyphs
        assert not list(body.all("b")) and cut(VOCAB[9], 24) in text           # markup stays text


# -- path attributions ---------------------------------------------------------------------------------

def path_table(body: El) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """``([(label, score)] of the listed paths, {row name: value} of the rows below them)``."""
    table = next(body.all("table"))
    paths, rest = [], {}
    for tr in table.all("tr"):
        tds = tr.kids("td")
        if not tds:
            continue
        if tds[0].kids("code"):
            paths.append((tds[0].text(), number(tds[1])))
        else:
            rest[tds[0].text()] = number(tds[1])
    return paths, rest


@needs_chromium
@pytest.mark.parametrize("name", ["att", "search"])
def test_attribution_table_in_browser(results, name, tmp_path):
    att = results[name]
    body = dom(att._repr_html_(), tmp_path)
    paths, rest = path_table(body)
    scores = np.asarray(att.scores, np.float64)
    largest = np.argsort(-np.abs(scores), kind="stable")[:12]
    assert paths == [(att.labels[i], float(scores[i])) for i in largest]
    n = len(scores)
    listed = "listed " if name == "search" else ""
    assert rest[f"the other {n - 12} paths"] == pytest.approx(scores.sum() - scores[largest].sum(), abs=1e-12)
    assert rest[f"\u03a3 all {n} {listed}paths"] == pytest.approx(scores.sum(), abs=1e-12)
    remainder = rest["remainder (total \u2212 \u03a3 paths)"]
    total = rest["the model's number (total)"]
    assert (remainder, total) == (att.remainder, att.total)
    assert remainder == pytest.approx(att.total - scores.sum(), abs=1e-9)
    split = {k: v for k, v in rest.items() if k.startswith("of which")}
    if name == "search":               # the remainder, split: scored but not listed, and never scored
        s = att.search
        assert split[f"of which: scored, not listed ({s.n_scored - n:,} paths)"] == \
            pytest.approx(s.explored - scores.sum(), abs=1e-9)
        assert split["of which: never scored (exact sum)"] == s.unexplored
        assert sum(split.values()) == pytest.approx(remainder, abs=1e-4 * max(1.0, abs(total)))
    else:
        assert not split
    text = body.text()
    assert f"|remainder| / |total| {abs(att.remainder) / abs(att.total):.3g}" in text
    assert "logit(5) \u2212 logit(2) at position 7" in text


@needs_chromium
def test_top_paths_table_in_browser(results, tmp_path):
    res = results["top_paths"]
    body = dom(res._repr_html_(), tmp_path)
    paths, rest = path_table(body)
    scores = np.asarray(res.scores, np.float64)
    assert paths == [(label, float(s)) for label, s in zip(res.labels[:12], scores[:12])]
    assert rest[f"the other {len(scores) - 12} listed paths"] == pytest.approx(scores[12:].sum(), abs=1e-12)
    assert rest[f"scored, not listed ({res.n_scored - len(scores):,} paths)"] == \
        pytest.approx(res.explored - scores.sum(), abs=1e-12)
    assert rest["never scored (exact sum)"] == res.unexplored
    total = rest.pop("the model's number (total)")
    assert total == res.total
    assert sum(v for _, v in paths) + sum(rest.values()) == pytest.approx(total, abs=1e-4 * max(1.0, abs(total)))
    assert ("certified" in body.text()) and (res.certified == ("not certified" not in body.text()))


# -- the attribution graph -----------------------------------------------------------------------------

def drawn_nodes(page_text: str, tmp_path) -> set[str]:
    path = tmp_path / "inner.html"
    path.write_text(page_text, encoding="utf-8")
    return {el.attrs["data-node"] for el in Tree(chromium(path, tmp_path, "--dump-dom")).root.all()
            if "data-node" in el.attrs}


def expected_nodes(graph) -> set[str]:
    """What the page draws at its default sliders: ``graph.prune()``'s nodes less the constants folded into
    their component, and the logit."""
    small = graph.prune()
    folded = {n for n in small.nodes if parse_node(n).constant and f"{parse_node(n).receiver}@"
              f"{parse_node(n).position}" in graph.nodes}
    return set(small.nodes) - folded | {f"logit@{graph.position}"}


@needs_chromium
def test_graph_inline_in_browser(results, tmp_path):
    graph = results["graph"]
    body = dom(graph._repr_html_(), tmp_path)
    frames = list(body.all("iframe"))
    assert len(frames) == 1 and frames[0].attrs["sandbox"] == "allow-scripts"
    inner = frames[0].attrs["srcdoc"]                   # as the browser read it back from the attribute
    data = json.loads(re.search(r'<script type="application/json" id="graph-data">(.*?)</script>', inner, re.S)[1])
    assert data["nodes"] == list(graph.nodes) and data["tokens"] == [VOCAB[i] for i in IDS]
    assert len(data["edges"]) == np.count_nonzero(graph.edges)
    assert drawn_nodes(inner, tmp_path) == expected_nodes(graph)
    assert "too large" not in body.text()


@needs_chromium
def test_graph_inline_bounded(results, tmp_path):
    graph = results["graph"]
    small = graph.prune()
    n_small = int(np.count_nonzero(small.edges))
    body = dom(graph_inline_html(graph, max_edges=n_small), tmp_path)       # too large: the pruned graph
    inner = next(body.all("iframe")).attrs["srcdoc"]
    data = json.loads(re.search(r'id="graph-data">(.*?)</script>', inner, re.S)[1])
    assert data["nodes"] == list(small.nodes) and len(data["edges"]) == n_small
    assert f"shown is graph.prune() ({len(small)} nodes, {n_small:,} edges)" in body.text()
    body = dom(graph_inline_html(graph, max_edges=n_small - 1), tmp_path)   # still too large: the text table
    assert not list(body.all("iframe"))
    assert next(body.all("pre")).text() == graph.table(20)


# -- every view ----------------------------------------------------------------------------------------

VIEWS = ["lens", "joint", "table", "att", "search", "top_paths", "graph"]


@pytest.mark.parametrize("name", VIEWS)
def test_views_are_self_contained_and_deterministic(results, name):
    text = results[name]._repr_html_()
    assert text == results[name]._repr_html_()
    outside = re.sub(r'srcdoc="[^"]*"', "", text)                 # the graph page is checked in its own tests
    assert not re.search(r"https?:|\bsrc=|\bhref=|@import|url\(|<script", outside)
    assert len(text) < 100_000


@needs_chromium
@pytest.mark.parametrize("name", VIEWS)
def test_screenshot(results, name, tmp_path):
    keep = os.environ.get("JETJAX_HTML_SCREENSHOTS")
    out = Path(keep) if keep else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"jetjax_html_{name}.png"
    chromium(page_of(results[name]._repr_html_(), tmp_path, name), tmp_path, f"--screenshot={png}",
             "--window-size=1000,760", "--virtual-time-budget=2000")
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
