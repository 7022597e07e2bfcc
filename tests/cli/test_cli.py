"""The `jetjax` command on the shipped model: every subcommand, its --json fields, and bad input."""

import json

import numpy as np
import pytest

import jetjax as jj
from jetjax.cli import app as cli
from jetjax.cli import common
from jetjax.training.toy import shipped_model_path

pytestmark = pytest.mark.product   # tier: the product on real models and the CLI end to end

TEXT = "To be, or not to be, that is the"


MODEL_COMMANDS = {"lens", "bigrams", "paths", "attribute", "diff", "index", "agree", "demo"}


def run(capsys, *argv):
    """Run the CLI; on the small shipped model unless ``--model`` is given (the default is SmolLM2
    when its wheel is installed, which test_real_model.py covers)."""
    argv = list(argv)
    if argv[0] in MODEL_COMMANDS and "--model" not in argv:
        argv += ["--model", "shakespeare"]
    try:
        code = cli.main(argv)
    except SystemExit as e:  # argparse's errors (one line, exit status 2)
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, tmp_path, *argv):
    path = tmp_path / "out.json"
    code, out, err = run(capsys, *argv, "--json", str(path))
    assert code == 0, err
    return json.loads(path.read_text()), out


@pytest.fixture(scope="module")
def shipped():
    return jj.load_shipped()


def test_lens(capsys, tmp_path, shipped):
    data, out = run_json(capsys, tmp_path, "lens", "--text", TEXT, "--orders", "0", "1", "--out", str(tmp_path / "png"))
    assert data["tokens"] == shipped.token_strings(shipped.tokenize(TEXT))
    assert set(data["lenses"]) == {"order 0", "order 1"}
    assert "h4" in out and (tmp_path / "png" / "lens_order1.png").stat().st_size > 10_000
    assert (tmp_path / "png" / "lens_metrics.png").is_file()
    # --json - keeps stdout pure JSON
    code, out, _ = run(capsys, "lens", "--ids", "5,6,7", "--orders", "0", "--json", "-")
    assert code == 0 and json.loads(out)["tokens"] == shipped.token_strings([5, 6, 7])


def test_bigrams_paths_attribute(capsys, tmp_path, shipped):
    data, out = run_json(capsys, tmp_path, "bigrams", "--paths", "emb>mlp0>dec", "--top", "5", "--quiet")
    assert data["paths"] == ["emb>mlp0>dec"] and len(data["top"]) == 5
    assert {"context", "next", "prob"} <= set(data["top"][0])
    probs = [t["prob"] for t in data["top"]]
    assert probs == sorted(probs, reverse=True) and 0 < probs[0] <= 1

    data, _ = run_json(capsys, tmp_path, "paths", "--text", TEXT, "--max-length", "1", "--top", "3")
    assert data["n_paths"] == 1 + shipped.config.n_layers and len(data["top"]) == 3
    norms = [t["norm"] for t in data["top"]]
    assert norms == sorted(norms, reverse=True)

    ids = shipped.tokenize(TEXT)
    logits = np.asarray(shipped.logits(ids))[-1]
    first, second = (int(i) for i in np.argsort(-logits)[:2])
    data, out = run_json(capsys, tmp_path, "attribute", "--text", TEXT, "--target", str(first),
                         "--foil", str(second))
    assert data["n_paths"] == 2 ** shipped.config.n_layers
    assert data["total"] == pytest.approx(float(logits[first] - logits[second]), abs=1e-4)
    assert data["total"] == pytest.approx(sum(p["score"] for p in data["paths"]) + data["remainder"], abs=1e-3)
    assert "top paths" in out


def test_diff_index_agree(capsys, tmp_path):
    data, _ = run_json(capsys, tmp_path, "diff", "--model-b", str(shipped_model_path()), "--top-k", "3", "--quiet")
    assert {"gained_prob", "lost_prob", "gained_rank", "lost_rank"} <= set(data)
    assert all(abs(r["delta"]) < 1e-6 for r in data["gained_prob"])   # a model against itself: no change

    keywords = tmp_path / "words.txt"
    keywords.write_text("king\nlord\nlove\n")
    data, _ = run_json(capsys, tmp_path, "index", "--keywords", str(keywords), "--quiet")
    mass = data["models"]["shakespeare"][str(keywords)]
    assert 0 < mass["all_contexts"] < 1 and mass["uniform"] > 0 and mass["n_words"] == 3

    data, out = run_json(capsys, tmp_path, "agree", "--paths", "emb>mlp0>dec", "--min-count", "20", "--quiet")
    assert {"top1_hit_rate", "rank_correlation", "kl", "unigram", "n_contexts"} <= set(data)


