"""Load GGUF checkpoints (llama.cpp's format) into a :class:`~jetjax.models.model.Model`.

A GGUF file carries the config (as metadata under llama.cpp's key names), the tokenizer (as
``tokenizer.ggml.*`` metadata) and the weights (often block-quantized). Loading here:

* reads the metadata and the tensor table itself (:func:`open_gguf`, ``struct`` on an ``mmap``: the
  ``gguf`` package's reader needs 15-30 s for a 262k-token vocabulary), leaving the weights mapped;
* translates the metadata into the config a Hugging Face ``config.json`` of the same family would
  hold, so the family's own config parser and weight map (``jetjax.models``) do the rest, exactly
  as for safetensors checkpoints (:func:`gguf_to_hf` shows that config and the tensors);
* dequantizes tensor by tensor with ``gguf.quants`` (every type it implements) into ``dtype``
  (default float32), undoing llama.cpp's layout changes: GGUF lists dimensions innermost first,
  rotary Llama models store the rows of Q and K interleaved for llama.cpp's rope kernel, GPT-2
  matrices are stored transposed, Gemma's RMS norm gains are stored as ``1 + w``;
* builds the tokenizer from the metadata (:mod:`jetjax.io.gguf_tokenizer`).

Architectures: ``llama`` (and Mistral written as llama), ``qwen2``, ``gpt2``, ``gemma2`` and ``gemma3``
(text; transformers' ``gemma3_text``). Where the metadata is silent, the config takes the values
llama.cpp's loader hard-codes (Gemma's sliding-window patterns, local rope base, soft-caps, query scale).

Nothing in the file is executed: the chat template is ignored. Metadata that would change the
computation and that jetjax does not implement (rope scaling types, experts, ...) is refused by
name, never guessed.

Example (a tiny random Llama written to GGUF by ``gguf.GGUFWriter``, as the tests do):
  >>> import jetjax as jj                                          # doctest: +SKIP
  >>> model = jj.from_pretrained("SmolLM2-135M-Instruct.Q4_1.gguf")  # doctest: +SKIP
  >>> model.config.n_layers, model.config.vocab_size                # doctest: +SKIP
  (30, 49152)
"""

from __future__ import annotations

import dataclasses
import math
import mmap
import os
import struct
from pathlib import Path
from typing import Any, Callable

import numpy as np

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)

# Metadata that describes the file, its provenance or text generation, never the computation.
_IGNORED_PREFIXES = ("general.", "tokenizer.", "GGUF.", "quantize.")


# ---------------------------------------------------------------------------------------------
# Per-architecture translation: metadata -> config.json dict, tensor names -> HF names.

@dataclasses.dataclass(frozen=True)
class _Arch:
    """How one GGUF ``general.architecture`` maps onto a jetjax family.

    ``keys``: the ``<arch>.*`` metadata keys read (``handled``) or known to have no effect
    (``ignored``); any other ``<arch>.*`` key is refused. ``config``: metadata -> a config.json
    dict. ``tensors``: GGUF name -> HF name for one layer index (``{i}`` placeholders) and the
    global tensors. ``fix``: ``(hf_name, array, hf_config) -> array``, undoing llama.cpp's layout.
    """

    model_type: str
    handled: frozenset[str]
    ignored: frozenset[str]
    config: Callable[[dict, set], dict]
    global_tensors: dict[str, str]
    layer_tensors: dict[str, str]
    fix: Callable[[str, np.ndarray, dict], np.ndarray]


