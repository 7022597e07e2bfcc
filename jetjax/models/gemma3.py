"""Gemma 2 and Gemma 3 (text): the Llama block with each branch normed on both sides.

What these add to :mod:`jetjax.models.llama`'s Gemma (``sqrt(d)`` embedding scale, ``1 + w`` RMS
norm gains, GeGLU, tied unembedding), all read from ``config.json``:

* **post-norms**: an RMS norm on the output of the attention and of the MLP, inside the branch, so
  the delta γ adds to the stream includes it (``post_attention_layernorm``, ``post_feedforward_layernorm``;
  the MLP's pre-norm is ``pre_feedforward_layernorm``);
* **local and global layers**: ``layer_types`` (``"sliding_attention"`` / ``"full_attention"``) put a
  sliding window of ``sliding_window`` positions on the local layers (Gemma 2 alternates them,
  Gemma 3 has five local layers per global one);
* ``query_pre_attn_scalar``: scores scaled by its ``-1/2`` power instead of ``d_head``'s;
* **soft-capping** (Gemma 2): attention scores and final logits pass through ``c · tanh(x / c)``
  (``attn_logit_softcapping``, ``final_logit_softcapping``). Capped logits make the unembedding
  non-affine: jets of the decoder are then taken through the cap (:mod:`jetjax.paths.expand`), and what
  needs ``unembed(x) = x W + b`` (the n-gram sweep's GEMM) refuses such a model by name;
* **Gemma 3**: RMS norms on each query and key head before the rotary embedding (``q_norm``,
  ``k_norm``), and two rotary embeddings: ``rope_parameters["sliding_attention"]`` on the local
  layers (base 10k), ``rope_parameters["full_attention"]`` on the global ones (base 1M, optionally
  linearly scaled).

Example (a random Gemma-3-like model: 2 local layers then a global one, window 3):
  >>> from jetjax.models import random_model
  >>> cfg = config_from_hf({"model_type": "gemma3_text", "hidden_size": 12, "num_hidden_layers": 3,
  ...     "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8, "intermediate_size": 20,
  ...     "vocab_size": 17, "sliding_window": 3, "query_pre_attn_scalar": 8,
  ...     "layer_types": ["sliding_attention", "sliding_attention", "full_attention"]})
  >>> cfg.attn_windows, cfg.local_rope_theta, cfg.rope_theta, cfg.qk_norm, cfg.post_norms
  ((3, 3, None), 10000.0, 1000000.0, True, True)
  >>> model = random_model(cfg, scale=0.3)
  >>> h = model.residual_stream([1, 2, 3, 4, 5])
  >>> h.shape, model.mlp(2, h[2]).shape
  ((4, 5, 12), (5, 12))
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flax import nnx

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch, gguf_need, gguf_rope_scaling, gguf_vocab_size
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf
from jetjax.models.layers import GatedMLP, freeze, make_norm

_HANDLED = frozenset({
    "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
    "intermediate_size", "vocab_size", "hidden_activation", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
    "query_pre_attn_scalar", "sliding_window", "layer_types", "attn_logit_softcapping", "final_logit_softcapping",
    "rope_parameters", "rope_theta", "rope_scaling",
})
# dropout, initialisation, caching; HF does not enforce the position limit either
_IGNORED = frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings",
                      "cache_implementation"})
_NOT_BIDIRECTIONAL = {"use_bidirectional_attention": (None, False)}

_CONFIG_KEYS = {
    "gemma2": ConfigKeys(_HANDLED, _IGNORED, _NOT_BIDIRECTIONAL),
    # the local rope base and the local:global pattern of older Gemma 3 configs (before layer_types)
    "gemma3_text": ConfigKeys(_HANDLED | {"rope_local_base_freq", "sliding_window_pattern", "_sliding_window_pattern"},
                              _IGNORED, _NOT_BIDIRECTIONAL),
}

_LAYER_TYPES = ("sliding_attention", "full_attention")
# transformers' defaults: Gemma 2 alternates local and global layers, Gemma 3 has 5 local per global
_PATTERN = {"gemma2": 2, "gemma3_text": 6}
_SOFTCAP_DEFAULTS = {"gemma2": (50.0, 30.0), "gemma3_text": (None, None)}


def _layer_types(cfg: dict, model_type: str, n_layers: int) -> list[str]:
    types = cfg.get("layer_types")
    if types is None:
        pattern = get_int(cfg, "sliding_window_pattern", None, nullable=True) or get_int(
            cfg, "_sliding_window_pattern", _PATTERN[model_type])
        return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
    if not isinstance(types, list) or len(types) != n_layers or set(types) - set(_LAYER_TYPES):
        raise ValueError(f"unsupported layer_types {types!r}: expected {n_layers} entries from {list(_LAYER_TYPES)}")
    return types


def _ropes(cfg: dict, model_type: str, d_head: int) -> dict:
    """The global rope (``rope_*`` fields) and, for Gemma 3, the local one (``local_rope_*``)."""
    params = cfg.get("rope_parameters")
    if model_type == "gemma2":
        return rope_from_hf(cfg, d_head, allow_partial=False)
    if isinstance(params, dict) and set(params) <= set(_LAYER_TYPES) and params:
        per_type = {t: params.get(t) or {"rope_type": "default"} for t in _LAYER_TYPES}
        per_type["full_attention"].setdefault("rope_theta", 1_000_000.0)
        per_type["sliding_attention"].setdefault("rope_theta", 10_000.0)
    else:   # older configs: rope_theta (+ rope_scaling) global, rope_local_base_freq local
        per_type = {"full_attention": {"rope_theta": get_float(cfg, "rope_theta", 1_000_000.0, positive=True),
                                       **dict(cfg.get("rope_scaling") or params or {})},
                    "sliding_attention": {"rope_type": "default", "rope_theta": get_float(
                        cfg, "rope_local_base_freq", 10_000.0, positive=True)}}
    ropes = {}
    for t in _LAYER_TYPES:
        if not isinstance(per_type[t], dict):
            raise ValueError(f"rope_parameters[{t!r}] must be a mapping, got {per_type[t]!r}")
        ropes[t] = rope_from_hf({"rope_parameters": dict(per_type[t])}, d_head, allow_partial=False)
    glob, local = ropes["full_attention"], ropes["sliding_attention"]
    return dict(glob, local_rope_theta=local["rope_theta"], local_rope_scaling=local["rope_scaling"])


def config_from_hf(cfg: dict) -> ModelConfig:
    t = cfg["model_type"]
    d, n_heads = get_int(cfg, "hidden_size", 2304), get_int(cfg, "num_attention_heads", 8)
    d_head = get_int(cfg, "head_dim", 256)
    n_layers = get_int(cfg, "num_hidden_layers", 26)
    types = _layer_types(cfg, t, n_layers)
    window = get_int(cfg, "sliding_window", 4096, nullable=True)
    attn_cap, final_cap = _SOFTCAP_DEFAULTS[t]
    bias = get_bool(cfg, "attention_bias", False)
    return ModelConfig(
        arch=t,
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 9216),
        vocab_size=get_int(cfg, "vocab_size", 256000),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-6, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_activation", "gelu_pytorch_tanh"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", True),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads,
        attn_windows=None if window is None else tuple(window if ty == "sliding_attention" else None for ty in types),
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=False,
        norm="rmsnorm_plus_one",
        embed_scale=float(np.sqrt(d)),
        post_norms=True,
        qk_norm=t == "gemma3_text",
        query_pre_attn_scalar=get_float(cfg, "query_pre_attn_scalar", 256.0, positive=True),
        attn_softcap=get_float(cfg, "attn_logit_softcapping", attn_cap, positive=True, nullable=True),
        final_softcap=get_float(cfg, "final_logit_softcapping", final_cap, positive=True, nullable=True),
        **_ropes(cfg, t, d_head),
    )


class DecoderLayer(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.input_layernorm = make_norm(c, dtype)
        self.self_attn = llama.Attention(c, dtype)
        self.post_attention_layernorm = make_norm(c, dtype)
        self.pre_feedforward_layernorm = make_norm(c, dtype)
        self.mlp = GatedMLP(c, dtype)
        self.post_feedforward_layernorm = make_norm(c, dtype)


class Gemma3(llama.Llama):
    """Gemma 2 / Gemma 3 text models: Llama's embedding, attention and head, post-normed branches."""

    layer_class = DecoderLayer

    def attn(self, layer, h):
        block = self.layers[layer]
        return self._post(block.post_attention_layernorm, block.self_attn(self.config, layer, block.input_layernorm(h)))

    def mlp(self, layer, h):
        block = self.layers[layer]
        return self._post(block.post_feedforward_layernorm, block.mlp(block.pre_feedforward_layernorm(h)))

    def _post(self, norm, out):
        # every Gemma 2/3 checkpoint has the post-norms; the switch lets a test show they matter
        return norm(out) if self.config.post_norms else out

    def unembed(self, x):
        logits = super().unembed(x)
        cap = self.config.final_softcap
        return logits if cap is None else freeze.softcap(logits, cap)


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``model.`` prefix) -> (our param path, transpose?): Llama's names
    (embedding, head, ``input_layernorm``, ``post_attention_layernorm`` -- here the attention's
    post-norm --, the projections) plus the MLP's two norms and Gemma 3's query/key norms."""
    m = llama.weight_map(c)
    extra = ["pre_feedforward_layernorm", "post_feedforward_layernorm"]
    extra += ["self_attn.q_norm", "self_attn.k_norm"] if c.qk_norm else []
    for i in range(c.n_layers):
        for name in extra:
            m[f"layers.{i}.{name}.weight"] = (("layers", i, *name.split("."), "scale"), False)
    return m


# ---------------------------------------------------------------------------------------------
# GGUF (llama.cpp's format, read by jetjax.io.gguf). llama.cpp's converter stores these like Llama's,
# except: every RMS norm gain is written as 1 + w (the factor Gemma's norm multiplies by), Q and K rows
# keep HF's order (llama.cpp runs Gemma with the "rotate half" rope), and the output matrix is the
# embedding. What the metadata leaves out, llama.cpp's loader (src/llama-model.cpp) hard-codes; the
# comments below name each such value, and the config follows llama.cpp where transformers' GGUF loader
# falls back to class defaults instead (it does on query_pre_attn_scalar and the soft-caps).

def _gguf_config(model_type: str, extra, layers_of_27b: int):
    """``extra``: ``(meta, a, n_layers) -> dict`` of the version's own keys; ``layers_of_27b``: the depth
    of its 27B model, which llama.cpp scales queries differently for (see :func:`_query_pre_attn_scalar`)."""
    def build(meta: dict, names: set) -> dict:
        a = meta["general.architecture"]
        key = lambda k, default=None: meta.get(f"{a}.{k}", default)  # noqa: E731
        d, heads = gguf_need(meta, f"{a}.embedding_length"), gguf_need(meta, f"{a}.attention.head_count")
        n_layers = gguf_need(meta, f"{a}.block_count")
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
            "intermediate_size": gguf_need(meta, f"{a}.feed_forward_length"),
            "vocab_size": gguf_vocab_size(meta, a),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-6),
            "tie_word_embeddings": "output.weight" not in names,
            "hidden_activation": "gelu_pytorch_tanh",  # llama.cpp's Gemma FFN: ggml_gelu, the tanh form
            "query_pre_attn_scalar": _query_pre_attn_scalar(d, heads, head_dim, n_layers, layers_of_27b),
        }
        return {**cfg, **extra(meta, a, n_layers)}

    return build


def _same(a: str, k: str, value, what: str, expected) -> None:
    if value != expected:
        raise ValueError(f"{a}.{k}={value} differs from {what} {expected}; jetjax supports {a} "
                         f"only with them equal, as llama.cpp's converter writes them")


def _query_pre_attn_scalar(d: int, heads: int, head_dim: int, n_layers: int, layers_of_27b: int) -> int:
    # llama.cpp scales queries by head size^-1/2, except for the 27B models (46 Gemma 2 / 62 Gemma 3
    # layers), which use d_model / n_heads, after gemma_pytorch's configs
    return d // heads if n_layers == layers_of_27b else head_dim


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
        "rope_parameters": {"rope_type": "default", "rope_theta": base, **gguf_rope_scaling(meta, a)},
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
            "full_attention": {"rope_type": "default", "rope_theta": base, **gguf_rope_scaling(meta, a)},
            # llama.cpp hard-codes the local layers' rope: base 10000, no scaling
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
    }


def _gguf_fix(hf_name: str, w: np.ndarray, cfg: dict) -> np.ndarray:
    # llama.cpp stores Gemma's RMS norm gains as 1 + w (q_norm and k_norm too); HF keeps w
    return w - np.float32(1) if hf_name.endswith("norm.weight") else w


_GGUF_KEYS = frozenset({
    "block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
    "attention.key_length", "attention.value_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
    "rope.dimension_count", "attention.sliding_window", "final_logit_softcapping", "vocab_size",
})
_GEMMA2_GGUF_KEYS = _GGUF_KEYS | {"attn_logit_softcapping", "rope.scaling.type", "rope.scaling.factor"}
_GEMMA3_GGUF_KEYS = _GGUF_KEYS | {"rope.scaling.type", "rope.scaling.factor"}

_GEMMA2_GGUF_LAYER = {
    f"blk.{{i}}.{g}.weight": f"model.layers.{{i}}.{h}.weight"
    for g, h in (("attn_norm", "input_layernorm"), ("attn_q", "self_attn.q_proj"), ("attn_k", "self_attn.k_proj"),
                 ("attn_v", "self_attn.v_proj"), ("attn_output", "self_attn.o_proj"),
                 ("post_attention_norm", "post_attention_layernorm"), ("ffn_norm", "pre_feedforward_layernorm"),
                 ("ffn_gate", "mlp.gate_proj"), ("ffn_up", "mlp.up_proj"), ("ffn_down", "mlp.down_proj"),
                 ("post_ffw_norm", "post_feedforward_layernorm"))
}
_GEMMA3_GGUF_LAYER = {**_GEMMA2_GGUF_LAYER,
                      "blk.{i}.attn_q_norm.weight": "model.layers.{i}.self_attn.q_norm.weight",
                      "blk.{i}.attn_k_norm.weight": "model.layers.{i}.self_attn.k_norm.weight"}
# llama.cpp's Gemma 2 always ties the output to the embedding (it has no 'output' tensor); Gemma 3
# reads one when present
_GEMMA2_GGUF_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight"}
_GEMMA3_GGUF_GLOBAL = {**_GEMMA2_GGUF_GLOBAL, "output.weight": "lm_head.weight"}

_GGUF = {
    "gemma2": GgufArch("gemma2", _GEMMA2_GGUF_KEYS, llama.GGUF_IGNORED, _gguf_config("gemma2", _gemma2_extra, 46),
                       _GEMMA2_GGUF_GLOBAL, _GEMMA2_GGUF_LAYER, _gguf_fix),
    # transformers' model type for the text-only Gemma 3 (a GGUF 'gemma3' file holds no vision tower)
    "gemma3": GgufArch("gemma3_text", _GEMMA3_GGUF_KEYS, llama.GGUF_IGNORED,
                       _gguf_config("gemma3_text", _gemma3_extra, 62), _GEMMA3_GGUF_GLOBAL, _GEMMA3_GGUF_LAYER,
                       _gguf_fix),
}


# Llama's strip prefix and ignored buffers; its independent head size (head_dim is a config key)
FAMILY = dataclasses.replace(llama.FAMILY, name="gemma3", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf,
                             module=Gemma3, weight_map=weight_map, gguf=_GGUF)
