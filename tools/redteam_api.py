"""A hostile user's pass over the jetjax Python API (issue 14): bad inputs, each classified.

Run ``python tools/redteam_api.py`` for a table (case, outcome, message excerpt) and the counts;
``tests/test_redteam_api.py`` runs the same :data:`CASES` and asserts each is "good" (the ones in
:data:`KNOWN` are strict xfails, so a fix shows up as an XPASS to remove from the list).

Outcomes:

* ``good``: raised one of the case's accepted classes, the message names the offending value or
  argument (the case's ``needle`` substrings, all of them), the raising frame is in jetjax, the
  message holds no numpy/jax-internal phrasing, and it did not do heavy work first (a call that
  raises after more than ``budget`` seconds *and* more than a second of XLA compilation is not).
  A case may instead accept a warning (``warn=``) naming the problem with a result.
* ``unclear``: raised, but the class, the message or the raising frame is not as above.
* ``bad``: no error (a silently wrong or garbled result), or it hung past ``timeout`` seconds.

Options: ``-k SUBSTRING`` runs only matching cases; ``--all`` prints good cases too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

if "jax" not in sys.modules:   # as tests/conftest.py: 4 fake CPU devices
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jetjax as jj  # noqa: E402
from jetjax import ngrams  # noqa: E402
from jetjax.models import ModelConfig, random_model  # noqa: E402
from jetjax._internal.parallel import path_mesh  # noqa: E402

JETJAX_DIR = str(Path(jj.__file__).resolve().parent)

# Phrases that mean the error came from numpy / jax / Python internals rather than an argument check.
INTERNAL = ("could not convert", "setting an array element", "broadcast", "zero-size array", "invalid literal",
            "inhomogeneous", "object is not callable", "has no attribute", "not supported between instances",
            "dot_general", "Incompatible shapes", "unhashable type", "not enough values to unpack",
            "argument must be", "expected str, bytes or os.PathLike", "can't convert", "is out of bounds for axis",
)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str                               # "group/what": unique
    call: Callable[["Ctx"], Any]            # the bad call, given the shared context
    errors: tuple[type[BaseException], ...]  # accepted exception classes
    needle: tuple[str, ...]                 # substrings the message must contain (the value or the argument)
    warn: str | None = None                 # a warning containing this also counts as a good answer
    timeout: float = 30.0                   # seconds before the call counts as hung
    budget: float = 3.0                     # seconds of work allowed before the error


@dataclasses.dataclass
class Result:
    case: Case
    outcome: str        # good / unclear / bad
    why: str            # short reason
    message: str        # the exception type and message (or the returned value)
    seconds: float


def case(name, call, errors, needle, **kw) -> Case:
    errors = errors if isinstance(errors, tuple) else (errors,)
    needle = needle if isinstance(needle, tuple) else (needle,)
    return Case(name, call, errors, needle, **kw)


# ---------------------------------------------------------------------------------------------
# Shared context: tiny models, tables and checkpoints, built once

WORDS = ["<|endoftext|>", "[UNK]", "the", "cat", "sat", "on", "mat", "dog", "ran", "to", "a", "war", "peace",
         "king", "queen", "and", "of"]   # 17 tokens
GPT2 = ModelConfig(arch="gpt2", n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=16, vocab_size=len(WORDS),
                   n_positions=8, norm_eps=1e-5, activation="gelu_new")
LLAMA = ModelConfig(arch="llama", n_layers=2, d_model=8, n_heads=2, d_head=4, d_mlp=12, vocab_size=13,
                    n_positions=None, norm_eps=1e-6, activation="silu", n_kv_heads=1, rope_dim=4, norm="rmsnorm",
                    tie_embeddings=False, qkv_bias=False, out_bias=False, mlp_bias=False)
CORPUS = "the cat sat on the mat and the dog ran to the cat " * 20


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tok


class built(cached_property):
    """A cached property whose build time (and XLA compile time) is booked as set-up, not as the case's."""

    def __get__(self, ctx, owner=None):
        if ctx is None or self.attrname in ctx.__dict__:
            return super().__get__(ctx, owner)
        _listen_compiles()
        t0, c0 = time.perf_counter(), _COMPILE_SECONDS[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = super().__get__(ctx, owner)
        ctx.setup_seconds += time.perf_counter() - t0
        ctx.setup_compile += _COMPILE_SECONDS[0] - c0
        return value


class Ctx:
    """Lazily built shared objects; ``copy_ckpt`` gives a private checkpoint to break."""

    def __init__(self):
        self._tmp = Path(tempfile.mkdtemp(prefix="jetjax-redteam-"))
        self._n = 0
        self.setup_seconds = 0.0
        self.setup_compile = 0.0

    def close(self):
        shutil.rmtree(self._tmp, ignore_errors=True)

    def tmp(self) -> Path:
        self._n += 1
        d = self._tmp / f"t{self._n}"
        d.mkdir()
        return d

    @built
    def g(self):                      # GPT-2, 2 layers, V=17, with a word-level tokenizer
        m = random_model(GPT2, scale=0.3)
        m.tokenizer = word_tokenizer()
        return m

    @built
    def g2(self):                     # other weights, same tokenizer
        m = random_model(GPT2, seed=1, scale=0.3)
        m.tokenizer = word_tokenizer()
        return m

    @built
    def l(self):                      # Llama, 2 layers, V=13, rotary, no tokenizer
        return random_model(LLAMA, scale=0.3)

    @built
    def h(self):                      # a residual stream of g [T=3, d=8]
        return self.g.residual_stream([2, 3, 4])[1]

    @built
    def table(self):
        return ngrams.jet_bigrams(self.g, "emb>dec", top_k=3, global_k=5, progress=False)

    @built
    def table_l(self):                # a bigram table of a model without a tokenizer
        return ngrams.jet_bigrams(self.l, "emb>dec", top_k=2, global_k=2, progress=False)

    @built
    def tri(self):
        return ngrams.jet_trigrams(self.g, ngrams.candidate_contexts([2, 3]), top_k=2, global_k=3, progress=False)

    @built
    def lens(self):
        return jj.logit_lens(self.g, [2, 3, 4])

    @built
    def att(self):
        return jj.path_attribution(self.g, [2, 3, 4], target=5, foil=6)

    @built
    def scores(self):
        return jj.reduce_paths(self.g, [2, 3, 4], top_k=1)

    @built
    def _ckpt(self) -> Path:
        from jetjax.training.toy import save_pretrained

        return save_pretrained(self.g, self.g.tokenizer, self._tmp / "ckpt")

    def copy_ckpt(self, **config_changes) -> Path:
        d = self.tmp() / "ckpt"
        shutil.copytree(self._ckpt, d)
        if config_changes:
            cfg = json.loads((d / "config.json").read_text())
            for k, v in config_changes.items():
                if v is _DROP:
                    cfg.pop(k, None)
                else:
                    cfg[k] = v
            (d / "config.json").write_text(json.dumps(cfg))
        return d

    @built
    def _sweep(self) -> Path:
        d = self._tmp / "sweep"
        ngrams.jet_bigrams(self.g, "emb>dec", top_k=3, global_k=5, progress=False, out_dir=d)
        return d

    def sweep_copy(self) -> Path:
        d = self.tmp() / "sweep"
        shutil.copytree(self._sweep, d)
        return d

    def saved_table(self) -> Path:
        d = self.tmp() / "table"
        self.table.save(d)
        return d


_DROP = object()


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _swap_tokens(table):
    tokens = list(table.tokens)
    tokens[3], tokens[4] = tokens[4], tokens[3]
    return dataclasses.replace(table, tokens=tokens)


def _scan2(v):
    return jax.lax.scan(lambda c, _: (jnp.sin(c), None), v, None, length=2)[0]


X3, Y3 = jnp.zeros(3, jnp.float32), jnp.ones(3, jnp.float32)
P3 = dict(errors=(ValueError,))

# ---------------------------------------------------------------------------------------------
# The cases

CASES: list[Case] = [
    # -- jj.jet ---------------------------------------------------------------------------------
    case("jet/f-not-callable", lambda c: jj.jet(5, X3, Y3, 1), TypeError, "f"),
    case("jet/f-two-args", lambda c: jj.jet(lambda a, b: a + b, X3, Y3, 1), TypeError, "f"),
    case("jet/f-returns-None", lambda c: jj.jet(lambda v: None, X3, Y3, 1), TypeError, "None"),
    case("jet/f-returns-str", lambda c: jj.jet(lambda v: "abc", X3, Y3, 1), TypeError, "str"),
    case("jet/f-returns-str-in-dict", lambda c: jj.jet(lambda v: {"a": v, "b": "x"}, X3, Y3, 2), TypeError, "str"),
    case("jet/f-returns-None-order0", lambda c: jj.jet(lambda v: None, X3, Y3, 0), TypeError, "None"),
    case("jet/f-returns-int-array", lambda c: jj.jet(lambda v: jnp.round(v).astype(jnp.int32), X3, Y3, 1),
         TypeError, "int32"),
    # (order 1 is one eager jax.jvp, where a Python branch on the centre's value is legitimate)
    case("jet/f-python-branch-order3", lambda c: jj.jet(lambda v: v if v.sum() > 0 else -v, X3, Y3, 3),
         TypeError, "branched"),
    case("jet/f-uses-numpy", lambda c: jj.jet(lambda v: np.asarray(v) * 2, X3, Y3, 2), TypeError, "NumPy"),
    case("jet/f-uses-scan", lambda c: jj.jet(_scan2, X3, Y3, 2), jj.JetRuleError, "scan"),
    case("jet/xy-shape-mismatch", lambda c: jj.jet(jnp.sin, X3, jnp.ones(4), 1), ValueError, ("[3]", "[4]")),
    case("jet/xy-dtype-mismatch", lambda c: jj.jet(jnp.sin, X3.astype(jnp.float16), Y3, 2), ValueError,
         "float16"),
    case("jet/xy-structure-mismatch", lambda c: jj.jet(lambda t: t[0], (X3, X3), [Y3, Y3], 1), ValueError,
         "structure"),
    case("jet/int-inputs", lambda c: jj.jet(jnp.sin, jnp.arange(3), jnp.arange(3) + 1, 1), TypeError, "int32"),
    case("jet/str-inputs", lambda c: jj.jet(jnp.sin, "a", "b", 1), TypeError, ("'a'",)),
    case("jet/None-inputs", lambda c: jj.jet(jnp.sin, None, None, 1), (TypeError, ValueError), "None"),
    case("jet/order-float", lambda c: jj.jet(jnp.sin, X3, Y3, 1.0), TypeError, "1.0"),
    case("jet/order-negative", lambda c: jj.jet(jnp.sin, X3, Y3, -1), ValueError, "-1"),
    case("jet/order-bool", lambda c: jj.jet(jnp.sin, X3, Y3, True), TypeError, "True"),
    case("jet/order-str", lambda c: jj.jet(jnp.sin, X3, Y3, "2"), TypeError, "'2'"),
    case("jet/order-None", lambda c: jj.jet(jnp.sin, X3, Y3, None), TypeError, "None"),
    case("jet/order-100", lambda c: jj.jet(jnp.sin, X3, Y3, 100), ValueError, "100"),

    # -- Model: ids -----------------------------------------------------------------------------
    case("ids/ragged", lambda c: c.g.logits([[1, 2], [3]]), ValueError, "[2, 1]"),
    case("ids/ragged-3d", lambda c: c.g.logits([[[1, 2]], [[3]]]), ValueError, "rectangular"),
    case("ids/empty-list", lambda c: c.g.logits([]), ValueError, "empty"),
    case("ids/empty-2d", lambda c: c.g.residual_stream([[]]), ValueError, "(1, 0)"),
    case("ids/zero-rows", lambda c: c.g.residual_stream(np.zeros((0, 3), np.int64)), ValueError, "(0, 3)"),
    case("ids/float", lambda c: c.g.logits([1.0, 2.0]), TypeError, "float64"),
    case("ids/bool", lambda c: c.g.logits(np.array([True, False])), TypeError, "bool"),
    case("ids/complex", lambda c: c.g.logits(np.array([1 + 0j])), TypeError, "complex"),
    case("ids/str", lambda c: c.g.logits("the cat"), TypeError, "tokenize"),
    case("ids/mixed-str-int", lambda c: c.g.logits([1, "a"]), TypeError, "<U"),
    case("ids/None", lambda c: c.g.logits(None), (TypeError, ValueError), "None"),
    case("ids/dict", lambda c: c.g.logits({"a": 1}), (TypeError, ValueError), "dict"),
    case("ids/scalar", lambda c: c.g.logits(3), ValueError, "()"),
    case("ids/negative", lambda c: c.g.logits([-1, 2]), ValueError, "-1"),
    case("ids/equal-vocab", lambda c: c.g.logits([1, 17]), ValueError, "17"),
    case("ids/huge", lambda c: c.g.logits([2 ** 40]), ValueError, str(2 ** 40)),
    case("ids/too-long", lambda c: c.g.logits(list(range(9))), ValueError, "9 tokens"),
    case("ids/jit-float", lambda c: jax.jit(lambda x: c.g.logits(x))(jnp.ones(3)), TypeError, "float32"),
    case("ids/token_embed-out-of-range", lambda c: c.g.token_embed([17]), ValueError, "17"),
    case("ids/llama-negative", lambda c: c.l.logits([[0, 1], [2, -3]]), ValueError, "-3"),
    case("model/params-wrong-tree", lambda c: c.g.logits([1, 2], params={"foo": 1}), (TypeError, ValueError),
         "params"),

    # -- Model: branches and layers -------------------------------------------------------------
    case("layer/attn-too-big", lambda c: c.g.attn(2, c.h), IndexError, "layer 2"),
    case("layer/attn-negative", lambda c: c.g.attn(-1, c.h), IndexError, "-1"),
    case("layer/mlp-float", lambda c: c.g.mlp(1.0, c.h), TypeError, "1.0"),
    case("layer/block-str", lambda c: c.g.block("0", c.h), TypeError, "'0'"),
    case("layer/block-bool", lambda c: c.g.block(True, c.h), TypeError, "True"),
    case("layer/llama-mlp-too-big", lambda c: c.l.mlp(7, jnp.zeros((2, 8))), IndexError, "7"),
    case("stream/int", lambda c: c.g.attn(0, np.ones((3, 8), np.int32)), TypeError, "int32"),
    case("stream/None", lambda c: c.g.mlp(0, None), (TypeError, ValueError), "None"),
    case("stream/wrong-width", lambda c: c.g.attn(0, jnp.ones((3, 5))), ValueError, ("5", "d_model")),
    case("stream/decode-wrong-width", lambda c: c.g.decode(jnp.ones((3, 7))), ValueError, ("7", "d_model")),

    # -- Model: tokens --------------------------------------------------------------------------
    case("tokenize/bytes", lambda c: c.g.tokenize(b"the cat"), TypeError, "bytes"),
    case("tokenize/None", lambda c: c.g.tokenize(None), TypeError, "NoneType"),
    case("tokenize/list", lambda c: c.g.tokenize(["the"]), TypeError, "list"),
    case("tokenize/empty", lambda c: c.g.tokenize(""), ValueError, "no tokens"),
    case("tokenize/no-tokenizer", lambda c: c.l.tokenize("the"), ValueError, "tokenizer"),
    case("detokenize/out-of-range", lambda c: c.g.detokenize([99]), ValueError, "99"),
    case("detokenize/negative", lambda c: c.g.detokenize([-1]), ValueError, "-1"),
    case("detokenize/float", lambda c: c.g.detokenize([1.5]), TypeError, "1.5"),
    case("detokenize/str", lambda c: c.g.detokenize("abc"), TypeError, "str"),
    case("detokenize/no-tokenizer", lambda c: c.l.detokenize([1]), ValueError, "tokenizer"),

    # -- ModelConfig / random_model ----------------------------------------------------------------
    case("config/n_layers-0", lambda c: dataclasses.replace(GPT2, n_layers=0), ValueError, "n_layers"),
    case("config/n_positions-float", lambda c: dataclasses.replace(GPT2, n_positions=8.0), ValueError,
         "n_positions"),
    case("config/norm_eps-negative", lambda c: dataclasses.replace(GPT2, norm_eps=-1e-5), ValueError, "norm_eps"),
    case("config/kv-heads-not-dividing", lambda c: dataclasses.replace(LLAMA, n_kv_heads=3, n_heads=2),
         ValueError, "n_kv_heads"),
    case("config/windows-wrong-length", lambda c: dataclasses.replace(LLAMA, attn_windows=(3,)), ValueError,
         "attn_windows"),
    case("config/arch-unknown", lambda c: random_model(dataclasses.replace(GPT2, arch="bert")), ValueError,
         "bert"),
    case("config/activation-unknown", lambda c: random_model(dataclasses.replace(GPT2, activation="mish")).logits([1]),
         ValueError, "mish"),
    case("config/d_model-not-heads-x-dhead", lambda c: random_model(dataclasses.replace(GPT2, d_head=3)).logits([1]),
         ValueError, ("d_head", "d_model")),

    # -- lenses ---------------------------------------------------------------------------------
    case("lens/model-None", lambda c: jj.logit_lens(None, [1, 2]), TypeError, "NoneType"),
    case("lens/rows-out-of-range", lambda c: jj.logit_lens(c.g, [2, 3], rows=[5]), IndexError, "row 5"),
    case("lens/rows-negative-out-of-range", lambda c: jj.iterative_jet_lens(c.g, [2, 3], rows=-4), IndexError,
         "-4"),
    case("lens/rows-str", lambda c: jj.logit_lens(c.g, [2, 3], rows="0"), TypeError, "'0'"),
    case("lens/rows-empty", lambda c: jj.logit_lens(c.g, [2, 3], rows=[]), ValueError, "empty"),
    case("lens/rows-float", lambda c: jj.logit_lens(c.g, [2, 3], rows=[1.5]), TypeError, "1.5"),
    case("lens/rows-and-layers", lambda c: jj.logit_lens(c.g, [2, 3], rows=[0], layers=[1]), TypeError,
         "layers="),
    case("lens/granularity-bad", lambda c: jj.logit_lens(c.g, [2, 3], granularity="layer"), ValueError,
         "'layer'"),
    case("lens/granularity-None", lambda c: jj.iterative_jet_lens(c.g, [2, 3], granularity=None), ValueError,
         "None"),
    case("lens/order-negative", lambda c: jj.iterative_jet_lens(c.g, [2, 3], order=-1), ValueError, "-1"),
    case("lens/order-float", lambda c: jj.iterative_jet_lens(c.g, [2, 3], order=2.0), TypeError, "2.0"),
    case("lens/order-str", lambda c: jj.iterative_jet_lens(c.g, [2, 3], order="1"), TypeError, "'1'"),
    case("lens/order-17", lambda c: jj.iterative_jet_lens(c.g, [2, 3], order=17), ValueError, "17"),
    case("lens/ids-out-of-range", lambda c: jj.iterative_jet_lens(c.l, [2, 13]), ValueError, "13"),
    case("joint/rows-decreasing", lambda c: jj.joint_jet_lens(c.g, [2, 3], rows=[2, 0]), ValueError, "[2, 0]"),
    case("joint/rows-duplicate", lambda c: jj.joint_jet_lens(c.g, [2, 3], rows=[1, -2]), ValueError, "[1, 1]"),
    case("joint/fit_steps-negative", lambda c: jj.joint_jet_lens(c.g, [2, 3], fit_steps=-1), ValueError,
         "fit_steps"),
    case("joint/fit_steps-float", lambda c: jj.joint_jet_lens(c.g, [2, 3], fit_steps=2.5), ValueError,
         "fit_steps"),
    case("joint/fit_steps-str", lambda c: jj.joint_jet_lens(c.g, [2, 3], fit_steps="10"), ValueError,
         "fit_steps"),
    case("joint/learning_rate-zero", lambda c: jj.joint_jet_lens(c.g, [2, 3], fit_steps=2, learning_rate=0),
         ValueError, "learning_rate"),
    case("joint/learning_rate-nan", lambda c: jj.joint_jet_lens(c.g, [2, 3], fit_steps=2, learning_rate=float("nan")),
         ValueError, "learning_rate"),
    case("joint/learning_rate-str", lambda c: jj.joint_jet_lens(c.g, [2, 3], fit_steps=2, learning_rate="0.1"),
         ValueError, "learning_rate"),
    case("joint/learning_rate-negative-without-fit",
         lambda c: jj.joint_jet_lens(c.g, [2, 3], learning_rate=-1.0), ValueError, "learning_rate"),
    case("joint/weights-and-fit", lambda c: jj.joint_jet_lens(c.g, [2, 3], weights=[1, 1, 1], fit_steps=3),
         ValueError, "weights"),
    case("joint/weights-wrong-length", lambda c: jj.joint_jet_lens(c.g, [2, 3], weights=[0.5, 0.5]), ValueError,
         "(2,)"),
    case("joint/weights-nan", lambda c: jj.joint_jet_lens(c.g, [2, 3], weights=[1.0, np.nan, 1.0]), ValueError,
         "weights"),
    case("joint/weights-str", lambda c: jj.joint_jet_lens(c.g, [2, 3], weights=["a", "b", "c"]), TypeError,
         "weights"),
    case("joint/weights-ragged", lambda c: jj.joint_jet_lens(c.g, [2, 3], weights=[[1, 2], [3]]),
         (TypeError, ValueError), "weights"),
    case("lensresult/top-0", lambda c: c.lens.top(0), ValueError, "0"),
    case("lensresult/top-negative", lambda c: c.lens.top(-1), ValueError, "-1"),
    case("lensresult/top-above-vocab", lambda c: c.lens.top(100), ValueError, "100"),
    case("lensresult/top-float", lambda c: c.lens.top(2.0), ValueError, "2.0"),
    case("lensresult/which-combined-on-logit-lens", lambda c: c.lens.top(2, which="combined"), ValueError,
         "combined"),
    case("lensresult/to_json-top_k-0", lambda c: c.lens.to_json(top_k=0), ValueError, "0"),
    case("lensresult/to_json-path-is-dir", lambda c: c.lens.to_json(c.tmp()), (IsADirectoryError, ValueError),
         "directory"),

    # -- paths: expand_all / count_paths / PathSpec -----------------------------------------------
    case("paths/include-misspelled", lambda c: jj.expand_all(c.g, [2, 3], include=["blok0"]), ValueError, "blok0"),
    case("paths/include-out-of-range", lambda c: jj.expand_all(c.g, [2, 3], include=["block5"]), ValueError,
         "block5"),
    case("paths/include-wrong-granularity", lambda c: jj.expand_all(c.g, [2, 3], include=["attn0"]), ValueError,
         "attn0"),
    case("paths/include-int", lambda c: jj.expand_all(c.g, [2, 3], include=123), ValueError, "123"),
    case("paths/include-None-entry", lambda c: jj.expand_all(c.g, [2, 3], include=[None]), ValueError, "None"),
    case("paths/include-emb", lambda c: jj.expand_all(c.g, [2, 3], include=["emb"]), ValueError, "emb"),
    case("paths/exclude-with-space", lambda c: jj.expand_all(c.g, [2, 3], granularity="branch", exclude=["mlp 0"]),
         ValueError, "mlp 0"),
    case("paths/exclude-mixed-granularity",
         lambda c: jj.expand_all(c.g, [2, 3], granularity="branch", exclude=["attn0", "block1"]), ValueError,
         "block1"),
    case("paths/max_length-negative", lambda c: jj.expand_all(c.g, [2, 3], max_length=-1), ValueError,
         "max_length"),
    case("paths/max_length-float", lambda c: jj.expand_all(c.g, [2, 3], max_length=2.0), ValueError, "2.0"),
    case("paths/max_length-bool", lambda c: jj.expand_all(c.g, [2, 3], max_length=True), ValueError, "True"),
    case("paths/weights-word", lambda c: jj.expand_all(c.g, [2, 3], weights="paper"), ValueError, "paper"),
    case("paths/weights-array", lambda c: jj.expand_all(c.g, [2, 3], weights=np.ones(2)), ValueError, "weights"),
    case("paths/granularity-plural", lambda c: jj.expand_all(c.g, [2, 3], granularity="blocks"), ValueError,
         "blocks"),
    case("paths/order-negative", lambda c: jj.expand_all(c.g, [2, 3], order=-1), ValueError, "-1"),
    case("paths/attention_free-str", lambda c: jj.expand_all(c.g, [2, 3], attention_free="yes"), ValueError,
         "yes"),
    case("paths/spec-dict", lambda c: jj.expand_all(c.g, [2, 3], spec={"order": 1}), TypeError, "dict"),
    case("paths/spec-and-kwarg-disagree", lambda c: jj.expand_all(c.g, [2, 3], spec=jj.PathSpec(order=1), order=2),
         ValueError, "order"),
    case("paths/streams-wrong", lambda c: jj.expand_all(c.g, [2, 3], streams=np.zeros((2, 3))),
         (TypeError, ValueError), "streams"),
    case("paths/path_streams-ids-float", lambda c: jj.path_streams(c.g, [2.0, 3.0]), TypeError, "float"),
    case("count/n_layers-0", lambda c: jj.count_paths(0), ValueError, "n_layers"),
    case("count/n_layers-negative", lambda c: jj.count_paths(-3), ValueError, "-3"),
    case("count/n_layers-str", lambda c: jj.count_paths("4"), ValueError, "'4'"),
    case("count/n_layers-float", lambda c: jj.count_paths(4.0), ValueError, "4.0"),
    case("count/parallel_residual-str", lambda c: jj.count_paths(2, "branch", parallel_residual="no"),
         (TypeError, ValueError), "parallel_residual"),
    case("count/include-out-of-range", lambda c: jj.count_paths(4, include=["block9"]), ValueError, "block9"),
    case("count/max_length-negative", lambda c: jj.count_paths(4, max_length=-2), ValueError, "-2"),
    case("spec/order-str", lambda c: jj.PathSpec(order="0"), TypeError, "'0'"),
    case("spec/granularity-int", lambda c: jj.PathSpec(granularity=1), ValueError, "1"),
    case("spec/validate-out-of-range", lambda c: jj.PathSpec(exclude="block3").validate(c.g), ValueError,
         "block3"),
    case("spec/validate-not-a-model", lambda c: jj.PathSpec().validate("gpt2"), (TypeError, ValueError), "gpt2"),

    # -- paths: reduce_paths / path_attribution ----------------------------------------------------
    case("reduce/score-str", lambda c: jj.reduce_paths(c.g, [2, 3], score="l3"), TypeError, "'l3'"),
    case("reduce/score-wrong-shape", lambda c: jj.reduce_paths(c.g, [2, 3], score=np.ones(5)), ValueError, "(5,)"),
    case("reduce/score-callable-not-scalar", lambda c: jj.reduce_paths(c.g, [2, 3], score=lambda lg, aux: lg),
         (TypeError, ValueError), "score"),
    case("reduce/score-callable-one-arg", lambda c: jj.reduce_paths(c.g, [2, 3], score=lambda lg: lg.sum()),
         (TypeError, ValueError), "score"),
    case("reduce/position-out-of-range", lambda c: jj.reduce_paths(c.g, [2, 3], position=10), IndexError, "10"),
    case("reduce/position-float", lambda c: jj.reduce_paths(c.g, [2, 3], position=1.5), TypeError, "1.5"),
    case("reduce/position-str", lambda c: jj.reduce_paths(c.g, [2, 3], position="last"), TypeError, "'last'"),
    case("reduce/top_k-negative", lambda c: jj.reduce_paths(c.g, [2, 3], top_k=-1), ValueError, "top_k"),
    case("reduce/chunk_size-0", lambda c: jj.reduce_paths(c.g, [2, 3], chunk_size=0), ValueError, "chunk_size"),
    case("reduce/chunk_size-float", lambda c: jj.reduce_paths(c.g, [2, 3], chunk_size=2.5), ValueError, "2.5"),
    case("reduce/max_paths-exceeded", lambda c: jj.reduce_paths(c.g, [2, 3], max_paths=1), ValueError,
         "max_paths=1"),
    case("reduce/max_paths-str", lambda c: jj.reduce_paths(c.g, [2, 3], max_paths="many"), (TypeError, ValueError),
         "max_paths"),
    case("reduce/max_paths-negative", lambda c: jj.reduce_paths(c.g, [2, 3], max_paths=-1), ValueError,
         ("max_paths", "-1")),
    case("reduce/mesh-str", lambda c: jj.reduce_paths(c.g, [2, 3], mesh="cpu"), TypeError, "mesh"),
    case("reduce/mesh-two-axes",
         lambda c: jj.reduce_paths(c.g, [2, 3], mesh=jax.sharding.Mesh(np.asarray(jax.devices()[:4]).reshape(2, 2),
                                                                      ("a", "b"))), ValueError, "axes"),
    case("reduce/ids-out-of-range", lambda c: jj.reduce_paths(c.l, [1, 99]), ValueError, "99"),
    case("attr/target-multi-token", lambda c: jj.path_attribution(c.g, [2, 3], target="the cat"), ValueError,
         "2 tokens"),
    case("attr/target-out-of-range", lambda c: jj.path_attribution(c.g, [2, 3], target=99), ValueError, "99"),
    case("attr/target-negative", lambda c: jj.path_attribution(c.g, [2, 3], target=-1), ValueError, "-1"),
    case("attr/target-None", lambda c: jj.path_attribution(c.g, [2, 3], target=None), TypeError, "None"),
    case("attr/target-float", lambda c: jj.path_attribution(c.g, [2, 3], target=1.0), TypeError, "1.0"),
    case("attr/target-empty-str", lambda c: jj.path_attribution(c.g, [2, 3], target=""), ValueError, "''"),
    case("attr/target-unknown-word", lambda c: jj.path_attribution(c.g, [2, 3], target="zebra"), ValueError,
         "zebra"),
    case("attr/foil-equals-target", lambda c: jj.path_attribution(c.g, [2, 3], target=5, foil=5), ValueError,
         "foil"),
    case("attr/ids-batch", lambda c: jj.path_attribution(c.g, [[2, 3], [4, 5]], target=5), ValueError,
         "(2, 2)"),
    case("attr/ids-empty-text", lambda c: jj.path_attribution(c.g, "", target=5), ValueError, "no tokens"),
    case("attr/position-out-of-range", lambda c: jj.path_attribution(c.g, [2, 3], target=5, position=-10),
         IndexError, "-10"),
    case("attr/no-tokenizer-str-target", lambda c: jj.path_attribution(c.l, [2, 3], target=" the"), ValueError,
         "tokenizer"),
    case("attr/method-unknown", lambda c: jj.path_attribution(c.g, [2, 3], target=5, method="magic"), ValueError,
         "'magic'"),
    case("attr/method-jet-with-k", lambda c: jj.path_attribution(c.g, [2, 3], target=5, method="jet", k=5),
         ValueError, "k="),
    case("attr/method-search-with-order", lambda c: jj.path_attribution(c.g, [2, 3], target=5, method="search",
                                                                        order=1), ValueError, "order="),
    case("attr/method-search-max-length", lambda c: jj.path_attribution(c.g, [2, 3], target=5, method="search",
                                                                        max_length=2), ValueError, "max_length"),
    case("attr/method-search-k-zero", lambda c: jj.path_attribution(c.g, [2, 3], target=5, method="search", k=0),
         ValueError, "k must be"),
    case("frozen/position-float", lambda c: jj.frozen_path_attribution(c.g, [2, 3], target=5, position=1.5),
         TypeError, "1.5"),
    case("frozen/max-length-negative", lambda c: jj.frozen_path_attribution(c.g, [2, 3], target=5, max_length=-1),
         ValueError, "-1"),
    case("search/k-zero", lambda c: jj.top_paths(c.g, [2, 3], 0, target=5, foil=6), ValueError, "k must be"),
    case("search/k-float", lambda c: jj.top_paths(c.g, [2, 3], 2.5, target=5, foil=6), ValueError, "2.5"),
    case("search/k-str", lambda c: jj.top_paths(c.g, [2, 3], "10", target=5, foil=6), ValueError, "'10'"),
    case("search/score-unknown", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, score="prob"), ValueError,
         "'prob'"),
    case("search/by-unknown", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, by="largest"), ValueError,
         "'largest'"),
    case("search/priority-unknown", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, priority="random"),
         ValueError, "'random'"),
    case("search/beam-below-k", lambda c: jj.top_paths(c.g, [2, 3], 30, target=5, beam=10), ValueError,
         "beam=10"),
    case("search/position-out-of-range", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, position=-10),
         IndexError, "-10"),
    case("search/position-bool", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, position=True), TypeError,
         "True"),
    case("search/granularity-bad", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, granularity="layer"),
         ValueError, "'layer'"),
    case("search/direction-wrong-shape", lambda c: jj.top_paths(c.g, [2, 3], 3, score=np.ones(5)), ValueError,
         "(5,)"),
    case("search/direction-nan", lambda c: jj.top_paths(c.g, [2, 3], 3, score=np.full(17, np.nan)), ValueError,
         "NaN"),
    case("search/no-target", lambda c: jj.top_paths(c.g, [2, 3], 3), ValueError, "target"),
    case("search/foil-without-diff", lambda c: jj.top_paths(c.g, [2, 3], 3, target=5, foil=6, score="logit"),
         ValueError, "foil"),
    case("search/ids-batch", lambda c: jj.top_paths(c.g, [[2, 3], [4, 5]], 3, target=5), ValueError, "(2, 2)"),
    case("attribution/top-negative", lambda c: c.att.top(-2), ValueError, "-2"),
    case("attribution/bottom-float", lambda c: c.att.bottom(2.5), ValueError, "2.5"),
    case("attribution/table-negative", lambda c: c.att.table(-1), ValueError, "-1"),
    case("scores/top-negative", lambda c: c.scores.top(-1), ValueError, "-1"),

    # -- n-grams: sweeps --------------------------------------------------------------------------
    case("bigrams/paths-None", lambda c: ngrams.jet_bigrams(c.g, None, progress=False), ValueError, "None"),
    case("bigrams/paths-misspelled", lambda c: ngrams.jet_bigrams(c.g, "emb>mlpx>dec", progress=False), ValueError,
         "mlpx"),
    case("bigrams/paths-out-of-range", lambda c: ngrams.jet_bigrams(c.g, "emb>mlp5>dec", progress=False),
         ValueError, "mlp5"),
    case("bigrams/paths-duplicate", lambda c: ngrams.jet_bigrams(c.g, ["emb>dec", "emb>dec"], progress=False),
         ValueError, "duplicate"),
    case("bigrams/paths-leading-space", lambda c: ngrams.jet_bigrams(c.g, [" emb>dec"], progress=False), ValueError,
         "whitespace"),
    case("bigrams/paths-empty", lambda c: ngrams.jet_bigrams(c.g, [], progress=False), ValueError, "paths"),
    case("bigrams/paths-order-reversed", lambda c: ngrams.jet_bigrams(c.g, "emb>mlp1>mlp0>dec", progress=False),
         ValueError, "mlp0"),
    case("bigrams/top_k-0", lambda c: ngrams.jet_bigrams(c.g, top_k=0, progress=False), ValueError, "top_k"),
    case("bigrams/top_k-above-vocab", lambda c: ngrams.jet_bigrams(c.g, top_k=100, progress=False), ValueError,
         "top_k=100"),
    case("bigrams/top_k-negative", lambda c: ngrams.jet_bigrams(c.g, top_k=-5, progress=False), ValueError, "-5"),
    case("bigrams/order-negative", lambda c: ngrams.jet_bigrams(c.g, order=-1, progress=False), ValueError, "-1"),
    case("bigrams/global_k-negative", lambda c: ngrams.jet_bigrams(c.g, global_k=-1, progress=False), ValueError,
         "global_k"),
    case("bigrams/block_rows-0", lambda c: ngrams.jet_bigrams(c.g, block_rows=0, progress=False), ValueError,
         "block_rows"),
    case("bigrams/chunk_rows-float", lambda c: ngrams.jet_bigrams(c.g, chunk_rows=1.5, progress=False), ValueError,
         "chunk_rows"),
    case("bigrams/vocab_tile-0", lambda c: ngrams.jet_bigrams(c.g, vocab_tile=0, progress=False), ValueError,
         "vocab_tile"),
    case("bigrams/devices-platform-name", lambda c: ngrams.jet_bigrams(c.g, devices=["cpu"], progress=False),
         TypeError, "'cpu'"),
    case("bigrams/callback-int", lambda c: ngrams.jet_bigrams(c.g, callback=5, progress=False), (TypeError, ValueError),
         "callback"),
    case("bigrams/settings-dict", lambda c: ngrams.jet_bigrams(c.g, settings={"paths": "emb>dec"}, progress=False),
         TypeError, "dict"),
    case("bigrams/settings-disagree",
         lambda c: ngrams.jet_bigrams(c.g, top_k=4, settings=ngrams.SweepSettings(paths="emb>dec", top_k=3),
                                      progress=False), ValueError, "top_k"),
    case("bigrams/model-None", lambda c: ngrams.jet_bigrams(None, "emb>dec", progress=False), TypeError, "None"),
    case("bigrams/out_dir-is-file", lambda c: ngrams.jet_bigrams(c.g, top_k=2, progress=False,
                                                                 out_dir=_write(c.tmp() / "f.txt", "x")),
         (NotADirectoryError, FileExistsError, ValueError), "f.txt"),
    case("bigrams/out_dir-foreign-files",
         lambda c: ngrams.jet_bigrams(c.g, top_k=2, progress=False, out_dir=_write(c.tmp() / "d" / "notes.txt", "x").parent),
         FileExistsError, "not empty"),
    case("bigrams/out_dir-saved-table",
         lambda c: ngrams.jet_bigrams(c.g, top_k=2, progress=False, out_dir=c.saved_table()), FileExistsError,
         "not empty"),
    case("bigrams/out_dir-other-settings",
         lambda c: ngrams.jet_bigrams(c.g, top_k=2, progress=False, out_dir=c.sweep_copy()), ValueError,
         "top_k"),
    case("bigrams/out_dir-other-model",
         lambda c: ngrams.jet_bigrams(c.g2, "emb>dec", top_k=3, global_k=5, progress=False, out_dir=c.sweep_copy()),
         ValueError, "fingerprint"),
    case("bigrams/out_dir-other-paths",
         lambda c: ngrams.jet_bigrams(c.g, "emb>mlp0>dec", top_k=3, global_k=5, progress=False,
                                      out_dir=c.sweep_copy()), ValueError, "paths"),
    case("contexts/ragged", lambda c: ngrams.sweep_contexts(c.g, [[1, 2], [3]], "emb>dec", progress=False),
         ValueError, ("contexts", "[2, 1]")),
    case("contexts/1d", lambda c: ngrams.sweep_contexts(c.g, [1, 2, 3], "emb>dec", progress=False), ValueError,
         "(3,)"),
    case("contexts/empty", lambda c: ngrams.sweep_contexts(c.g, np.zeros((0, 1), np.int32), "emb>dec",
                                                           progress=False), ValueError, "(0, 1)"),
    case("contexts/out-of-range", lambda c: ngrams.sweep_contexts(c.g, [[1, 99]], "emb>dec", progress=False),
         ValueError, "99"),
    case("contexts/float", lambda c: ngrams.sweep_contexts(c.g, [[1.0]], "emb>dec", progress=False), TypeError,
         "float"),
    case("contexts/str", lambda c: ngrams.sweep_contexts(c.g, "abc", "emb>dec", progress=False),
         (TypeError, ValueError), "contexts"),
    case("contexts/no-paths", lambda c: ngrams.sweep_contexts(c.g, [[1]], progress=False), ValueError, "paths"),
    case("settings/kind-two-words", lambda c: ngrams.SweepSettings(paths="emb>dec", kind="two words"), ValueError,
         "two words"),
    case("settings/paths-int", lambda c: ngrams.SweepSettings(paths=5), ValueError, "5"),
    case("settings/top_k-bool", lambda c: ngrams.SweepSettings(paths="emb>dec", top_k=True), ValueError, "True"),
    case("settings/for_model-n_devices-0", lambda c: ngrams.SweepSettings(paths="emb>dec").for_model(c.g, 0),
         ValueError, "n_devices"),
    case("trigrams/contexts-3-wide", lambda c: ngrams.jet_trigrams(c.g, [[1, 2, 3]], progress=False), ValueError,
         "(1, 3)"),
    case("trigrams/contexts-out-of-range", lambda c: ngrams.jet_trigrams(c.g, [[1, 40]], progress=False),
         ValueError, "40"),
    case("trigrams/top_k-str", lambda c: ngrams.jet_trigrams(c.g, [[1, 2]], top_k="3", progress=False), ValueError,
         "'3'"),
    case("skip_bigrams/layers-out-of-range", lambda c: ngrams.jet_skip_bigrams(c.g, [[1, 2]], layers=[5],
                                                                                progress=False), ValueError, "5"),
    case("skip_bigrams/layers-negative", lambda c: ngrams.jet_skip_bigrams(c.g, [[1, 2]], layers=[-1],
                                                                            progress=False), ValueError, "-1"),
    case("skip_bigrams/layers-float", lambda c: ngrams.jet_skip_bigrams(c.g, [[1, 2]], layers=[0.0],
                                                                         progress=False), ValueError, "0.0"),
    case("candidates/empty", lambda c: ngrams.candidate_contexts([]), ValueError, "at least one"),
    case("candidates/str", lambda c: ngrams.candidate_contexts(["a"]), (TypeError, ValueError), "'a'"),
    case("candidates/float", lambda c: ngrams.candidate_contexts([1.7, 2.0]), TypeError, "1.7"),
    case("candidates/negative-then-trigrams",
         lambda c: ngrams.jet_trigrams(c.g, ngrams.candidate_contexts([-1, 2]), progress=False), ValueError, "-1"),
    case("bigram_candidates/per_row-0", lambda c: ngrams.bigram_candidates(c.table, per_row=0), ValueError,
         "per_row"),
    case("bigram_candidates/per_row-above-top_k", lambda c: ngrams.bigram_candidates(c.table, per_row=4),
         ValueError, "4"),
    case("bigram_candidates/first-unknown", lambda c: ngrams.bigram_candidates(c.table, first=[99]), (ValueError, KeyError),
         "99"),
    case("bigram_candidates/trigram-table", lambda c: ngrams.bigram_candidates(c.tri), ValueError, "n=3"),

    # -- n-grams: tables --------------------------------------------------------------------------
    case("table/top-negative", lambda c: c.table.top(-5), ValueError, "-5"),
    case("table/top-above-global", lambda c: c.table.top(1000), ValueError, "1000"),
    case("table/top-float", lambda c: c.table.top(2.0), ValueError, "2.0"),
    case("table/lookup-unknown-word", lambda c: c.table.lookup("zebra"), (ValueError, KeyError), "zebra"),
    case("table/lookup-out-of-range-id", lambda c: c.table.lookup(99), (ValueError, KeyError), "99"),
    case("table/row_of-too-long", lambda c: c.table.row_of([2, 3]), ValueError, "1 token"),
    case("table/filter-rows-out-of-range", lambda c: c.table.filter(rows=[99]), (IndexError, ValueError), "99"),
    case("table/filter-min_prob-str", lambda c: c.table.filter(min_prob="x"), (TypeError, ValueError),
         "min_prob"),
    case("table/filter-mask-wrong-shape", lambda c: c.table.filter(rows=np.array([True, False])), ValueError,
         "(2,)"),
    case("table/load-missing", lambda c: ngrams.NGramTable.load(c.tmp() / "nope"), FileNotFoundError, "nope"),
    case("table/load-a-file", lambda c: ngrams.NGramTable.load(_write(c.tmp() / "t.json", "{}")),
         (FileNotFoundError, NotADirectoryError, ValueError), "t.json"),
    case("table/load-invalid-json", lambda c: ngrams.NGramTable.load(_write(c.saved_table() / "table.json", "{")
                                                                     .parent), ValueError, "table.json"),
    case("table/load-json-list", lambda c: ngrams.NGramTable.load(_write(c.saved_table() / "table.json", "[1]")
                                                                  .parent), ValueError, "table.json"),
    case("table/load-truncated-safetensors",
         lambda c: ngrams.NGramTable.load(_write(c.saved_table() / "table.safetensors", b"\x08\x00\x00").parent),
         ValueError, "table.safetensors"),
    case("table/save-onto-file", lambda c: c.table.save(_write(c.tmp() / "plain.txt", "x")),
         (FileExistsError, NotADirectoryError, ValueError), ("plain.txt", "director")),
    case("diff/n-negative", lambda c: ngrams.diff_tables(c.table, c.table, n=-3), ValueError, "-3"),
    case("diff/n-float", lambda c: ngrams.diff_tables(c.table, c.table, n=1.5), ValueError, "1.5"),
    case("diff/bigram-vs-trigram", lambda c: ngrams.diff_tables(c.table, c.tri), ValueError, "contexts"),
    case("diff/not-a-table", lambda c: ngrams.diff_tables(c.table, "table.json"), TypeError, "str"),
    case("diff/other-vocabulary-size", lambda c: ngrams.diff_tables(c.table, c.table_l), ValueError, "vocabular"),
    case("diff/tokenizers-differ", lambda c: ngrams.diff_tables(c.table, _swap_tokens(c.table)), ValueError,
         "tokenizers differ"),
    case("diff/models-one", lambda c: ngrams.diff_tables(c.table, c.table, models=(c.g,)), (TypeError, ValueError),
         "models"),
    case("keywords/empty-list", lambda c: ngrams.keyword_mass(c.table, [], model=c.g), ValueError, "empty"),
    case("keywords/missing-file", lambda c: ngrams.keyword_mass(c.table, c.tmp() / "kw.txt", model=c.g),
         FileNotFoundError, "kw.txt"),
    case("keywords/directory", lambda c: ngrams.read_keywords(c.tmp()), FileNotFoundError, "not a file"),
    case("keywords/binary-file", lambda c: ngrams.keyword_mass(c.table, _write(c.tmp() / "kw.bin", b"war\x00\x01"),
                                                                model=c.g), ValueError, "kw.bin"),
    case("keywords/latin1-file", lambda c: ngrams.keyword_mass(c.table, _write(c.tmp() / "kw.txt", "war\ncaf\xe9\n"
                                                                                .encode("latin-1")), model=c.g),
         ValueError, "UTF-8"),
    case("keywords/only-comments", lambda c: ngrams.read_keywords(["# nothing", "   "]), ValueError, "empty"),
    case("keywords/ints", lambda c: ngrams.keyword_mass(c.table, [1, 2], model=c.g), ValueError, "int"),
    case("keywords/bytes", lambda c: ngrams.keyword_mass(c.table, b"war", model=c.g), ValueError, "b'war'"),
    case("keywords/None", lambda c: ngrams.keyword_mass(c.table, None, model=c.g), ValueError, "None"),
    case("keywords/none-in-vocab", lambda c: ngrams.keyword_mass(c.table, ["zebra", "lion"], model=c.g), ValueError,
         "zebra"),
    case("keywords/no-tokenizer", lambda c: ngrams.keyword_mass(c.table_l, ["war"]), ValueError, "tokenizer"),
    case("keywords/trigram-table", lambda c: ngrams.keyword_mass(c.tri, ["war"], model=c.g), ValueError, "n=3"),
    case("keywords/other-model", lambda c: ngrams.keyword_mass(c.table, ["war"], model=c.g2), ValueError,
         "fingerprint"),
    case("agree/bytes", lambda c: ngrams.corpus_agreement(c.table, CORPUS.encode(), c.g), TypeError, "bytes"),
    case("agree/None-text", lambda c: ngrams.corpus_agreement(c.table, None, c.g), TypeError, "NoneType"),
    case("agree/blank-text", lambda c: ngrams.corpus_agreement(c.table, " \n ", c.g), ValueError, "empty"),
    case("agree/min_count-0", lambda c: ngrams.corpus_agreement(c.table, CORPUS, c.g, min_count=0), ValueError,
         "min_count"),
    case("agree/min_count-too-high", lambda c: ngrams.corpus_agreement(c.table, CORPUS, c.g, min_count=10 ** 6),
         ValueError, "min_count"),
    case("agree/n_contexts-negative", lambda c: ngrams.corpus_agreement(c.table, CORPUS, c.g, n_contexts=-1),
         ValueError, "n_contexts"),
    case("agree/trigram-table", lambda c: ngrams.corpus_agreement(c.tri, CORPUS, c.g), ValueError, "n=3"),
    case("agree/other-model", lambda c: ngrams.corpus_agreement(c.table, CORPUS, c.g2), ValueError, "fingerprint"),
    case("agree/model-None", lambda c: ngrams.corpus_agreement(c.table, CORPUS, None), (TypeError, ValueError),
         "model"),

    # -- loading --------------------------------------------------------------------------------
    case("load/missing-dir", lambda c: jj.from_pretrained(c.tmp() / "nope"), FileNotFoundError, "nope"),
    case("load/empty-string", lambda c: jj.from_pretrained(""), (FileNotFoundError, ValueError), "''"),
    case("load/None", lambda c: jj.from_pretrained(None), TypeError, "None"),
    case("load/int", lambda c: jj.from_pretrained(123), (TypeError, FileNotFoundError), "123"),
    case("load/dir-without-config", lambda c: jj.from_pretrained(c.tmp()), FileNotFoundError, "config.json"),
    case("load/plain-file", lambda c: jj.from_pretrained(_write(c.tmp() / "weights.bin", b"x")),
         (NotADirectoryError, ValueError), "weights.bin"),
    case("load/garbage-gguf", lambda c: jj.from_pretrained(_write(c.tmp() / "m.gguf", b"GGUFjunk" * 4)), ValueError,
         "m.gguf"),
    case("load/gguf_file-path", lambda c: jj.from_pretrained(c.tmp(), gguf_file="a/b.gguf"), ValueError,
         "a/b.gguf"),
    case("load/gguf_file-missing", lambda c: jj.from_pretrained(c.tmp(), gguf_file="x.gguf"), FileNotFoundError,
         "x.gguf"),
    case("load/dtype-int32", lambda c: jj.from_pretrained(c.copy_ckpt(), dtype=jnp.int32), (TypeError, ValueError),
         "int32"),
    case("load/dtype-bool", lambda c: jj.from_pretrained(c.copy_ckpt(), dtype=bool), (TypeError, ValueError),
         "bool"),
    case("load/dtype-typo", lambda c: jj.from_pretrained(c.copy_ckpt(), dtype="float33"), (TypeError, ValueError),
         "float33"),
    case("load/config-invalid-json", lambda c: jj.from_pretrained(_write(c.copy_ckpt() / "config.json", "{").parent),
         ValueError, "config.json"),
    case("load/config-list", lambda c: jj.from_pretrained(_write(c.copy_ckpt() / "config.json", "[]").parent),
         ValueError, "JSON object"),
    case("load/config-no-model_type", lambda c: jj.from_pretrained(c.copy_ckpt(model_type=_DROP)), ValueError,
         "model_type"),
    case("load/config-n_layer-null", lambda c: jj.from_pretrained(c.copy_ckpt(n_layer=None)), ValueError, "n_layer"),
    case("load/config-n_layer-negative", lambda c: jj.from_pretrained(c.copy_ckpt(n_layer=-1)), ValueError,
         "n_layer"),
    case("load/config-n_layer-float", lambda c: jj.from_pretrained(c.copy_ckpt(n_layer=1.5)), ValueError, "n_layer"),
    case("load/config-n_embd-str", lambda c: jj.from_pretrained(c.copy_ckpt(n_embd="8")), ValueError, "n_embd"),
    case("load/config-n_head-not-dividing", lambda c: jj.from_pretrained(c.copy_ckpt(n_head=3)), ValueError,
         "n_head"),
    case("load/config-eps-negative", lambda c: jj.from_pretrained(c.copy_ckpt(layer_norm_epsilon=-1e-5)),
         ValueError, "layer_norm_epsilon"),
    case("load/config-n_positions-0", lambda c: jj.from_pretrained(c.copy_ckpt(n_positions=0)), ValueError,
         "n_positions"),
    case("load/config-vocab-mismatch", lambda c: jj.from_pretrained(c.copy_ckpt(vocab_size=99)), ValueError,
         "99"),
    case("load/config-activation", lambda c: jj.from_pretrained(c.copy_ckpt(activation_function="mish")),
         ValueError, "mish"),
    case("load/config-tie-str", lambda c: jj.from_pretrained(c.copy_ckpt(tie_word_embeddings="yes")), ValueError,
         "tie_word_embeddings"),
    case("load/tokenizer-corrupt", lambda c: jj.from_pretrained(_write(c.copy_ckpt() / "tokenizer.json", "{bad")
                                                                .parent), ValueError, "tokenizer.json"),
    case("load/weights-truncated",
         lambda c: jj.from_pretrained(_write(c.copy_ckpt() / "model.safetensors", b"\x10\x00\x00\x00").parent),
         ValueError, "model.safetensors"),

    # -- parallel.path_mesh -----------------------------------------------------------------------
    case("mesh/str", lambda c: path_mesh("cpu"), TypeError, "'cpu'"),
    case("mesh/empty", lambda c: path_mesh([]), ValueError, "empty"),
    case("mesh/repeated", lambda c: path_mesh([jax.devices()[0]] * 2), ValueError, "more than once"),
    case("mesh/one-device-not-list", lambda c: path_mesh(jax.devices()[0]), TypeError, "devices"),
    case("mesh/int", lambda c: path_mesh(5), TypeError, "5"),
    case("mesh/axis_name-int-then-reduce",
         lambda c: jj.reduce_paths(c.g, [2, 3], mesh=path_mesh(jax.devices()[:2], axis_name=5)),
         (TypeError, ValueError), "axis_name"),
]

