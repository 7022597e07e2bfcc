"""CLI polish (issues 34 and 36): outputs that cannot be written are refused before any work; a Rust
panic in the tokenizer is one line, not a traceback; inputs longer than the model's context warn;
printed tables never run numbers together; picture titles lie inside the picture.
"""

import re
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest

from jetjax.cli import app as cli
from jetjax.cli import common

TEXT = "To be, or not to be"
SHAKESPEARE = ["--model", "shakespeare"]


@pytest.fixture(autouse=True)
def no_compile_cache(monkeypatch):
    monkeypatch.setenv("JETJAX_COMPILE_CACHE", "off")
    monkeypatch.setenv("RUST_BACKTRACE", "1")   # main() sets it to 0 for the run; restored after the test


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        pytest.fail("a model was loaded before the bad output path was reported")

    monkeypatch.setattr("jetjax.io.assets.load_model", refuse)


@pytest.fixture
def unwritable(tmp_path):
    """A directory no file can be created in, even by root (read-only mode, else the immutable attribute)."""
    d = tmp_path / "locked"
    d.mkdir()
    d.chmod(0o500)
    if common.unwritable(d) is None:   # root ignores the mode
        d.chmod(0o700)
        if subprocess.run(["chattr", "+i", str(d)], capture_output=True).returncode != 0:
            pytest.skip("cannot make an unwritable directory here")
    yield d
    subprocess.run(["chattr", "-i", str(d)], capture_output=True)
    d.chmod(0o700)


def one_line(capsys, argv):
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return code, lines[0], out


# -- outputs that cannot be written: refused before the model loads ------------------------------

@pytest.mark.parametrize("argv, option", [
    (["lens", "--text", TEXT, "--json", "{d}/out.json"], "--json"),
    (["lens", "--text", TEXT, "--json", "{d}/new/sub/out.json"], "--json"),
    (["lens", "--text", TEXT, "--out", "{d}/pngs"], "--out"),
    (["lens", "--text", TEXT, "--out", "{d}"], "--out"),
    (["bigrams", "--out", "{d}/table"], "--out"),
    (["attribute", "--text", TEXT, "--target", " be", "--json", "{d}/a.json"], "--json"),
    (["graph", "--text", TEXT, "--target", " be", "--html", "{d}/g.html"], "--html"),
    (["diff", "--model-b", "shakespeare", "--png", "{d}/bars.png"], "--png"),
    (["cache", "--json", "{d}/cache.json"], "--json"),
])
def test_unwritable_output_refused_before_work(argv, option, unwritable, no_model, capsys):
    argv = [a.format(d=unwritable) for a in argv]
    code, line, _ = one_line(capsys, argv + SHAKESPEARE * (argv[0] != "cache"))
    assert code == 2
    assert line.startswith(f"jetjax {argv[0]}: error: {option} {unwritable}"), line
    assert "cannot write there" in line and "give a writable path" in line
    assert not any(unwritable.iterdir())


def test_existing_output_file_that_cannot_be_opened(tmp_path, no_model, capsys):
    f = tmp_path / "out.json"
    f.write_text("{}")
    f.chmod(0o400)
    try:
        with open(f, "r+b"):
            pytest.skip("root writes a read-only file")
    except OSError:
        pass
    code, line, _ = one_line(capsys, ["lens", "--text", TEXT, "--json", str(f), *SHAKESPEARE])
    assert code == 2 and f"--json {f}: cannot write this file" in line


def test_writable_outputs_pass_and_leave_no_probe(tmp_path):
    common.check_json(str(tmp_path / "a" / "b.json"))
    common.check_dir_option(str(tmp_path / "pngs"))
    common.check_output_file(str(tmp_path / "x.png"), "--png")
    assert list(tmp_path.iterdir()) == []      # the probe files are gone, no folder made yet