def _llama_config(model_type: str) -> Callable[[dict, set], dict]:
    def build(meta: dict, names: set) -> dict:
        a = meta["general.architecture"]
        key = lambda k, default=None: meta.get(f"{a}.{k}", default)  # noqa: E731
        d, heads = _need(meta, f"{a}.embedding_length"), _need(meta, f"{a}.attention.head_count")
        head_dim = key("attention.key_length", d // heads)
        if key("attention.value_length", head_dim) != head_dim:
            raise ValueError(f"{a}.attention.value_length={key('attention.value_length')} differs from the "
                             f"key length {head_dim}; jetjax supports equal key and value head sizes only")
        rope_dim = key("rope.dimension_count", head_dim)
        if rope_dim != head_dim:
            raise ValueError(f"{a}.rope.dimension_count={rope_dim} rotates part of each head (head size "
                             f"{head_dim}); partial rotary embeddings are not supported for {a}")
        cfg = {
            "model_type": model_type,
            "hidden_size": d,
            "num_hidden_layers": _need(meta, f"{a}.block_count"),
            "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "intermediate_size": _need(meta, f"{a}.feed_forward_length"),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
            "vocab_size": _vocab_size(meta, a),
            "tie_word_embeddings": "output.weight" not in names,
            "rope_parameters": {"rope_theta": float(key("rope.freq_base", 10000.0)), **_rope_scaling(meta, a)},
        }
        if model_type == "llama":
            cfg["attention_bias"] = "blk.0.attn_q.bias" in names
        return cfg

    return build


def _rope_scaling(meta: dict, a: str) -> dict:
    kind = meta.get(f"{a}.rope.scaling.type", "none")
    if kind == "none":
        return {}
    if kind == "linear":
        return {"rope_type": "linear", "factor": float(_need(meta, f"{a}.rope.scaling.factor"))}
    raise ValueError(f"{a}.rope.scaling.type={kind!r} is not supported (jetjax implements 'none' and 'linear')")


def _vocab_size(meta: dict, a: str) -> int:
    if f"{a}.vocab_size" in meta:
        return int(meta[f"{a}.vocab_size"])
    if "tokenizer.ggml.tokens" in meta:
        return len(meta["tokenizer.ggml.tokens"])
    raise ValueError(f"the file states no vocabulary size ({a}.vocab_size or tokenizer.ggml.tokens)")


def _gpt2_config(meta: dict, names: set) -> dict:
    return {
        "model_type": "gpt2",
        "n_embd": _need(meta, "gpt2.embedding_length"),
        "n_layer": _need(meta, "gpt2.block_count"),
        "n_head": _need(meta, "gpt2.attention.head_count"),
        "n_inner": _need(meta, "gpt2.feed_forward_length"),
        "n_positions": _need(meta, "gpt2.context_length"),
        "layer_norm_epsilon": meta.get("gpt2.attention.layer_norm_epsilon", 1e-5),
        "vocab_size": _vocab_size(meta, "gpt2"),
        "tie_word_embeddings": "output.weight" not in names,
    }


def _unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for Q/K of rotary models.

    llama.cpp's rope kernel rotates adjacent pairs ``(2i, 2i+1)``, the Hugging Face layout rotates
    ``(i, i + d/2)``; its converter reorders each head's rows from ``[first half; second half]`` to
    ``[r0, r_{d/2}, r1, r_{d/2+1}, ...]``. This puts them back.
    """
    rows = w.shape[0]
    per_head = rows // n_heads
    return w.reshape(n_heads, per_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama_fix(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    if ".self_attn.q_proj." in hf_name:
        return _unpermute_rows(w, cfg["num_attention_heads"])
    if ".self_attn.k_proj." in hf_name:
        return _unpermute_rows(w, cfg["num_key_value_heads"])
    return w


def _gpt2_fix(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    # HF GPT-2 stores Conv1D weights (in, out); llama.cpp's converter transposed them to (out, in)
    if w.ndim == 2 and hf_name.startswith("h.") and hf_name.endswith(".weight"):
        return w.T
    return w


_LLAMA_KEYS = frozenset({
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
    "rope.dimension_count", "rope.scaling.type", "rope.scaling.factor", "vocab_size",
})
# the position limit is not enforced by HF either; the original context of a rope scaling is
# only informative for 'linear'
_LLAMA_IGNORED = frozenset({"context_length", "rope.scaling.original_context_length"})

_LLAMA_LAYER = {
    "blk.{i}.attn_norm.weight": "layers.{i}.input_layernorm.weight",
    "blk.{i}.attn_q.weight": "layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.attn_q.bias": "layers.{i}.self_attn.q_proj.bias",
    "blk.{i}.attn_k.bias": "layers.{i}.self_attn.k_proj.bias",
    "blk.{i}.attn_v.bias": "layers.{i}.self_attn.v_proj.bias",
    "blk.{i}.attn_output.bias": "layers.{i}.self_attn.o_proj.bias",
    "blk.{i}.ffn_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.ffn_gate.weight": "layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "layers.{i}.mlp.down_proj.weight",
}
_LLAMA_GLOBAL = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
                 "output.weight": "lm_head.weight"}

_GPT2_LAYER = {
    f"blk.{{i}}.{g}.{p}": f"h.{{i}}.{h}.{p}"
    for g, h in (("attn_norm", "ln_1"), ("attn_qkv", "attn.c_attn"), ("attn_output", "attn.c_proj"),
                 ("ffn_norm", "ln_2"), ("ffn_up", "mlp.c_fc"), ("ffn_down", "mlp.c_proj"))
    for p in ("weight", "bias")
}
_GPT2_GLOBAL = {"token_embd.weight": "wte.weight", "position_embd.weight": "wpe.weight",
                "output_norm.weight": "ln_f.weight", "output_norm.bias": "ln_f.bias",
                "output.weight": "lm_head.weight"}

# -- Gemma 2 and Gemma 3 (text). llama.cpp's converter stores these like Llama's, except: every
# RMS norm gain is written as 1 + w (the factor Gemma's norm multiplies by), Q and K rows keep HF's
# order (llama.cpp runs Gemma with the "rotate half" rope), and the output matrix is the embedding.
# What the metadata leaves out, llama.cpp's loader (src/llama-model.cpp) hard-codes; the comments
# below name each such value, and the config follows llama.cpp where transformers' GGUF loader
# falls back to class defaults instead (it does on query_pre_attn_scalar and the soft-caps).

def _gemma_config(model_type: str) -> Callable[[dict, set], dict]:
    def build(meta: dict, names: set) -> dict:
        a = meta["general.architecture"]
        key = lambda k, default=None: meta.get(f"{a}.{k}", default)  # noqa: E731
        d, heads = _need(meta, f"{a}.embedding_length"), _need(meta, f"{a}.attention.head_count")
        n_layers = _need(meta, f"{a}.block_count")
        head_dim = key("attention.key_length", d // heads)
        _same(a, "attention.value_length", key("attention.value_length", head_dim), "the key length", head_dim)
        _same(a, "rope.dimension_count", key("rope.dimension_count", head_dim), "the head size", head_dim)
        cfg = {
            "model_type": model_type,
            "hidden_size": d,
            "num_hidden_layers": n_layers,
            "num_attention_heads": heads,
            "num_key_value_heads": key("attention.head_count_kv", heads),
            "head_dim": head_dim,
            "intermediate_size": _need(meta, f"{a}.feed_forward_length"),
            "vocab_size": _vocab_size(meta, a),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
            "tie_word_embeddings": "output.weight" not in names,
            "hidden_activation": "gelu_pytorch_tanh",  # llama.cpp's Gemma FFN: ggml_gelu, the tanh form
            "query_pre_attn_scalar": _query_pre_attn_scalar(a, d, heads, head_dim, n_layers),
        }
        extra = _gemma2_extra if a == "gemma2" else _gemma3_extra
        return {**cfg, **extra(meta, a, n_layers)}

    return build


def _same(a: str, k: str, value, what: str, expected) -> None:
    if value != expected:
        raise ValueError(f"{a}.{k}={value} differs from {what} {expected}; jetjax supports {a} "
                         f"only with them equal, as llama.cpp's converter writes them")


# llama.cpp scales queries by head size^-1/2, except for the 27B models (46 Gemma 2 / 62 Gemma 3
# layers), which use d_model / n_heads, after gemma_pytorch's configs
_LAYERS_OF_27B = {"gemma2": 46, "gemma3": 62}


def _query_pre_attn_scalar(a: str, d: int, heads: int, head_dim: int, n_layers: int) -> int:
    return d // heads if n_layers == _LAYERS_OF_27B[a] else head_dim


def _pattern(n_layers: int, period: int) -> list[str]:
    """llama.cpp's ``set_swa_pattern(period)``: each run of ``period`` layers ends with a global one."""
    return ["sliding_attention" if (i + 1) % period else "full_attention" for i in range(n_layers)]


def _softcap(meta: dict, k: str, default):
    value = meta.get(k, default)
    if value is not None and not value > 0:
        raise ValueError(f"{k}={value!r}: a soft-cap must be positive (llama.cpp divides by it)")
    return None if value is None else float(value)


def _gemma2_extra(meta: dict, a: str, n_layers: int) -> dict:
    base = float(meta.get(f"{a}.rope.freq_base", 10000.0))  # llama.cpp's default; Gemma 2 files omit it
    return {
        "sliding_window": int(meta.get(f"{a}.attention.sliding_window", 4096)),  # llama.cpp's Gemma 2 default
        "layer_types": _pattern(n_layers, 2),  # hard-coded in llama.cpp: local, global, local, ...
        # llama.cpp always caps Gemma 2; these are its defaults when the file omits the values
        "attn_logit_softcapping": _softcap(meta, f"{a}.attn_logit_softcapping", 50.0),
        "final_logit_softcapping": _softcap(meta, f"{a}.final_logit_softcapping", 30.0),
        "rope_parameters": {"rope_type": "default", "rope_theta": base, **_rope_scaling(meta, a)},
    }


def _gemma3_extra(meta: dict, a: str, n_layers: int) -> dict:
    window = meta.get(f"{a}.attention.sliding_window", 0)
    base = float(meta.get(f"{a}.rope.freq_base", 10000.0))  # llama.cpp's default when absent
    cap = f"{a}.final_logit_softcapping"
    return {
        # llama.cpp: no window (or 0) means every layer is global; else 5 local layers per global one
        "sliding_window": int(window) or None,
        "layer_types": _pattern(n_layers, 6) if window else ["full_attention"] * n_layers,
        "attn_logit_softcapping": None,  # Gemma 3 has none (llama.cpp applies none)
        # llama.cpp: absent or 0 means no cap
        "final_logit_softcapping": _softcap(meta, cap, None) if meta.get(cap) else None,
        "rope_parameters": {
            # rope scaling (linear, Gemma 3 4B+) applies to the global layers only, as in llama.cpp
            "full_attention": {"rope_type": "default", "rope_theta": base, **_rope_scaling(meta, a)},
            # llama.cpp hard-codes the local layers' rope: base 10000, no scaling
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    }


def _gemma_fix(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    # llama.cpp stores Gemma's RMS norm gains as 1 + w (q_norm and k_norm too); HF keeps w
    return w - np.float32(1) if hf_name.endswith("norm.weight") else w


_GEMMA_KEYS = frozenset({
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
    "rope.dimension_count", "attention.sliding_window", "final_logit_softcapping", "vocab_size",
})
_GEMMA2_KEYS = _GEMMA_KEYS | {"attn_logit_softcapping", "rope.scaling.type", "rope.scaling.factor"}
_GEMMA3_KEYS = _GEMMA_KEYS | {"rope.scaling.type", "rope.scaling.factor"}

_GEMMA2_LAYER = {
    f"blk.{{i}}.{g}.weight": f"model.layers.{{i}}.{h}.weight"
    for g, h in (("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
                 ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
                 ("post_attention_norm", "post_attention_layernorm"), ("ffn_norm", "pre_feedforward_layernorm"),
                 ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
                 ("post_ffw_norm", "post_feedforward_layernorm"))
}
_GEMMA3_LAYER = {**_GEMMA2_LAYER, "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
                 "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight"}
# llama.cpp's Gemma 2 always ties the output to the embedding (it has no 'output' tensor); Gemma 3
# reads one when present
_GEMMA2_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
_GEMMA3_GLOBAL = {**_GEMMA2_GLOBAL, "output.weight": "lm_head.weight"}

ARCHITECTURES: dict[str, _Arch] = {
    # llama.cpp writes Mistral checkpoints as 'llama' too (no sliding window in the metadata: a
    # file whose window matters would need 'llama.attention.sliding_window', which is refused)
    "llama": _Arch("llama", _LLAMA_KEYS, _LLAMA_IGNORED, _llama_config("llama"), _LLAMA_GLOBAL, _LLAMA_LAYER,
                   _llama_fix),
    # llama.cpp runs Qwen2 with the "rotate half" rope of HF: no row reordering
    "qwen2": _Arch("qwen2", _LLAMA_KEYS, _LLAMA_IGNORED, _llama_config("qwen2"), _LLAMA_GLOBAL, _LLAMA_LAYER,
                   lambda name, w, cfg: w),
    "gpt2": _Arch("gpt2", frozenset({"block_count", "embedding_length", "feed_forward_length",
                                     "attention.head_count", "attention.layer_norm_epsilon", "context_length",
                                     "vocab_size"}),
                  frozenset(), _gpt2_config, _GPT2_GLOBAL, _GPT2_LAYER, _gpt2_fix),
    "gemma2": _Arch("gemma2", _GEMMA2_KEYS, _LLAMA_IGNORED, _gemma_config("gemma2"), _GEMMA2_GLOBAL, _GEMMA2_LAYER,
                    _gemma_fix),
    # transformers' model type for the text-only Gemma 3 (a GGUF 'gemma3' file holds no vision tower)
    "gemma3": _Arch("gemma3_text", _GEMMA3_KEYS, _LLAMA_IGNORED, _gemma_config("gemma3_text"), _GEMMA3_GLOBAL,
                    _GEMMA3_LAYER, _gemma_fix),
}


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


# ---------------------------------------------------------------------------------------------

def is_gguf(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a file that starts with the GGUF magic."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == MAGIC


# ---------------------------------------------------------------------------------------------
# Reading the file. ``gguf.GGUFReader`` builds a numpy view per array element, so a 262144-token
# vocabulary (Gemma 3) takes it 15-30 s; this reader walks the same layout with ``struct`` on an
# ``mmap`` (well under a second) and leaves the tensor data memory-mapped.

# GGUF value types (gguf.GGUFValueType) -> struct format, little-endian
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF file.

    ``shape`` is in numpy order (outermost first: GGUF lists dimensions innermost first);
    ``data`` its raw bytes, memory-mapped, as uint8 ``shape[:-1] + (bytes per row,)``, the layout
    ``gguf.quants.dequantize`` takes for every type.
    """

    name: str
    tensor_type: int
    shape: tuple[int, ...]
    data: np.ndarray


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """A GGUF file's metadata (plain Python values, without the ``GGUF.*`` header fields) and tensors."""

    metadata: dict[str, Any]
    tensors: list[GGUFTensor]


class _Cursor:
    """Little-endian reads from a buffer; running past its end raises ``EOFError``."""

    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def unpack(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buf):
            raise EOFError(f"the file ends at byte {len(self.buf)}, inside a value at byte {self.pos}")
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return values[0] if len(values) == 1 else values

    def string(self) -> str:
        n = self.unpack("Q")
        if self.pos + n > len(self.buf):
            raise EOFError(f"a string of {n} bytes at byte {self.pos} runs past the end ({len(self.buf)} bytes)")
        text = self.buf[self.pos:self.pos + n].decode("utf-8")
        self.pos += n
        return text

    def value(self, kind: int):
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            inner, count = self.unpack("IQ")
            if inner in _SCALARS and inner != 7:  # numbers: one numpy read for the whole array
                dtype = np.dtype("<" + _SCALARS[inner])
                if self.pos + count * dtype.itemsize > len(self.buf):
                    raise EOFError(f"an array of {count} values at byte {self.pos} runs past the end")
                out = np.frombuffer(self.buf, dtype, count, self.pos).tolist()
                self.pos += count * dtype.itemsize
                return out
            return [self.value(inner) for _ in range(count)]
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        raise ValueError(f"unknown GGUF value type {kind} at byte {self.pos}")


def _parse(buf) -> GGUFFile:
    """The metadata and tensor table of a GGUF buffer (version and magic already checked)."""
    from gguf import GGMLQuantizationType
    from gguf.constants import GGML_QUANT_SIZES

    cur = _Cursor(buf)
    cur.pos = 8
    n_tensors, n_kv = cur.unpack("QQ")
    meta = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.unpack("I"))
    infos = []
    for _ in range(n_tensors):
        name, n_dims = cur.string(), cur.unpack("I")
        if n_dims > _MAX_DIMS:
            raise ValueError(f"tensor {name!r} has {n_dims} dimensions (at most {_MAX_DIMS})")
        dims = [cur.unpack("Q") for _ in range(n_dims)]
        infos.append((name, dims, GGMLQuantizationType(cur.unpack("I")), cur.unpack("Q")))
    align = meta.get("general.alignment", _DEFAULT_ALIGNMENT)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ValueError(f"general.alignment={align!r} is not a power of two")
    start = -(-cur.pos // align) * align
    tensors, seen = [], set()
    for name, dims, qtype, offset in infos:
        if name in seen:
            raise ValueError(f"tensor {name!r} is listed twice")
        seen.add(name)
        block, type_size = GGML_QUANT_SIZES[qtype]
        shape = tuple(int(n) for n in reversed(dims))
        row = shape[-1] if shape else 1
        if row % block:
            raise ValueError(f"tensor {name!r}: rows of {row} values do not fill {qtype.name} blocks of {block}")
        n_rows = math.prod(shape[:-1])
        row_bytes = row // block * type_size
        begin = start + offset
        if begin + n_rows * row_bytes > len(buf):
            raise EOFError(f"tensor {name!r} ends at byte {begin + n_rows * row_bytes}, past the end ({len(buf)})")
        data = np.frombuffer(buf, np.uint8, n_rows * row_bytes, begin).reshape(*shape[:-1], row_bytes)
        tensors.append(GGUFTensor(name, qtype, shape, data))
    return GGUFFile(meta, tensors)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """The metadata and (memory-mapped) tensors of the GGUF file at ``path``, with one clear error
    per way to fail."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such GGUF file: {p}")
    with open(p, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{p} is not a GGUF file: it is {len(head)} bytes long")
        if head[:4] != MAGIC:
            raise ValueError(f"{p} is not a GGUF file: it starts with {head[:4]!r}, expected the magic {MAGIC!r}")
        version = int.from_bytes(head[4:8], "little")
        if version not in SUPPORTED_VERSIONS:
            order = " (a big-endian file?)" if version and not version & 0xFFFF else ""
            raise ValueError(f"{p}: GGUF version {version} is not supported{order} (supported: {SUPPORTED_VERSIONS})")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _parse(buf)
    except (EOFError, ValueError, KeyError, OverflowError, UnicodeDecodeError, struct.error, MemoryError,
            RecursionError) as err:   # RecursionError: arrays nested past Python's stack
        raise ValueError(f"{p} is not a readable GGUF file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err


def read_metadata(gguf_file: GGUFFile) -> dict[str, Any]:
    """The file's metadata as plain Python values (str, int, float, bool, lists of them)."""
    return dict(gguf_file.metadata)


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the GGUF file at ``path`` as plain Python values (tensors are not read)."""
    return read_metadata(open_gguf(path))


def _need(meta: dict, key: str):
    if key not in meta:
        raise ValueError(f"the GGUF metadata lacks {key!r}, which jetjax needs for "
                         f"{meta.get('general.architecture')!r}")
    return meta[key]


def check_metadata(meta: dict, arch: _Arch, where: str) -> None:
    """Refuse metadata keys of the architecture that jetjax would otherwise silently ignore."""
    a = meta["general.architecture"]
    unknown = []
    for key in meta:
        if key.startswith(_IGNORED_PREFIXES):
            continue
        sub = key[len(a) + 1:] if key.startswith(a + ".") else None
        if sub is None or sub not in arch.handled | arch.ignored:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{where}: unsupported GGUF metadata for {a}: {sorted(unknown)}. It may change the "
                         "computation, so jetjax refuses rather than guess.")


def hf_tensor_names(arch: _Arch, n_layers: int) -> dict[str, str]:
    """GGUF tensor name -> Hugging Face tensor name (without the family's prefix)."""
    names = dict(arch.global_tensors)
    for i in range(n_layers):
        names.update({g.format(i=i): h.format(i=i) for g, h in arch.layer_tensors.items()})
    return names


def dequantize(tensor, where: str) -> np.ndarray:
    """A :class:`GGUFTensor` as a float32 numpy array of its ``shape`` (outermost first)."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(tensor.tensor_type)
    try:
        out = quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError as err:
        raise ValueError(f"{where}: tensor {tensor.name!r} has quantization type {qtype.name}, which "
                         f"gguf.quants cannot dequantize ({err})") from err
    return np.asarray(out, dtype=np.float32).reshape(tensor.shape)


def _translate(gguf_file: GGUFFile, where: str) -> tuple[_Arch, dict, dict[str, GGUFTensor]]:
    """The file's architecture entry, its config as a ``config.json`` dict and its tensors by
    Hugging Face name; refuses unknown architectures, metadata and tensors by name."""
    meta = gguf_file.metadata
    a = meta.get("general.architecture")
    if a not in ARCHITECTURES:
        raise ValueError(f"{where}: GGUF architecture {a!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    arch = ARCHITECTURES[a]
    check_metadata(meta, arch, where)
    tensors = {t.name: t for t in gguf_file.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{where}: the file has a 'rope_freqs' tensor (per-frequency rope scaling, "
                         "e.g. Llama 3.1); jetjax does not read it, so it refuses rather than compute "
                         "without it")
    hf_cfg = arch.config(meta, set(tensors))
    names = hf_tensor_names(arch, int(_need(meta, f"{a}.block_count")))
    unknown = sorted(n for n in tensors if n not in names)
    if unknown:
        raise ValueError(f"{where}: the file has tensors jetjax does not use for {a}: "
                         f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; it may be a different variant")
    return arch, hf_cfg, {names[n]: t for n, t in tensors.items()}


def _weight(arch: _Arch, hf_name: str, tensor: GGUFTensor, hf_cfg: dict, where: str) -> np.ndarray:
    return arch.fix(hf_name, dequantize(tensor, where), hf_cfg)


def gguf_to_hf(path: str | os.PathLike) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``config.json`` dict and float32 state dict (Hugging Face names and layout) that
    :func:`load_gguf` reads out of a GGUF file, before any jetjax family is involved.

    For comparisons with other readers of the same file, e.g. transformers' GGUF loader.
    """
    arch, hf_cfg, tensors = _translate(open_gguf(path), str(path))
    return hf_cfg, {n: _weight(arch, n, t, hf_cfg, str(path)) for n, t in tensors.items()}


def load_gguf(path: str | os.PathLike, *, dtype=None, check_finite: bool = True):
    """Load a GGUF file as a :class:`~jetjax.models.model.Model` (use :func:`jetjax.from_pretrained`).

    Args:
      path: a ``.gguf`` file.
      dtype: storage dtype of the parameters (default float32; the file's quantized values are
        dequantized exactly to float32 first).
      check_finite: refuse tensors holding NaN or ±inf (see :func:`jetjax.from_pretrained`).
    """
    import jax.numpy as jnp

    from jetjax.models.family import assign_params, config_for, family_for
    from jetjax.models.model import Model, abstract_params

    where = str(path)
    gguf_file = open_gguf(path)
    arch, hf_cfg, tensors = _translate(gguf_file, where)
    family = family_for(arch.model_type, where)
    config = config_for(family, hf_cfg, where)
    tokenizer = None  # built before the weights: a bad vocabulary fails before the heavy work
    if "tokenizer.ggml.model" in gguf_file.metadata:
        from jetjax.io.gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(gguf_file.metadata, source=where)
    hf_tensors = {n: jnp.asarray(_weight(arch, n, t, hf_cfg, where), dtype=dtype or jnp.float32)
                  for n, t in tensors.items()}
    skeleton, expected = abstract_params(lambda: family.module(config))
    params = assign_params(config, family, hf_tensors, expected, where, None, check_finite=check_finite)
    return Model(skeleton, params, tokenizer=tokenizer, source=where)


__all__ = ["load_gguf", "gguf_to_hf", "open_gguf", "GGUFFile", "GGUFTensor", "read_metadata", "read_gguf_metadata",
           "is_gguf", "dequantize", "supported_architectures", "ARCHITECTURES"]
