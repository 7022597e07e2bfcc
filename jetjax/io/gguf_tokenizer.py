"""Rebuild a GGUF file's tokenizer as a Hugging Face ``tokenizers.Tokenizer``.

A GGUF carries no ``tokenizer.json``: the vocabulary, merges, token types and a few flags sit in its
metadata under llama.cpp's ``tokenizer.ggml.*`` keys, and llama.cpp's own tokenizer is what gives them
meaning. So the pre-tokenizer, BOS and special-token rules below follow llama.cpp (``src/llama-vocab.cpp``),
not a guess from the architecture. Two vocabulary kinds are supported:

* ``tokenizer.ggml.model == "gpt2"``: byte-level BPE. ``tokenizer.ggml.pre`` names the regex split
  llama.cpp applies before the merges (see :data:`PRE_TOKENIZERS`).
* ``tokenizer.ggml.model == "llama"``: SentencePiece-style BPE over ``▁``-escaped text with byte fallback,
  merges from the file or, as llama.cpp does, implied by the token scores.

Only the Rust ``tokenizers`` package is used; nothing in the file is executed (the chat template is
ignored). :func:`jetjax.io.gguf.read_gguf_metadata` turns a file's metadata into plain Python values.

  >>> tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ", "Ġab"]
  >>> tok = tokenizer_from_gguf({
  ...     "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2",
  ...     "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": ["a b", "Ġ ab"],
  ...     "tokenizer.ggml.token_type": [3, 1, 1, 1, 1, 1]})
  >>> tok.encode("ab ab<|endoftext|>").ids
  [3, 5, 0]
  >>> tok.decode([3, 5])
  'ab ab'
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

__all__ = ["PRE_TOKENIZERS", "tokenizer_from_gguf", "ByteCheckedTokenizer", "missing_bytes", "byte_symbols"]

# llama.cpp's token types (``llama_token_type``), as stored in ``tokenizer.ggml.token_type``.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The regexes llama.cpp splits text with before byte-level BPE, applied one after the other, each
# keeping both its matches and the text between them as separate pieces (``Split(..., "isolated")``).
# The contractions are spelled out case by case, as llama.cpp does, rather than with ``(?i:...)``:
# Unicode case folding would also let ``'ſ`` (long s) match ``'s``.
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_LLAMA3 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


class PreTokenizer(NamedTuple):
    """How llama.cpp treats one ``tokenizer.ggml.pre`` value of a byte-level vocabulary."""

    splits: tuple[str, ...]  # regexes, applied in order
    ignore_merges: bool = False  # a piece that is itself a token is taken whole, without merging
    add_bos: bool = False  # llama.cpp's choice when the file has no ``tokenizer.ggml.add_bos_token``


_LLAMA3_PRE = PreTokenizer((_LLAMA3,), ignore_merges=True, add_bos=True)
_QWEN2_PRE = PreTokenizer((_QWEN2,))
_GPT2_PRE = PreTokenizer((_GPT2,))
_DIGITS_THEN_GPT2 = PreTokenizer((r"\p{N}", _GPT2))  # each digit on its own, then GPT-2's split

#: ``tokenizer.ggml.pre`` values understood for ``gpt2``-type vocabularies, grouped as llama.cpp groups
#: them. A file without the key gets ``"default"``, as in llama.cpp -- which is not GPT-2's regex alone:
#: punctuation runs and numbers are cut out too, and numbers into groups of three digits.
PRE_TOKENIZERS: dict[str, PreTokenizer] = {
    "default": PreTokenizer((r"[\p{P}\$\+<=>\^~\|]+", _GPT2, r"\p{N}+", r"[0-9][0-9][0-9]")),
    **dict.fromkeys(("gpt-2", "phi-2", "mpt", "olmo"), _GPT2_PRE),
    **dict.fromkeys(("smollm", "starcoder", "refact", "codeshell"), _DIGITS_THEN_GPT2),
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3"), _LLAMA3_PRE),
    **dict.fromkeys(("dbrx", "smaug-bpe"), PreTokenizer((_LLAMA3,))),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "stablelm2", "megrez"), _QWEN2_PRE),
}

_MODELS = ("gpt2", "llama")
_KEY = "tokenizer.ggml."


def tokenizer_from_gguf(meta: dict, *, source: str = "GGUF file"):
    """A ``tokenizers.Tokenizer`` equivalent to llama.cpp's tokenizer for this GGUF metadata.

    ``meta`` maps GGUF keys to plain values (see :func:`jetjax.io.gguf.read_gguf_metadata`); ``source`` names the file
    in error messages. ``encode(text)`` adds BOS (and EOS) as llama.cpp would with ``add_special``:
    ``tokenizer.ggml.add_bos_token`` when present, else llama.cpp's default (on for ``llama`` vocabularies
    and the Llama-3 pre-tokenizers, off otherwise). Control (and unknown) tokens become special added
    tokens, matched whole anywhere in the text; user-defined tokens become plain added tokens, also
    matched whole. Raises ``ValueError`` naming the key or value when the metadata is not usable.

    A byte-level vocabulary that lacks the symbol of a byte UTF-8 text can hold (SmolLM2's lacks six
    control characters and two 4-byte lead bytes) would drop such bytes without a word; it comes back
    wrapped in a :class:`ByteCheckedTokenizer`, whose ``encode`` raises ``ValueError`` naming the
    characters instead (everything else is the wrapped tokenizer's).
    """
    model = meta.get(_KEY + "model")
    if not isinstance(model, str) or model not in _MODELS:
        raise ValueError(f"{source}: tokenizer.ggml.model is {_brief(model)}; supported: "
                         f"{', '.join(map(repr, _MODELS))}.")
    tokens = _tokens(meta, source)
    types = _per_token(meta, "token_type", tokens, source)
    scores = _per_token(meta, "scores", tokens, source)
    merges = _merges(meta, tokens, source)
    if model == "gpt2":
        tok, add_bos = _byte_level(meta, tokens, merges, source)
        missing = missing_bytes(tokens)   # byte-level BPE drops a byte whose symbol is not a token
    else:
        tok, add_bos = _sentencepiece(meta, tokens, scores, merges, source)
        missing = frozenset()             # byte fallback to <0xNN> tokens, else the unknown token: not dropped
    _add_special_tokens(tok, tokens, types)
    _set_post_processor(tok, meta, tokens, model, add_bos, source)
    return ByteCheckedTokenizer(tok, missing, source) if missing else tok


# --------------------------------------------------------------------------------------------------
# validation


def _tokens(meta, source) -> list[str]:
    key = _KEY + "tokens"
    tokens = meta.get(key)
    if not isinstance(tokens, (list, tuple)) or not tokens or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{source}: {key} must be a non-empty list of strings, got {_brief(tokens)}.")
    tokens = list(tokens)
    seen = {}
    for i, token in enumerate(tokens):
        if not token:  # llama.cpp renames empty tokens the same way, so they cannot collide with text
            tokens[i] = token = f"[EMPTY_{i}]"
        if token in seen:  # a vocabulary maps strings to ids, so a repeat would silently lose an id
            raise ValueError(f"{source}: {key} lists {token!r} twice (ids {seen[token]} and {i}).")
        seen[token] = i
    return tokens


def _per_token(meta, name, tokens, source) -> list | None:
    """``tokenizer.ggml.<name>`` (one number per token), or None when absent."""
    key = _KEY + name
    values = meta.get(key)
    if values is None:
        return None
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{source}: {key} must be a list with one number per token, got {_brief(values)}.")
    values = list(values)
    if len(values) != len(tokens):
        raise ValueError(f"{source}: {key} has {len(values)} entries but tokenizer.ggml.tokens has {len(tokens)}.")
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{source}: {key} must hold numbers, got {_brief(values)}.")
    return values


def _merges(meta, tokens, source) -> list[tuple[str, str]] | None:
    """The file's merges as pairs, checked against the vocabulary; None when the file has none."""
    key = _KEY + "merges"
    merges = meta.get(key)
    if merges is None:
        return None
    if not isinstance(merges, (list, tuple)):
        raise ValueError(f"{source}: {key} must be a list of 'left right' strings, got {_brief(merges)}.")
    vocab = set(tokens)
    pairs = []
    for i, merge in enumerate(merges):
        left, _, right = merge.partition(" ") if isinstance(merge, str) else ("", "", "")
        if not left or not right or " " in right:
            raise ValueError(f"{source}: {key}[{i}] is {merge!r}, not two tokens joined by one space.")
        missing = [t for t in (left, right, left + right) if t not in vocab]
        if missing:
            raise ValueError(f"{source}: {key}[{i}] is {merge!r}, but {missing[0]!r} is not in tokenizer.ggml.tokens.")
        pairs.append((left, right))
    return pairs


def _token_id(meta, name, tokens, source, default=None) -> int | None:
    key = f"{_KEY}{name}_token_id"
    value = meta.get(key, default)
    if value is None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not 0 <= value < len(tokens):
        raise ValueError(f"{source}: {key} is {value!r}, not a token id below {len(tokens)}.")
    return int(value)


def _flag(meta, name, default: bool, source) -> bool:
    key = _KEY + name
    value = meta.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {key} must be a bool, got {value!r}.")
    return value


def _brief(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# --------------------------------------------------------------------------------------------------
# the two vocabulary kinds


def _byte_level(meta, tokens, merges, source):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    pre_name = meta.get(_KEY + "pre", "default")  # llama.cpp's choice (with a warning) for older files
    pre = PRE_TOKENIZERS.get(pre_name) if isinstance(pre_name, str) else None
    if pre is None:  # a wrong split silently changes every id, so refuse rather than guess
        raise ValueError(f"{source}: tokenizer.ggml.pre is {pre_name!r}, which this loader does not know; "
                         f"supported: {', '.join(sorted(PRE_TOKENIZERS))}.")
    if merges is None:
        raise ValueError(f"{source}: a gpt2 (byte-level BPE) vocabulary needs tokenizer.ggml.merges.")
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=pre.ignore_merges)
    tok = Tokenizer(bpe)
    # Split on the raw text first, then map bytes to GPT-2's printable alphabet, so no regex ever sees
    # the byte-mapped characters.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in pre.splits]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok, _flag(meta, "add_bos_token", pre.add_bos, source)


def _sentencepiece(meta, tokens, scores, merges, source):
    from tokenizers import Tokenizer, decoders, models, normalizers

    if merges is None:
        if scores is None:
            raise ValueError(f"{source}: a llama (SentencePiece) vocabulary needs tokenizer.ggml.scores "
                             "or tokenizer.ggml.merges.")
        merges = _merges_from_scores(tokens, scores)
    unk = _token_id(meta, "unknown", tokens, source, default=0)  # llama.cpp's default for this kind
    bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, unk_token=tokens[unk],
                     fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(bpe)
    # llama.cpp puts a space before the start of the text and after every special or user-defined
    # token (unless tokenizer.ggml.add_space_prefix is false, as in Gemma's files), then writes spaces
    # as ▁ and runs BPE over the whole stretch (no split on spaces). A normalizer runs on each stretch
    # between added tokens, which is exactly that. Gemma's runs of 2-31 spaces are user-defined tokens
    # stored with real spaces, so like "\n" they are matched whole in the raw text, longest first.
    space_prefix = _flag(meta, "add_space_prefix", True, source)
    steps = [normalizers.Prepend("▁")] if space_prefix else []
    tok.normalizer = normalizers.Sequence(steps + [normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        + ([decoders.Strip(" ", 1, 0)] if space_prefix else []))
    return tok, _flag(meta, "add_bos_token", True, source)


def byte_symbols() -> list[str]:
    """The printable character GPT-2's byte-level alphabet writes for each byte 0..255
    (``bytes_to_unicode``: printable Latin-1 bytes stand for themselves, the others from U+0100 on)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


# Bytes that never occur in UTF-8 text: a vocabulary may lack their symbols without losing any text.
_NOT_UTF8 = frozenset({0xC0, 0xC1, *range(0xF5, 0x100)})


def missing_bytes(tokens) -> frozenset[int]:
    """The bytes that can occur in UTF-8 text but whose byte-level symbol is not a token of ``tokens``.

    Byte-level BPE spells every piece of text in these 256 symbols and merges from there; a byte whose
    symbol is not in the vocabulary has no id, and the ``tokenizers`` library drops it without a word.

    >>> sorted(missing_bytes(["a", "b", "Ġ"]))[:3], len(missing_bytes(byte_symbols()))
    ([0, 1, 2], 0)
    """
    vocab = set(tokens)
    return frozenset(b for b, sym in enumerate(byte_symbols()) if sym not in vocab and b not in _NOT_UTF8)


class ByteCheckedTokenizer:
    """A byte-level ``tokenizers.Tokenizer`` whose vocabulary lacks some byte symbols, wrapped so that
    encoding text it would silently drop raises ``ValueError`` (naming the characters) instead.

    Everything else (``decode``, ``token_to_id``, ``get_vocab``, ``save``, ...) is the wrapped
    tokenizer's own; ``tokenizer`` is the wrapped object. Text matched whole by an added (special or
    user-defined) token needs no byte symbols and passes.
    """

    def __init__(self, tokenizer, missing: frozenset[int], source: str):
        import re

        added = sorted((t.content for t in tokenizer.get_added_tokens_decoder().values() if t.content),
                       key=len, reverse=True)
        object.__setattr__(self, "tokenizer", tokenizer)
        object.__setattr__(self, "_missing", frozenset(missing))
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_added", re.compile("|".join(map(re.escape, added))) if added else None)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("tokenizer", "_missing", "_source", "_added"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)

    def __setattr__(self, name, value):
        setattr(self.tokenizer, name, value)

    def __repr__(self) -> str:
        return f"ByteCheckedTokenizer({len(self._missing)} byte symbols missing, {self._source})"

    def check(self, text) -> None:
        """Raise ``ValueError`` if encoding ``text`` (a str, or a list of str pieces) would drop bytes."""
        if isinstance(text, (list, tuple)):
            for piece in text:
                self.check(piece)
            return
        if not isinstance(text, str):
            return   # the wrapped tokenizer gives its own error
        plain = self._added.sub("", text) if self._added is not None else text
        bad = sorted(ch for ch in set(plain) if any(b in self._missing for b in ch.encode("utf-8", "surrogatepass")))
        if bad:
            shown = ", ".join(repr(ch) for ch in bad[:8]) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")
            raise ValueError(f"{self._source}: the byte-level vocabulary (tokenizer.ggml.tokens) has no symbol for "
                             f"the UTF-8 bytes of {shown} in the text, so tokenizing it would silently drop them "
                             f"({len(self._missing)} of the 256 byte symbols are missing). Pass token ids instead, "
                             "or use a file whose vocabulary holds every byte symbol.")

    def encode(self, sequence, pair=None, is_pretokenized=False, add_special_tokens=True):
        self.check(sequence)
        if pair is not None:
            self.check(pair)
        return self.tokenizer.encode(sequence, pair, is_pretokenized=is_pretokenized,
                                     add_special_tokens=add_special_tokens)

    def encode_batch(self, input, is_pretokenized=False, add_special_tokens=True):  # noqa: A002 - tokenizers' name
        for item in input:
            self.check(list(item) if isinstance(item, tuple) else item)
        return self.tokenizer.encode_batch(input, is_pretokenized=is_pretokenized,
                                           add_special_tokens=add_special_tokens)

    def encode_batch_fast(self, input, is_pretokenized=False, add_special_tokens=True):  # noqa: A002
        for item in input:
            self.check(list(item) if isinstance(item, tuple) else item)
        return self.tokenizer.encode_batch_fast(input, is_pretokenized=is_pretokenized,
                                                add_special_tokens=add_special_tokens)


def _merges_from_scores(tokens, scores) -> list[tuple[str, str]]:
    """The merges a SentencePiece BPE vocabulary implies: every way of writing a token as two tokens,
    best merged-token score first.

    llama.cpp merges, at each step, the adjacent pair whose concatenation is the best-scoring token, so
    ranking pairs by that score reproduces it. Ties are broken as transformers' GGUF loader breaks them
    (longer left part, then longer right part, then the merged token's id, then the parts' ids), so the
    two agree merge for merge. (Gemma's normal tokens score strictly lower the later they come in the
    file, so for Gemma this is also the file order that transformers ranks its merges by.)
    """
    index = {t: i for i, t in enumerate(tokens)}
    ranked = []
    for token, score in zip(tokens, scores):
        splits = [(token[:k], token[k:]) for k in range(1, len(token))]
        splits = sorted((p for p in splits if p[0] in index and p[1] in index),
                        key=lambda p: (index[p[0]], index[p[1]]))
        ranked.extend((-score, -len(left), -len(right), left, right) for left, right in splits)
    ranked.sort(key=lambda m: m[:3])  # stable, so equal keys keep vocabulary order
    return [(left, right) for *_, left, right in ranked]


# --------------------------------------------------------------------------------------------------
# added tokens and BOS/EOS


def _add_special_tokens(tok, tokens, types) -> None:
    """Control and unknown tokens -> special added tokens; user-defined ones -> plain added tokens.

    llama.cpp matches all three kinds whole in the raw text before any splitting, so they are added
    un-normalized. Their strings are already vocabulary entries, so they keep the file's ids.
    """
    from tokenizers import AddedToken

    if types is None:
        return
    special = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if kind in (UNKNOWN, CONTROL)]
    plain = [AddedToken(t, special=False, normalized=False) for t, kind in zip(tokens, types) if kind == USER_DEFINED]
    if special:
        tok.add_special_tokens(special)
    if plain:
        tok.add_tokens(plain)


def _set_post_processor(tok, meta, tokens, model, add_bos, source) -> None:
    from tokenizers import processors

    llama = model == "llama"  # llama.cpp's fallback ids for SentencePiece vocabularies: <s> 1, </s> 2
    add_eos = _flag(meta, "add_eos_token", False, source)
    bos = _token_id(meta, "bos", tokens, source, default=1 if llama and len(tokens) > 1 else None)
    eos = _token_id(meta, "eos", tokens, source, default=2 if llama and len(tokens) > 2 else None)
    for wanted, name, token_id in ((add_bos, "bos", bos), (add_eos, "eos", eos)):
        if wanted and token_id is None:
            raise ValueError(f"{source}: tokenizer.ggml.add_{name}_token is on but "
                             f"tokenizer.ggml.{name}_token_id is missing.")
    # Template pieces are named "<bos>"/"<eos>" and carry the real token separately, since a token's own
    # text could contain ':' or start with '$', which the template syntax would misread.
    head = ["<bos>"] if add_bos else []
    tail = ["<eos>"] if add_eos else []
    added = [("<bos>", bos)] * add_bos + [("<eos>", eos)] * add_eos
    tok.post_processor = processors.TemplateProcessing(
        single=[*head, "$A", *tail],
        pair=[*head, "$A", *tail, *(f"{t}:1" for t in head), "$B:1", *(f"{t}:1" for t in tail)],
        special_tokens=[{"id": name, "ids": [i], "tokens": [tokens[i]]} for name, i in added])