_names = [c.name for c in CASES]
assert len(set(_names)) == len(_names), sorted({n for n in _names if _names.count(n) > 1})


# ---------------------------------------------------------------------------------------------
# Running and classifying

class _Hang(BaseException):
    pass


_COMPILE_SECONDS = [0.0]


def _listen_compiles():
    if getattr(_listen_compiles, "done", False):
        return
    _listen_compiles.done = True

    def on_event(event, duration, **_):
        if "compile" in event and event.endswith("duration"):
            _COMPILE_SECONDS[0] += duration
    jax.monitoring.register_event_duration_secs_listener(on_event)


def _raising_frame(err: BaseException) -> str:
    tb = err.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last.tb_frame.f_code.co_filename if last is not None else "?"


def _in_jetjax(filename: str) -> bool:
    try:
        return str(Path(filename).resolve()).startswith(JETJAX_DIR)
    except OSError:
        return False


def run_case(case: Case, ctx: Ctx) -> Result:
    _listen_compiles()
    filtering = jax.config.jax_traceback_filtering
    jax.config.update("jax_traceback_filtering", "off")   # see the real raising frame
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(_Hang()))
    compiled0, t0 = _COMPILE_SECONDS[0], time.perf_counter()
    setup0, setup_c0 = ctx.setup_seconds, ctx.setup_compile
    err = value = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        signal.setitimer(signal.ITIMER_REAL, case.timeout)
        try:
            value = case.call(ctx)
        except _Hang:
            err = _Hang()
        except Exception as e:   # noqa: BLE001 - classifying is the point
            err = e
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
            jax.config.update("jax_traceback_filtering", filtering)
    seconds = time.perf_counter() - t0 - (ctx.setup_seconds - setup0)
    compiled = _COMPILE_SECONDS[0] - compiled0 - (ctx.setup_compile - setup_c0)
    if isinstance(err, _Hang):
        return Result(case, "bad", f"hung (> {case.timeout:.0f} s)", "", seconds)
    if err is None:
        for w in caught:
            if case.warn is not None and case.warn in str(w.message):
                return Result(case, "good", "warned", f"warning: {w.message}", seconds)
        shown = repr(value)
        shown = shown if len(shown) < 200 else shown[:200] + "..."
        return Result(case, "bad", "no error", f"returned {shown}", seconds)
    msg = f"{type(err).__name__}: {err}"
    text = str(err)
    if not isinstance(err, case.errors):
        why = f"{type(err).__name__}, expected {'/'.join(e.__name__ for e in case.errors)}"
    elif not all(n in text for n in case.needle):
        why = f"message does not name {' / '.join(repr(n) for n in case.needle if n not in text)}"
    elif not _in_jetjax(_raising_frame(err)):
        why = f"raised outside jetjax ({Path(_raising_frame(err)).name})"
    elif any(p in text for p in INTERNAL):
        why = "internal phrasing: " + next(p for p in INTERNAL if p in text)
    elif seconds > case.budget and compiled > 1.0:
        why = f"raised after {seconds:.1f} s ({compiled:.1f} s compiling)"
    else:
        return Result(case, "good", "", msg, seconds)
    return Result(case, "unclear", why, msg, seconds)


