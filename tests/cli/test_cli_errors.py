"""Bad `jetjax` command lines (issue 14): each is refused with exit status 2 and ONE line on stderr
that starts with "jetjax ", names the option / file / value and says what is accepted, before any
model is loaded (or, for what needs the model, before any lens, path or sweep is computed).

Fast: no test here computes a lens or sweeps a table (the heavy functions fail the test if called).
"""

import json
import shutil

import pytest

from jetjax.cli import app as cli
from jetjax.cli import common
from jetjax.training.toy import shipped_model_path

TEXT = "To be, or not to be, that is the"
SHAKESPEARE = ["--model", "shakespeare"]


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: the error must come first."""
    def refuse(*a, **k):
        pytest.fail("a model was loaded before the bad argument was reported")  # BaseException: not caught by main

    monkeypatch.setattr("jetjax.io.assets.load_model", refuse)


@pytest.fixture
def no_work(monkeypatch):
    """Computing a lens, paths, an attribution or a sweep fails the test (loading the model is allowed)."""
    def refuse(*a, **k):
        pytest.fail("heavy work started before the bad argument was reported")

    for name in ("jetjax.ngrams.jet_bigrams", "jetjax.lenses.lens.iterative_jet_lens", "jetjax.lenses.lens.joint_jet_lens",
                 "jetjax.reduce_paths", "jetjax.path_attribution", "jetjax.attribution_graph",
                 "jetjax.find_circuit"):
        monkeypatch.setattr(name, refuse)


def one_line_error(capsys, argv):
    """Run the CLI (parse errors exit through SystemExit); the exit status and the single stderr line."""
    try:
        code = cli.main(list(argv))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    # "jetjax <command>: error: ..."; "jetjax: error: ..." when no command was given
    assert lines[0].startswith("jetjax " if argv else "jetjax: error: "), lines[0]
    return code, lines[0]


@pytest.fixture
def files(tmp_path):
    """A plain file, a binary file, an empty file, a Latin-1 file, a BOM file and a directory."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary.txt").write_bytes(b"king\x00lord\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "latin1.txt").write_bytes("k\xf6nig\n".encode("latin-1"))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfking\n")
    (tmp_path / "words.txt").write_text("king\nlord\n")
    (tmp_path / "adir").mkdir()
    return tmp_path


MAX = common.MAX_ORDER
GRAPH = ["graph", "--text", TEXT, "--target", " be"]
CIRCUIT = ["circuit", "--text", TEXT, "--target", " be"]