def test_diff_and_index_with_an_adapter(capsys, tmp_path, shipped):
    """--adapter compares the model with itself plus a LoRA adapter: an MLP-only adapter changes
    emb>mlp0>dec and leaves emb>dec (no MLP on it) exactly as it was."""
    from jetjax.io.adapters import init_lora, merge_adapter, save_adapter

    adapter = init_lora(shipped, rank=2, targets=("c_fc",), layers=[0])
    rng = np.random.default_rng(0)
    adapter = adapter.with_weights(adapter.a, {k: rng.standard_normal(b.shape).astype(np.float32)
                                               for k, b in adapter.b.items()})
    path = save_adapter(adapter, tmp_path / "mlp0.safetensors")
    png = tmp_path / "pics" / "bars.png"
    data, out = run_json(capsys, tmp_path, "diff", "--adapter", str(path), "--paths", "emb>mlp0>dec", "--top", "5",
                         "--top-k", "3", "--png", str(png), "--quiet")
    top = data["gained_prob"][0]
    assert top["delta"] > 0.05 and png.stat().st_size > 10_000
    tuned = merge_adapter(shipped, adapter)
    ctx, nxt = top["context_ids"][0], top["next_id"]
    for model, key in ((shipped, "p_a"), (tuned, "p_b")):   # the path composed by hand: U·LN_f(MLP_0(E[z]))
        logits = np.asarray(model.decode(model.mlp(0, model.token_embed(np.array([[ctx]])))))[0, -1]
        p = np.exp(logits - logits.max())
        assert top[key] == pytest.approx(p[nxt] / p.sum(), abs=1e-5)
    data, _ = run_json(capsys, tmp_path, "diff", "--adapter", str(path), "--paths", "emb>dec", "--top", "3",
                       "--top-k", "2", "--quiet")
    assert all(r["delta"] == 0.0 for r in data["gained_prob"] + data["lost_prob"])

    words = tmp_path / "kw.txt"
    words.write_text("king\nlord\n")
    data, _ = run_json(capsys, tmp_path, "index", "--keywords", str(words), "--adapter", str(path),
                       "--paths", "emb>mlp0>dec", "--quiet")
    a, b = data["models"]["shakespeare"][str(words)], data["models"][f"shakespeare + {path}"][str(words)]
    assert a["all_contexts"] != b["all_contexts"] and a["uniform"] == b["uniform"]