def run_all(cases=CASES, ctx: Ctx | None = None) -> list[Result]:
    own = ctx is None
    ctx = ctx or Ctx()
    try:
        return [run_case(c, ctx) for c in cases]
    finally:
        if own:
            ctx.close()


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


# Cases that are not good today: name -> reason (the test marks them strict xfail). Keep in step with
# the tool's output (``python tools/redteam_api.py``): a fixed case XPASSes and must leave this list.
KNOWN: dict[str, str] = {
    # Cases that are not "good" today, with what is wrong; none at the last run. (Table lookups raise a
    # documented KeyError, as a mapping does; their cases accept it.)
}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", default="", help="only cases whose name contains this")
    parser.add_argument("--all", action="store_true", help="list good cases too")
    parser.add_argument("--known", action="store_true", help="print a KNOWN dict for the current outcomes")
    args = parser.parse_args(argv)
    jax.config.update("jax_numpy_dtype_promotion", "strict")   # as the test suite runs
    warnings.simplefilter("ignore")
    cases = [c for c in CASES if args.k in c.name]
    t0 = time.perf_counter()
    results = run_all(cases)
    width = max(len(r.case.name) for r in results)
    counts = {"good": 0, "unclear": 0, "bad": 0}
    for r in results:
        counts[r.outcome] += 1
        if r.outcome != "good" or args.all:
            print(f"{r.case.name:<{width}}  {r.outcome:<7}  {r.seconds:5.1f}s  {_one_line(r.why, 60)}")
            print(f"{'':<{width}}  {'':<7}          {_one_line(r.message, 160)}")
    print(f"\n{len(results)} cases in {time.perf_counter() - t0:.0f} s: " +
          ", ".join(f"{k} {v}" for k, v in counts.items()))
    changed = [r.case.name for r in results if (r.outcome != "good") != (r.case.name in KNOWN)]
    if changed:
        print("differ from KNOWN:", ", ".join(changed))
    if args.known:
        print("KNOWN = {")
        for r in results:
            if r.outcome != "good":
                print(f"    {r.case.name!r}: {(r.outcome + ': ' + r.why)!r},")
        print("}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
