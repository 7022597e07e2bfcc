"""Load GGUF checkpoints (llama.cpp's format) into a :class:`~jetjax.models.model.Model`.

A GGUF file carries the config (as metadata under llama.cpp's key names), the tokenizer (as
``tokenizer.ggml.*`` metadata) and the weights (often block-quantized). Loading here:

* reads the file memory-mapped with the ``gguf`` package (ggml's own reader, numpy only);
* translates the metadata into the config a Hugging Face ``config.json`` of the same family would
  hold, so the family's own config parser and weight map (``jetjax.models``) do the rest, exactly
  as for safetensors checkpoints;
* dequantizes tensor by tensor with ``gguf.quants`` (every type it implements) into ``dtype``
  (default float32), undoing llama.cpp's layout changes: GGUF lists dimensions innermost first
  (numpy's view already reverses them), rotary models store the rows of Q and K interleaved for
  llama.cpp's rope kernel, GPT-2 matrices are stored transposed;
* builds the tokenizer from the metadata (:mod:`jetjax.gguf_tokenizer`).

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
import os
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


def open_gguf(path: str | os.PathLike):
    """A memory-mapped ``gguf.GGUFReader`` of ``path``, with one clear error per way to fail."""
    from gguf import GGUFReader

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
        raise ValueError(f"{p}: GGUF version {version} is not supported (supported: {SUPPORTED_VERSIONS})")
    try:
        return GGUFReader(str(p), "r")
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError, TypeError) as err:
        raise ValueError(f"{p} is not a readable GGUF file (truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err


def read_metadata(reader) -> dict[str, Any]:
    """The file's metadata as plain Python values (str, int, float, bool, lists of them)."""
    meta = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            value = field.contents()
        except Exception as err:  # a malformed field: name it
            raise ValueError(f"metadata field {name!r} cannot be read ({type(err).__name__}: {err})") from err
        meta[name] = value
    return meta


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
    """A reader tensor as a float32 numpy array in numpy (row-major, outermost first) order."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType(tensor.tensor_type)
    try:
        out = quants.dequantize(np.asarray(tensor.data), qtype)
    except NotImplementedError as err:
        raise ValueError(f"{where}: tensor {tensor.name!r} has quantization type {qtype.name}, which "
                         f"gguf.quants cannot dequantize ({err})") from err
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(out, dtype=np.float32).reshape(shape)


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

    reader = open_gguf(path)
    where = str(path)
    meta = read_metadata(reader)
    a = meta.get("general.architecture")
    if a not in ARCHITECTURES:
        raise ValueError(f"{where}: GGUF architecture {a!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    arch = ARCHITECTURES[a]
    check_metadata(meta, arch, where)
    tensors = {t.name: t for t in reader.tensors}
    if "rope_freqs.weight" in tensors:
        raise ValueError(f"{where}: the file has a 'rope_freqs' tensor (per-frequency rope scaling, "
                         "e.g. Llama 3.1); jetjax does not read it, so it refuses rather than compute "
                         "without it")
    hf_cfg = arch.config(meta, set(tensors))
    family = family_for(arch.model_type, where)
    config = config_for(family, hf_cfg, where)
    names = hf_tensor_names(arch, config.n_layers)
    unknown = sorted(n for n in tensors if n not in names)
    if unknown:
        raise ValueError(f"{where}: the file has tensors jetjax does not use for {a}: "
                         f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}; it may be a different variant")
    tokenizer = None  # built before the weights: a bad vocabulary fails before the heavy work
    if "tokenizer.ggml.model" in meta:
        from jetjax.gguf_tokenizer import tokenizer_from_gguf

        tokenizer = tokenizer_from_gguf(meta, source=where)
    hf_tensors = {}
    for gguf_name, t in tensors.items():
        hf_name = names[gguf_name]
        w = arch.fix(hf_name, dequantize(t, where), hf_cfg)
        hf_tensors[hf_name] = jnp.asarray(w, dtype=dtype or jnp.float32)
    skeleton, expected = abstract_params(lambda: family.module(config))
    params = assign_params(config, family, hf_tensors, expected, where, None, check_finite=check_finite)
    return Model(skeleton, params, tokenizer=tokenizer, source=where)


__all__ = ["load_gguf", "open_gguf", "read_metadata", "read_gguf_metadata", "is_gguf", "dequantize", "supported_architectures",
           "ARCHITECTURES"]
