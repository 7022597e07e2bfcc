"""OLMo-2 (``Olmo2ForCausalLM``): the Llama block with its norms moved to the branch outputs.

What differs from :mod:`jetjax.models.llama`, all from ``config.json``:

* **post-branch norms, no pre-norms**: each branch reads the stream as it is and normalises its own
  output (RMS norm, gain ``w``): ``h_mid = h + norm_a(attn(h))``, ``h' = h_mid + norm_m(mlp(h_mid))``.
  The norm belongs to the branch, so the delta γ adds (``attn(l, h)``, ``mlp(l, h)``) includes it
  (``post_attention_layernorm``, ``post_feedforward_layernorm``);
* **q/k norms over the whole projection**: ``q_norm`` normalises all ``n_heads · d_head`` query
  entries of a token together (``k_norm`` all key entries), before they are split into heads and
  rotated; Qwen3 and Gemma 3 normalise each head on its own;
* ``attention_bias`` puts biases on all four attention projections; ``rms_norm_eps`` (1e-5 by default)
  is every norm's epsilon.

llama.cpp writes these checkpoints as the GGUF architecture ``olmo2``, with Hugging Face's Q/K row
order (its rope for OLMo-2 rotates halves) and the two post-norms as ``post_attention_norm`` /
``post_ffw_norm``.

Example (the branch deltas include their post-norms):
  >>> from jetjax.models import random_model
  >>> cfg = config_from_hf({"model_type": "olmo2", "hidden_size": 12, "num_attention_heads": 3,
  ...                       "num_hidden_layers": 2, "intermediate_size": 20, "vocab_size": 17})
  >>> cfg.post_norms, cfg.qk_norm, cfg.norm_eps
  (True, True, 1e-05)
  >>> model = random_model(cfg, scale=0.3)
  >>> h = model.residual_stream([1, 2, 3, 4])
  >>> h.shape, model.mlp(1, h[1]).shape
  ((3, 4, 12), (4, 12))
"""

from __future__ import annotations

import dataclasses

from flax import nnx

from jetjax.models import llama
from jetjax.models.config import ModelConfig
from jetjax.models.family import GgufArch, keep_layout
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, rope_from_hf
from jetjax.models.layers import GatedMLP, RMSNorm, make_norm

_CONFIG_KEYS = {"olmo2": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "intermediate_size", "vocab_size", "hidden_act", "rms_norm_eps", "tie_word_embeddings", "attention_bias",
        "rope_parameters", "rope_scaling", "rope_theta",
    }),
    # dropout, initialisation, caching; HF does not enforce the position limit either
    ignored=frozenset({"attention_dropout", "initializer_range", "use_cache", "max_position_embeddings"}),
)}


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 4096), get_int(cfg, "num_attention_heads", 32)
    d_head = get_int(cfg, "head_dim", None, nullable=True) or d // n_heads
    bias = get_bool(cfg, "attention_bias", False)
    return ModelConfig(
        arch="olmo2",
        n_layers=get_int(cfg, "num_hidden_layers", 32),
        d_model=d,
        n_heads=n_heads,
        d_head=d_head,
        d_mlp=get_int(cfg, "intermediate_size", 11008),
        vocab_size=get_int(cfg, "vocab_size", 50304),
        n_positions=None,
        norm_eps=get_float(cfg, "rms_norm_eps", 1e-5, minimum=0.0),
        activation=activation_from_hf(cfg, "hidden_act", "silu"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", False),
        n_kv_heads=get_int(cfg, "num_key_value_heads", None, nullable=True) or n_heads,
        qkv_bias=bias,
        out_bias=bias,
        mlp_bias=False,
        norm="rmsnorm",
        post_norms=True,
        qk_norm=True,
        **rope_from_hf(cfg, d_head, allow_partial=False),
    )


class Attention(llama.Attention):
    """Llama's attention with the query and key norms spanning the whole projection."""

    def __init__(self, c: ModelConfig, dtype):
        super().__init__(dataclasses.replace(c, qk_norm=False), dtype)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.n_heads * c.d_head, eps=c.norm_eps, dtype=dtype)
            self.k_norm = RMSNorm(c.kv_heads * c.d_head, eps=c.norm_eps, dtype=dtype)

    def project(self, c: ModelConfig, x):
        q, k = self.q_proj(x), self.k_proj(x)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        heads = lambda y, n: y.reshape(*y.shape[:-1], n, c.d_head)  # noqa: E731
        return heads(q, c.n_heads), heads(k, c.kv_heads), heads(self.v_proj(x), c.kv_heads)


class DecoderLayer(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.self_attn = Attention(c, dtype)
        self.post_attention_layernorm = make_norm(c, dtype)
        self.mlp = GatedMLP(c, dtype)
        self.post_feedforward_layernorm = make_norm(c, dtype)


class Olmo2(llama.Llama):
    """OLMo-2: Llama's embedding and head; branches that read the raw stream and norm their output."""

    layer_class = DecoderLayer

    def attn(self, layer, h):
        block = self.layers[layer]
        return self._post(block.post_attention_layernorm, block.self_attn(self.config, layer, h))

    def mlp(self, layer, h):
        block = self.layers[layer]
        return self._post(block.post_feedforward_layernorm, block.mlp(h))

    def _post(self, norm, out):
        # every OLMo-2 checkpoint has the post-norms; the switch lets a test show they matter
        return norm(out) if self.config.post_norms else out


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """Llama's tensor names without ``input_layernorm``, plus ``post_feedforward_layernorm`` and the
    q/k norms (``post_attention_layernorm`` is here the attention's post-norm)."""
    m = {k: v for k, v in llama.weight_map(c).items() if ".input_layernorm." not in k}
    extra = ["post_feedforward_layernorm"] + (["self_attn.q_norm", "self_attn.k_norm"] if c.qk_norm else [])
    for i in range(c.n_layers):
        for name in extra:
            m[f"layers.{i}.{name}.weight"] = (("layers", i, *name.split("."), "scale"), False)
    return m


# ---------------------------------------------------------------------------------------------
# GGUF: llama.cpp's 'olmo2' (src/llama-model.cpp): Llama's metadata and names, no input norms, the
# post-norms under their own names; the head size is n_embd / n_head there (key_length is checked).

_GGUF_LAYER = {g: h for g, h in llama.GGUF_LAYER.items() if not g.startswith(("blk.{i}.attn_norm", "blk.{i}.ffn_norm"))}
_GGUF_LAYER.update({
    "blk.{i}.attn_q_norm.weight": "layers.{i}.self_attn.q_norm.weight",
    "blk.{i}.attn_k_norm.weight": "layers.{i}.self_attn.k_norm.weight",
    "blk.{i}.post_attention_norm.weight": "layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.post_ffw_norm.weight": "layers.{i}.post_feedforward_layernorm.weight",
})


def _gguf_extra(meta: dict, a: str, names: set) -> dict:
    return {"attention_bias": "blk.0.attn_q.bias" in names}


FAMILY = dataclasses.replace(
    llama.FAMILY, name="olmo2", config_keys=_CONFIG_KEYS, config_from_hf=config_from_hf, module=Olmo2,
    weight_map=weight_map,
    gguf={"olmo2": GgufArch("olmo2", llama.GGUF_KEYS, llama.GGUF_IGNORED, llama.gguf_config("olmo2", _gguf_extra),
                            llama.GGUF_GLOBAL, _GGUF_LAYER, keep_layout)})