# (argv with {d} for the files directory, what the one line must contain)
BEFORE_LOADING = [
    # 1. counts: negative or zero where meaningless, refused by argparse types that name the option
    (["bigrams", "--top", "-5"], "--top must be an int >= 0, got -5"),
    (["paths", "--text", TEXT, "--top", "-5"], "--top must be an int >= 0, got -5"),
    (["attribute", "--text", TEXT, "--target", " be", "--top", "-2"], "--top must be an int >= 0, got -2"),
    (["diff", "--model-b", "shakespeare", "--top", "-3"], "--top must be an int >= 0, got -3"),
    (["bigrams", "--top", "x"], "--top must be an int >= 0, got 'x'"),
    (["lens", "--text", TEXT, "--top-k", "0"], "--top-k must be an int >= 1, got 0"),
    (["lens", "--text", TEXT, "--top-k", "-1"], "--top-k must be an int >= 1, got -1"),
    (["lens", "--text", TEXT, "--top-k", "2.5"], "--top-k must be an int >= 1, got '2.5'"),
    (["bigrams", "--top-k", "0"], "--top-k must be an int >= 1, got 0"),
    (["diff", "--model-b", "shakespeare", "--top-k", "-1"], "--top-k must be an int >= 1, got -1"),
    (["index", "--keywords", "{d}/words.txt", "--top-k", "0"], "--top-k must be an int >= 1, got 0"),
    (["agree", "--top-k", "0"], "--top-k must be an int >= 1, got 0"),
    (["lens", "--text", TEXT, "--joint", "--fit-steps", "-1"], "--fit-steps must be an int >= 0, got -1"),
    (["lens", "--text", TEXT, "--orders", "-1"], f"--orders must be an int in 0..{MAX}"),
    (["lens", "--text", TEXT, "--orders", "0", "100"], f"--orders must be an int in 0..{MAX}"),
    (["bigrams", "--order", "-1"], f"--order must be an int in 0..{MAX}"),
    (["bigrams", "--order", "100"], "got 100"),
    (["paths", "--text", TEXT, "--order", "100"], f"--order must be an int in 0..{MAX}"),
    (["attribute", "--text", TEXT, "--target", " be", "--order", "-1"], f"--order must be an int in 0..{MAX}"),
    (["paths", "--text", TEXT, "--max-length", "-1"], "--max-length must be an int >= 0, got -1"),
    (["paths", "--text", TEXT, "--position", "x"], "--position must be an int, got 'x'"),
    (["agree", "--min-count", "0"], "--min-count must be an int >= 1, got 0"),
    (["agree", "--contexts", "-5"], "--contexts must be an int >= 0, got -5"),
    # 2. --ids
    (["lens", "--ids", "1,2.5"], "--ids takes comma-separated token ids (ints), got '1,2.5'"),
    (["lens", "--ids", "1,,2"], "--ids takes comma-separated token ids (ints), got '1,,2'"),
    (["lens", "--ids", ""], "--ids is empty"),
    (["paths", "--ids", "-1,2"], "--ids: token id -1 is negative"),
    (["lens", "--ids=-3"], "--ids: token id -3 is negative"),
    # 3. --target / --foil: an int-looking value is a token id
    (["attribute", "--text", TEXT, "--target", "-5"], "--target -5 is a negative token id"),
    (["attribute", "--text", TEXT, "--target", "-5"], "write --target text:-5"),
    (["attribute", "--text", TEXT, "--target", " be", "--foil", "-3"], "--foil -3 is a negative token id"),
    (["attribute", "--text", TEXT, "--target", ""], "--target is empty"),
    (["attribute", "--text", TEXT, "--target", "text:"], "--target is empty"),
    (["attribute", "--text", TEXT], "the following arguments are required: --target"),
    # 4. --out (a directory option) and --json (a file option)
    (["lens", "--text", TEXT, "--out", "{d}/afile"], "--out {d}/afile is a file; --out takes a directory"),
    (["lens", "--text", TEXT, "--out", "{d}/afile/sub"], "--out {d}/afile (in {d}/afile/sub) is a file"),
    (["bigrams", "--out", "{d}/afile"], "--out {d}/afile is a file; --out takes a directory"),
    (["lens", "--text", TEXT, "--out", ""], "--out is empty; --out takes a directory"),
    (["lens", "--text", TEXT, "--json", "{d}/adir"], "--json {d}/adir is a directory; --json takes a file path"),
    (["paths", "--text", TEXT, "--json", "{d}/afile/x.json"], "{d}/afile is a file, not a directory"),
    (["bigrams", "--json", ""], "--json is empty"),
    # 5. options that would be silently ignored
    (["lens", "--text", TEXT, "--fit-steps", "5"], "--fit-steps needs --joint"),
    (["lens", "--text", TEXT, "--ids", "1,2"], "pass --text or --ids, not both"),
    (["paths", "--text", TEXT, "--ids", "1,2"], "pass --text or --ids, not both"),
    (["lens", "--text", ""], "--text is empty"),
    (["attribute", "--target", " be"], "give the input as --text TEXT (or --ids 1,2,3)"),
    # 7. keyword files, read before any model is loaded
    (["index", "--keywords", "{d}/binary.txt"], "--keywords: keyword file {d}/binary.txt is not text"),
    (["index", "--keywords", "{d}/empty.txt"], "--keywords: keyword file {d}/empty.txt is empty"),
    (["index", "--keywords", "{d}/latin1.txt"], "--keywords: keyword file {d}/latin1.txt is not UTF-8 text"),
    (["index", "--keywords", "{d}/adir"], "--keywords: cannot read keyword file {d}/adir: it is a directory"),
    (["index", "--keywords", "{d}/words.txt", "{d}/nope.txt"],
     "--keywords: cannot read keyword file {d}/nope.txt: no such file"),
    # model sources: empty, or a local path that is not there, named by their own option
    (["lens", "--model", "", "--text", TEXT], "--model is empty"),
    (["diff", "--model-b", ""], "--model-b is empty"),
    (["diff", "--model-b", "{d}/nope"], "--model-b '{d}/nope': no such file or directory"),
    (["index", "--keywords", "{d}/words.txt", "--compare", ""], "--compare is empty"),
    (["index", "--keywords", "{d}/words.txt", "--compare", "{d}/nope.gguf"], "--compare '{d}/nope.gguf': no such file"),
    (["lens", "--model", "{d}/nope.gguf", "--text", TEXT], "--model '{d}/nope.gguf': no such file or directory"),
    # corpus files
    (["agree", "--corpus", "{d}/binary.txt"], "--corpus {d}/binary.txt is not text (a NUL byte at offset 4)"),
    (["agree", "--corpus", "{d}/empty.txt"], "--corpus {d}/empty.txt is empty"),
    (["agree", "--corpus", "{d}/latin1.txt"], "--corpus {d}/latin1.txt is not UTF-8 text (byte 0xf6 at offset 1)"),
    (["agree", "--corpus", "{d}/adir"], "--corpus {d}/adir is a directory"),
    (["diff"], "diff needs exactly one of --model-b (another model) and --adapter"),
    (["diff", "--model-b", "shakespeare", "--adapter", "shakespeare"], "diff needs exactly one of --model-b"),
    (["diff", "--adapter", "{d}/nope.safetensors"], "--adapter: no adapter file '{d}/nope.safetensors'"),
    (["diff", "--adapter", "{d}/afile"], "--adapter: {d}/afile is not a readable safetensors file"),
    (["diff", "--model-b", "shakespeare", "--png", "{d}/bars.jpg"], "--png must name a .png file"),
    # argparse's own errors, one line too
    (["lens", "--text", TEXT, "--bogus"], "jetjax lens: error: unrecognized arguments: --bogus"),
    (["lens", "--text", TEXT, "--granularity", "foo"], "invalid choice: 'foo'"),
    (["bigrams", "--paths"], "argument --paths: expected at least one argument"),
    ([], "the following arguments are required: COMMAND"),
    # graph and circuit: thresholds, baselines and files, before any model is loaded
    ([*GRAPH, "--prune", "0", "0.9"], "--prune must be a threshold in (0, 1], got 0"),
    ([*GRAPH, "--prune", "0.8", "1.5"], "--prune must be a threshold in (0, 1], got 1.5"),
    ([*GRAPH, "--prune", "x", "0.9"], "--prune must be a threshold in (0, 1], got 'x'"),
    ([*GRAPH, "--prune", "0.8"], "argument --prune: expected 2 arguments"),
    ([*GRAPH, "--baseline", "mean"], "--baseline mean needs --reference TEXT"),
    ([*GRAPH, "--baseline", "zero", "--reference", "Good morrow"],
     "--reference sets the mean baseline; it has no meaning with --baseline zero"),
    ([*GRAPH, "--reference", " "], "--reference: text 1 is empty"),
    ([*GRAPH, "--baseline", "median"], "invalid choice: 'median'"),
    ([*GRAPH, "--html", "{d}/view.png"], "--html must name a .html file"),
    ([*GRAPH, "--html", "{d}/afile/view.html"], "{d}/afile is a file, not a directory"),
    ([*GRAPH, "--json", "{d}/adir"], "--json {d}/adir is a directory"),
    ([*GRAPH, "--top", "-1"], "--top must be an int >= 0, got -1"),
    ([*GRAPH, "--json-format", "neuronpedia"], "--json-format neuronpedia needs --json PATH"),
    ([*GRAPH, "--json-format", "csv", "--json", "-"], "invalid choice: 'csv'"),
    (["graph", "--text", TEXT, "--target", "-5"], "--target -5 is a negative token id"),
    (["graph", "--text", TEXT], "the following arguments are required: --target"),
    (["graph", "--target", " be"], "give the input as --text TEXT (or --ids 1,2,3)"),
    ([*CIRCUIT, "--faithfulness", "0"], "--faithfulness must be a number in (0, 1], got 0"),
    ([*CIRCUIT, "--faithfulness", "1.2"], "--faithfulness must be a number in (0, 1], got 1.2"),
    ([*CIRCUIT, "--faithfulness", "nan"], "--faithfulness must be a number in (0, 1], got nan"),
    ([*CIRCUIT, "--mode", "mean"], "--mode mean needs --reference TEXT"),
    ([*CIRCUIT, "--mode", "zero", "--reference", "Good morrow"],
     "--reference sets the mean baseline; it has no meaning with --mode zero"),
    ([*CIRCUIT, "--max-passes", "-1"], "--max-passes must be an int >= 0, got -1"),
    ([*CIRCUIT, "--position", "x"], "--position must be an int, got 'x'"),
    ([*CIRCUIT, "--heads", "--bogus"], "jetjax circuit: error: unrecognized arguments: --bogus"),
]