def test_demo_out_unwritable_refused_before_the_model(unwritable, no_model, capsys):
    code, line, _ = one_line(capsys, ["demo", "--out", str(unwritable / "demo")])
    assert code == 2 and line.startswith(f"jetjax demo: error: --out {unwritable / 'demo'}: cannot write there")


# -- a Rust panic in the tokenizer: one line -----------------------------------------------------

def bad_tokenizer_dir(tmp_path):
    """The shipped model with a vocab.json + merges.txt whose merge result is missing: tokenizers panics."""
    from jetjax.io.assets import shipped_model_path

    d = tmp_path / "badtok"
    d.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(shipped_model_path() / name, d / name)
    (d / "vocab.json").write_text('{"a": 0, "b": 1}')
    (d / "merges.txt").write_text("#version: 0.2\na b\n")
    return d


def a_real_panic():
    from tokenizers import models

    try:
        models.BPE(vocab={"a": 0, "b": 1}, merges=[("a", "b")])
    except BaseException as e:   # noqa: B036 (PanicException is a BaseException)
        assert common.is_panic(e), type(e)
        return e
    pytest.skip("this tokenizers version does not panic on a merge without its result")


def test_tokenizer_panic_at_load_is_one_line(tmp_path, capfd):
    d = bad_tokenizer_dir(tmp_path)
    assert cli.main(["lens", "--model", str(d), "--text", "ab"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"jetjax lens: error: --model {d}: reading its tokenizer or weights failed inside "
                                "a Rust library (panic: "), lines[-1]
    assert len(lines) <= 4, err   # Rust's own hook writes its message (no backtrace) before ours


def test_tokenizer_panic_on_text_is_one_line(monkeypatch, capsys):
    panic = a_real_panic()

    def tokenize(self, text, **kw):
        raise panic

    monkeypatch.setattr("jetjax.models.model.Model.tokenize", tokenize)
    code, line, _ = one_line(capsys, ["lens", "--text", TEXT, *SHAKESPEARE])
    assert code == 2
    assert line.startswith("jetjax lens: error: --text: the model's tokenizer failed inside its Rust library "
                           "(panic: range end index"), line


def test_panic_anywhere_else_is_one_line(monkeypatch, capsys):
    panic = a_real_panic()
    from jetjax.models.model import Model

    real = Model.tokenize

    def tokenize(self, text, **kw):
        if text == " be":     # the --target string: tokenized outside input_ids
            raise panic
        return real(self, text, **kw)

    monkeypatch.setattr("jetjax.models.model.Model.tokenize", tokenize)
    code, line, _ = one_line(capsys, ["attribute", "--text", TEXT, "--target", " be", *SHAKESPEARE])
    assert code == 2
    assert line.startswith("jetjax attribute: error: a compiled library (tokenizers or safetensors) failed: panic: "
                           "range end index"), line
    with pytest.raises(BaseException) as e:   # --debug: the real exception
        cli.main(["attribute", "--text", TEXT, "--target", " be", *SHAKESPEARE, "--debug"])
    assert common.is_panic(e.value)


# -- inputs longer than the context --------------------------------------------------------------

def test_long_input_warns(capsys):
    model = SimpleNamespace(config=SimpleNamespace(context_length=4, n_positions=None))
    args = SimpleNamespace(command="lens")
    common.warn_long_input(args, model, np.zeros(4, np.int32), "--text")
    assert capsys.readouterr().err == ""
    common.warn_long_input(args, model, np.zeros((2, 6), np.int32), "--ids")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["jetjax lens: warning: --ids is 6 tokens long, more than the model's context length (4): "
                   "positions past 3 were never trained on, so what the model (and every result) does there "
                   "means little"]
    rotary = SimpleNamespace(config=SimpleNamespace(n_positions=None))     # no length known: nothing said
    common.warn_long_input(args, rotary, np.zeros(10_000, np.int32), "--text")
    assert capsys.readouterr().err == ""


def test_learned_positions_past_the_table_still_refused(capsys):
    from jetjax.io.assets import load_shipped

    n = load_shipped().config.n_positions
    code, line, _ = one_line(capsys, ["lens", "--ids", ",".join(["5"] * (n + 1)), *SHAKESPEARE])
    assert code == 2 and f"longer than the model's position table ({n})" in line


# -- printed tables ------------------------------------------------------------------------------

def test_number_cells_never_touch():
    from jetjax.viz import number_cell, text_table

    values = [-0.1849, 0.0, 17634891.64, -3.2e12, float("inf"), float("nan"), 123456.0, 1e-9]
    for v in values:
        for width, dec in ((5, 2), (7, 3), (9, 2)):
            cell = number_cell(v, width, dec)
            assert len(cell) >= width
            if np.isfinite(v):      # what is printed is the value, to the digits shown
                assert float(cell) == pytest.approx(v, rel=5e-2, abs=10 ** -dec)
    lines = text_table(["", "a", "b", "c"], [["h0", -0.1849, 0.0, 17634891.64], ["h1", 1e15, -1e15, 2.5]],
                       [3, 6, 5, 6], [None, 3, 2, 2])
    for line in lines[1:]:
        fields = line.split()
        assert len(fields) == 4, line
    assert [float(x) for x in lines[1].split()[1:]] == pytest.approx([-0.185, 0.0, 1.76e7], rel=3e-2, abs=1e-3)


def test_demo_lens_table_keeps_huge_kl_apart():
    """The bug: the order-2 row h0 printed as `-0.185   0.0017634891.64` (top-1 and KL fused)."""
    from jetjax.studies.findings import LensStudy

    kl = np.array([[0.5, 0.25, 0.0], [3.0, 1.5, 0.0], [17634891.64, 4.2e13, 0.0]])
    cos = np.array([[0.1, 0.5, 1.0], [0.2, 0.6, 1.0], [-0.185, 0.3, 1.0]])
    top1 = np.array([[0.0, 0.5, 1.0], [0.1, 0.6, 1.0], [0.0, 0.25, 1.0]])
    study = LensStudy((0, 1, 2), ("h0", "h1", "h2"), {"cosine": cos, "top1": top1, "kl": kl}, 3, 12)
    lines = study.table().splitlines()
    assert lines[1].split() == ["cos", "top1", "KL"] * 3
    for r, line in enumerate(lines[2:]):
        fields = line.split()
        assert fields[0] == f"h{r}" and len(fields) == 10, line
        got = np.array([float(x) for x in fields[1:]]).reshape(3, 3)
        want = np.stack([cos[:, r], top1[:, r], kl[:, r]], axis=1)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=6e-3)
    # the columns line up: every row is as long as the header
    assert len({len(line) for line in lines[1:]}) == 1