def test_passthrough_commands(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0 and "--out" in capsys.readouterr().out


def test_bench_dtypes(capsys, tmp_path):
    """One benchmark in both parameter dtypes: a summary row and a result file per dtype."""
    code, out, err = run(capsys, "bench", "--only", "jet_order", "--quick", "--dtype", "float32", "bfloat16",
                         "--out", str(tmp_path / "bench"))
    assert code == 0, err
    summary = json.loads((tmp_path / "bench" / "summary.json").read_text())
    assert summary["dtypes"] == ["float32", "bfloat16"] and summary["device_kind"]
    assert [(r["benchmark"], r["dtype"], r["status"]) for r in summary["runs"]] == [
        ("jet_order", "float32", "ok"), ("jet_order", "bfloat16", "ok")]
    for run_, stem in zip(summary["runs"], ("jet_order", "jet_order_bfloat16")):
        path = tmp_path / "bench" / f"{stem}.json"
        assert run_["result"] == str(path)
        result = json.loads(path.read_text())
        assert result["meta"]["dtype"] == run_["dtype"] and result["meta"]["activation_dtype"] == "float32"
        assert [r["order"] for r in result["rows"]] == [1, 2]
        for row in result["rows"]:  # same weights on both sides: jet agrees with nested jvp to float32 rounding
            assert row["jet_run_ms"] > 0 and row["jvp_run_ms"] > 0 and row["max_rel_diff"] < 1e-4
        heading = (tmp_path / "bench" / f"{stem}.md").read_text().splitlines()[0]
        assert ("bfloat16 weights" in heading) == (run_["dtype"] == "bfloat16")
    assert "| jet_order | bfloat16 | ok |" in (tmp_path / "bench" / "summary.md").read_text()


def test_demo(capsys, tmp_path):
    code, out, err = run(capsys, "demo", "--out", str(tmp_path / "demo"))
    assert code == 0, err
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert {"lens", "bigrams", "circuit", "agreement"} <= set(summary)
    assert summary["circuit"]["faithfulness"] >= 0.8
    for name in ("lens_order0.png", "lens_order1.png", "lens_metrics.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 10_000
    assert "iterative jet lens, order 1" in out


def test_shipped_model_findings(shipped):
    """What the issue asks us to report, held as checks on the shipped artefact."""
    from jetjax.ngrams import corpus_agreement, jet_bigrams

    text = (shipped_model_path() / "validation.txt").read_text(encoding="utf-8")
    table = jet_bigrams(shipped, "emb>mlp0>dec", top_k=5, progress=False)
    agree = corpus_agreement(table, text, shipped, min_count=1, n_contexts=500)
    assert agree.n_contexts == 500
    assert agree.top1_hit_rate > 2 * agree.unigram["top1_hit_rate"]


@pytest.mark.parametrize("argv,message", [
    (["lens", "--model", "/no/such/dir", "--text", "a"], "no such file or directory"),
    (["lens", "--model", "missing.gguf", "--text", "a"],
     "no such file or directory (model names: gemma3-270m, shakespeare, smollm2)"),
    (["diff", "--model", "shakespeare", "--model-b", "./nope"], "--model-b './nope': no such file"),
    (["lens", "--text", TEXT, "--layers", "99"], "out of range"),
    (["lens", "--text", TEXT, "--layers", "one"], "comma-separated integers"),
    (["lens", "--text", TEXT, "--rows", "99"], "row 99 is out of range"),
    (["lens", "--text", TEXT, "--rows", "1,x"], "--rows takes comma-separated integers"),
    (["index", "--keywords", "/no/such/words.txt"], "cannot read keyword file"),
    (["attribute", "--text", TEXT, "--target", "nonexistent-multitoken-word"], "expected exactly one"),
    (["agree", "--corpus", "/no/such/corpus.txt"], "no such file"),
    # issue 14: counts, ids, targets, paths and files named by their option, before any work
    (["bigrams", "--top", "-5"], "--top must be an int >= 0, got -5"),
    (["attribute", "--text", TEXT, "--target", " be", "--top", "-2"], "--top must be an int >= 0, got -2"),
    (["lens", "--text", TEXT, "--top-k", "0"], "--top-k must be an int >= 1, got 0"),
    (["lens", "--text", TEXT, "--orders", "100"], f"--orders must be an int in 0..{common.MAX_ORDER}"),
    (["lens", "--ids", "1,2.5"], "--ids takes comma-separated token ids (ints), got '1,2.5'"),
    (["lens", "--ids", "-1,2"], "--ids: token id -1 is negative"),
    (["lens", "--ids", "1,99999"], "--ids: token id 99999 is out of range for a vocabulary of 4096"),
    (["attribute", "--text", TEXT, "--target", "-5"], "--target -5 is a negative token id"),
    (["attribute", "--text", TEXT, "--target", "4096"], "--target token id 4096 is out of range"),
    (["lens", "--text", TEXT, "--fit-steps", "3"], "--fit-steps needs --joint"),
    (["paths", "--text", TEXT, "--ids", "1,2"], "pass --text or --ids, not both"),
    (["lens", "--model", "", "--text", TEXT], "--model is empty"),
    (["index", "--keywords", "/no/such/words.txt", "--compare", "./nope"], "cannot read keyword file"),
    (["bigrams", "--paths", "emb>mlp9>dec"], "--paths: path 'emb>mlp9>dec'"),
])
def test_bad_input_is_one_line(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith("jetjax ")


def test_out_that_is_a_file(capsys, tmp_path):
    """--out names a directory: a file there is refused, naming it, before anything is computed."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv in (["lens", "--text", TEXT, "--out", str(afile)], ["bigrams", "--out", str(afile)]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert err.strip() == f"jetjax {argv[0]}: error: --out {afile} is a file; --out takes a directory"
    assert afile.read_text() == "x"


def test_good_input_edge_cases(capsys, tmp_path, shipped):
    """Inputs the checks must let through: text starting with '-', repeated orders, --debug after the
    command, a digit string as text (text:), a --top above the sweep's default global 100, a BOM."""
    code, out, err = run(capsys, "lens", "--text", "-hello", "--orders", "0", "0", "--json", "-", "--debug")
    assert code == 0, err
    data = json.loads(out)
    assert data["tokens"] == shipped.token_strings(shipped.tokenize("-hello"))
    assert list(data["lenses"]) == ["order 0"]

    as_text, _ = run_json(capsys, tmp_path, "attribute", "--text", TEXT, "--target", "text:1", "--max-length", "1")
    as_id, _ = run_json(capsys, tmp_path, "attribute", "--text", TEXT, "--target", "1", "--max-length", "1")
    assert as_text["target"] == int(shipped.tokenize("1")[0]) != 1 and as_text["target_str"] == "1"
    assert as_id["target"] == 1 and as_id["target_str"] == shipped.detokenize([1])

    data, _ = run_json(capsys, tmp_path, "bigrams", "--top", "150", "--quiet")
    probs = [t["prob"] for t in data["top"]]
    assert len(probs) == 150 and probs == sorted(probs, reverse=True)

    plain, bom = tmp_path / "plain.txt", tmp_path / "bom.txt"
    plain.write_text("king\nlord\n", encoding="utf-8")
    bom.write_bytes(b"\xef\xbb\xbfking\nlord\n")
    data, _ = run_json(capsys, tmp_path, "index", "--keywords", str(plain), str(bom), "--quiet")
    masses = data["models"]["shakespeare"]
    assert masses[str(bom)] == masses[str(plain)] and masses[str(bom)]["n_words"] == 2