@pytest.mark.parametrize("argv,message", BEFORE_LOADING)
def test_refused_before_loading(capsys, no_model, files, argv, message):
    argv = [a.replace("{d}", str(files)) for a in argv]
    if argv and argv[0] in ("lens", "bigrams", "paths", "attribute", "diff", "index", "agree", "graph",
                            "circuit") and \
            "--model" not in argv:
        argv += SHAKESPEARE
    code, line = one_line_error(capsys, argv)
    assert code == 2
    assert message.replace("{d}", str(files)) in line


NEEDS_THE_MODEL = [
    (["lens", "--ids", "1,99999"], "--ids: token id 99999 is out of range for a vocabulary of 4096"),
    (["paths", "--ids", "4096"], "--ids: token id 4096 is out of range for a vocabulary of 4096 (valid: 0..4095)"),
    (["lens", "--text", "x" * 3000], "--text: sequence of 3000 tokens is longer than the model's position table"),
    (["lens", "--text", TEXT, "--top-k", "5000"], "--top-k 5000 is larger than the vocabulary of --model (4096"),
    (["attribute", "--text", TEXT, "--target", "99999"],
     "--target token id 99999 is out of range for a vocabulary of 4096 (valid: 0..4095)"),
    (["attribute", "--text", TEXT, "--target", " be", "--foil", "4096"], "--foil token id 4096 is out of range"),
    (["attribute", "--text", TEXT, "--target", " nonexistent-multitoken-word"], "expected exactly one"),
    (["attribute", "--text", TEXT, "--target", "text:-5"], "--target '-5' is 2 tokens, expected exactly one"),
    (["bigrams", "--paths", "emb>mlp9>dec"], "--paths: path 'emb>mlp9>dec': mlp9: layer 9 is out of range"),
    (["bigrams", "--paths", "emb>dec", "emb>dec"], "--paths: paths contains duplicates"),
    (["bigrams", "--top-k", "99999"], "--top-k 99999 is larger than the vocabulary of --model (4096 tokens)"),
    (["bigrams", "--top-k", "1", "--top", "100000"], "--top 100000 is more than the table holds (4096 contexts"),
    (["diff", "--model-b", "shakespeare", "--paths", "emb>attn7>dec"],
     "--paths: path 'emb>attn7>dec': attn7: layer 7 is out of range"),
    (["diff", "--model-b", "shakespeare", "--top-k", "4097"], "--top-k 4097 is larger than the vocabulary of --model"),
    (["index", "--keywords", "{d}/words.txt", "--paths", "emb>mlp4>dec"], "path 'emb>mlp4>dec'"),
    (["agree", "--corpus", "{d}/one_token.txt"], "--corpus {d}/one_token.txt has fewer than two tokens"),
    (["graph", "--text", TEXT, "--target", " nonexistent-multitoken-word"], "expected exactly one"),
    (["graph", "--text", TEXT, "--target", "99999"],
     "--target token id 99999 is out of range for a vocabulary of 4096"),
    ([*GRAPH, "--foil", " be"], "--foil and --target are the same token"),
    (["graph", "--text", "To be", "--target", " be", "--position", "5"],
     "--position 5 is out of range for 2 input tokens"),
    (["graph", "--ids", "1,99999", "--target", " be"], "--ids: token id 99999 is out of range"),
    ([*CIRCUIT, "--foil", "4096"], "--foil token id 4096 is out of range"),
    (["circuit", "--text", TEXT, "--target", "text:-5"], "--target '-5' is 2 tokens, expected exactly one"),
    ([*CIRCUIT, "--foil", "text: be"], "--foil and --target are the same token"),
    ([*CIRCUIT, "--reference", "x" * 3000],
     "--reference text 1: sequence of 3000 tokens is longer than the model's position table"),
]