def test_demo_bigram_table_keeps_huge_values_apart():
    from jetjax.studies.findings import BigramStudy

    def result(hit, rho, kl, copy, same):
        return SimpleNamespace(agreement=SimpleNamespace(top1_hit_rate=hit, rank_correlation=rho, kl=kl),
                               copy_share=copy, model_top1=same)

    want = {"emb>dec": (0.1, 0.2, 3.5, 0.5, 0.1), "emb>mlp0>dec": (0.3, -0.25, 98765432.1, 0.0, 1.0),
            "emb>attn0>dec": (1.0, -1.0, 1e300, 1.0, 0.0)}
    study = SimpleNamespace(results={k: result(*v) for k, v in want.items()},
                            unigram={"top1_hit_rate": 0.05, "rank_correlation": 0.4, "kl": 2.25})
    lines = BigramStudy.table(study, list(want)).splitlines()
    assert lines[0].split() == ["path", "set", "hit@1", "rho", "KL", "copy", "=model"]
    for line, (name, values) in zip(lines[1:], want.items()):
        fields = line.split()
        assert fields[0] == name and len(fields) == 6, line
        np.testing.assert_allclose([float(x) for x in fields[1:]], values, rtol=2e-2, atol=6e-3)
    assert lines[-1].split() == ["unigram", "of", "the", "corpus", "0.050", "0.400", "2.25"]