@pytest.mark.parametrize("argv,message", NEEDS_THE_MODEL)
def test_refused_before_any_work(capsys, no_work, files, argv, message):
    (files / "one_token.txt").write_text("the")
    argv = [a.replace("{d}", str(files)) for a in argv] + SHAKESPEARE
    code, line = one_line_error(capsys, argv)
    assert code == 2
    assert message.replace("{d}", str(files)) in line


def test_diff_refuses_other_tokenizer_before_sweeping(capsys, no_work, tmp_path):
    """Same vocabulary size, two ids swapped: refused by comparing the token strings, no sweep run."""
    other = tmp_path / "other"
    other.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(shipped_model_path() / name, other / name)
    tok = json.loads((shipped_model_path() / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tok["model"]["vocab"]
    by_id = {i: s for s, i in vocab.items()}
    vocab[by_id[300]], vocab[by_id[301]] = 301, 300
    (other / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    code, line = one_line_error(capsys, ["diff", "--model-b", str(other), *SHAKESPEARE])
    assert code == 2
    assert "--model and --model-b have different tokenizers: 2 of 4096 token ids map to different strings" in line
    assert f"300: {by_id[300]!r} vs {by_id[301]!r}" in line


def test_adapter_for_another_base_is_refused_before_sweeping(capsys, no_work, tmp_path):
    import dataclasses

    import jetjax as jj
    from jetjax.io.adapters import init_lora, save_adapter

    adapter = init_lora(jj.load_shipped(), rank=2, targets=("c_fc",))
    path = save_adapter(dataclasses.replace(adapter, base_fingerprint="0" * 64), tmp_path / "other.safetensors")
    for argv in (["diff", "--adapter", str(path)], ["index", "--keywords", str(WORDS), "--adapter", str(path)]):
        code, line = one_line_error(capsys, argv + SHAKESPEARE)
        assert code == 2 and f"--adapter {path}: this adapter was trained on other weights" in line


WORDS = shipped_model_path().parent / "keywords" / "archaic.txt"


def test_debug_after_the_command(capsys):
    """--debug shows the traceback wherever it is given; without it, the one line."""
    argv = ["lens", "--ids", "1,99999", *SHAKESPEARE]
    for where in (["--debug", *argv], [*argv, "--debug"], [argv[0], "--debug", *argv[1:]]):
        with pytest.raises(common.CLIError, match="--ids: token id 99999"):
            cli.main(where)
    code, line = one_line_error(capsys, argv)
    assert code == 2 and line.startswith("jetjax lens: error: --ids: token id 99999")
    assert cli.build_parser().parse_args(["lens", "--text", "a"]).debug is False
    assert cli.build_parser().parse_args(["--debug", "lens", "--text", "a"]).debug is True


def test_target_parsing():
    """An int-looking --target is a token id; text: forces text; anything else is text."""
    parse = common.token_option("--target")
    assert parse("42") == 42 and parse("0") == 0
    assert parse("text:42") == "42" and parse("text:-5") == "-5" and parse("text:text:") == "text:"
    assert parse(" 42") == " 42" and parse(" Paris") == " Paris" and parse("²") == "²"
    help_text = cli.build_parser()._subparsers._group_actions[0].choices["attribute"].format_help()
    assert "text:42" in help_text and "token id" in help_text


def test_ids_parsing():
    assert common.parse_ids("5,6,7") == [5, 6, 7]
    assert common.parse_ids(" 1, 2") == [1, 2]
    with pytest.raises(Exception, match=r"--ids takes comma-separated token ids \(ints\), got '1,2.5'"):
        common.parse_ids("1,2.5")


def test_dash_values_are_values():
    """--ids -1,2 / --text -x / --rows -1,-2 reach their option instead of being read as options."""
    assert cli._join_dash_values(["lens", "--text", "-hello", "--rows", "-1,-2", "--ids", "-1"]) == [
        "lens", "--text=-hello", "--rows=-1,-2", "--ids=-1"]
    assert cli._join_dash_values(["lens", "--text", "--ids", "1"]) == ["lens", "--text", "--ids", "1"]
    assert cli._join_dash_values(["train", "--text", "-a"]) == ["train", "--text", "-a"]  # not ours to parse
    args = cli.build_parser().parse_args(cli._join_dash_values(["lens", "--text", "-hello", "--rows", "-1,-2"]))
    assert args.text == "-hello" and args.rows == "-1,-2"


def test_good_counts_parse_unchanged():
    """Good values parse to what they did before (the defaults included)."""
    ap = cli.build_parser()
    a = ap.parse_args(["lens", "--text", "a", "--orders", "0", "1", str(MAX), "--top-k", "3"])
    assert a.orders == [0, 1, MAX] and a.top_k == 3 and a.fit_steps is None and a.ids is None
    assert ap.parse_args(["lens", "--text", "a"]).orders == [0, 1]
    b = ap.parse_args(["bigrams", "--top", "0", "--order", "1"])
    assert (b.top, b.order, b.top_k) == (0, 1, 10)
    p = ap.parse_args(["paths", "--text", "a", "--position", "-2", "--max-length", "0"])
    assert (p.position, p.max_length, p.top) == (-2, 0, 10)
    t = ap.parse_args(["attribute", "--text", "a", "--target", "7", "--foil", " do"])
    assert (t.target, t.foil) == (7, " do")
    g = ap.parse_args(["agree", "--contexts", "0"])
    assert (g.contexts, g.min_count) == (0, 1)


@pytest.mark.parametrize("argv,message", [
    (["lens", "--text", "To be, or not", "--rows", "0,99"], "--rows 0,99: row 99 is out of range"),
    (["paths", "--text", "To be", "--position", "99"], "--position 99 is out of range for 2 input tokens"),
    (["attribute", "--text", "To be", "--target", " be", "--position", "-9"], "--position -9 is out of range"),
])
def test_row_and_position_errors_name_their_option(capsys, argv, message):
    from tests.cli.test_cli import run

    code, _, err = run(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and message in lines[0]