# -- pictures ------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tokens", [2, 5])
def test_lens_picture_title_inside_the_figure(n_tokens, tmp_path, monkeypatch):
    import jetjax.lenses.lens as lenses
    from jetjax import viz
    from jetjax.testing import tiny_model

    saved = []
    real_save = viz._save

    def save(fig, path, **kw):
        real_save(fig, path, **kw)
        saved.append(fig)

    monkeypatch.setattr(viz, "_save", save)
    model = tiny_model(d_model=8, d_head=4, d_mlp=16, vocab_size=11, scale=0.02)
    res = lenses.iterative_jet_lens(model, list(range(1, n_tokens + 1)), order=1)
    path = viz.lens_table(res, tmp_path / "lens.png")
    (fig,) = saved
    ax = fig.axes[0]
    title = ax.title.get_text()
    # the whole title is there (wrapped, never cut), and every text lies inside the figure
    assert " ".join(title.split()) == "iterative jet lens, order 1 (block): top token per cell; bold = model's top token"
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    for text in (ax.title, ax.xaxis.label):
        box = text.get_window_extent(renderer)
        assert frame.x0 - 0.5 <= box.x0 and box.x1 <= frame.x1 + 0.5, (text.get_text(), box, frame)
        assert frame.y0 - 0.5 <= box.y0 and box.y1 <= frame.y1 + 0.5, (text.get_text(), box, frame)
    from matplotlib.image import imread

    h, w = imread(path).shape[:2]
    # what was measured is what was saved (at the picture's own dpi, text and frame scale together)
    assert all(abs(got - want * 110) <= 1 for got, want in zip((w, h), fig.get_size_inches()))


def test_long_title_wraps_at_the_semicolon_first():
    from matplotlib.figure import Figure

    from jetjax.viz import _fit_title

    fig = Figure(figsize=(4, 2), layout="constrained")
    ax = fig.add_subplot()
    t = ax.set_title("a fairly long first part of a title; and a second part after it")
    _fit_title(fig, t)
    assert t.get_text().splitlines()[0].endswith(";")
    assert re.sub(r"\s+", " ", t.get_text()) == "a fairly long first part of a title; and a second part after it"


# -- dtype ---------------------------------------------------------------------------------------

@pytest.fixture
def x64_restored():
    import jax

    before = jax.config.jax_enable_x64
    yield
    jax.config.update("jax_enable_x64", before)


@pytest.mark.parametrize("dtype", ["float64", "bfloat16"])
def test_dtype_is_honoured_never_silently_float32(dtype, monkeypatch, capsys, x64_restored):
    """--dtype float64 switches on JAX's 64-bit mode (without it JAX would truncate to float32 with only a
    library warning); the parameters are then float64 indeed."""
    import jax
    import jax.numpy as jnp

    from jetjax.io import assets

    jax.config.update("jax_enable_x64", False)
    loaded = []
    real = assets.load_model

    def spy(*a, **k):
        loaded.append(real(*a, **k))
        return loaded[-1]

    monkeypatch.setattr("jetjax.io.assets.load_model", spy)
    assert cli.main(["lens", "--text", TEXT, "--orders", "0", "--dtype", dtype, *SHAKESPEARE]) == 0
    leaves = jax.tree.leaves(loaded[0].params)
    assert {leaf.dtype for leaf in leaves if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(dtype)}
    assert "cos" in capsys.readouterr().out


def test_dtype_choices_named(capsys):
    code, line, _ = one_line(capsys, ["lens", "--text", TEXT, "--dtype", "int8", *SHAKESPEARE])
    assert code == 2 and "--dtype" in line and "float64" in line and "'int8'" in line
