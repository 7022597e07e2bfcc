"""GPT-Neo (``GPTNeoForCausalLM``): GPT-2's block with global and local (sliding-window)
attention layers, attention scores *not* scaled by ``1/sqrt(d_head)``, learned positions and (usually)
a tied unembedding.

``attention_types`` such as ``[[["global", "local"], 12]]`` expands to the per-layer list
``attention_layers``; a local layer's query sees the last ``window_size`` positions. HF Linear
weights are ``(out, in)``: transposed into our ``(in, out)`` kernels on load.

Example:
  >>> cfg = config_from_hf({"model_type": "gpt_neo", "hidden_size": 16, "num_heads": 2, "num_layers": 4,
  ...                       "attention_types": [[["global", "local"], 2]], "window_size": 5})
  >>> cfg.attn_windows, cfg.attn_scale
  ((None, 5, None, 5), False)
"""

from __future__ import annotations

from flax import nnx

from jetjax.models.config import ModelConfig
from jetjax.models.family import Family
from jetjax.models.gpt2 import GPT2
from jetjax.models.hf_config import ConfigKeys, activation_from_hf, get_bool, get_float, get_int, windows_for
from jetjax.models.layers import Linear, causal_attention

_CONFIG_KEYS = {"gpt_neo": ConfigKeys(
    handled=frozenset({
        "hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "max_position_embeddings",
        "activation_function", "layer_norm_epsilon", "attention_types", "attention_layers", "window_size",
        "tie_word_embeddings",
    }),
    ignored=frozenset({"attention_dropout", "embed_dropout", "resid_dropout", "classifier_dropout",
                       "initializer_range", "use_cache", "summary_activation", "summary_first_dropout",
                       "summary_proj_to_labels", "summary_type", "summary_use_proj", "gradient_checkpointing"}),
)}
ATTENTION_KINDS = ("global", "local")


def _layer_kinds(cfg: dict, n_layers: int) -> list[str]:
    kinds = cfg.get("attention_layers")
    if kinds is None:
        kinds = [k for pattern, repeat in cfg.get("attention_types", [[["global", "local"], n_layers // 2]])
                 for _ in range(repeat) for k in pattern]
    if len(kinds) != n_layers or set(kinds) - set(ATTENTION_KINDS):
        raise ValueError(f"unsupported attention layers {kinds!r}: expected {n_layers} entries from {ATTENTION_KINDS}")
    return kinds


def config_from_hf(cfg: dict) -> ModelConfig:
    d, n_heads = get_int(cfg, "hidden_size", 2048), get_int(cfg, "num_heads", 8)
    if d % n_heads:
        raise ValueError(f"hidden_size={d} is not divisible by num_heads={n_heads}")
    n_layers = get_int(cfg, "num_layers", 24)
    kinds = _layer_kinds(cfg, n_layers)
    inner = get_int(cfg, "intermediate_size", None, nullable=True)
    return ModelConfig(
        arch="gpt_neo",
        n_layers=n_layers,
        d_model=d,
        n_heads=n_heads,
        d_head=d // n_heads,
        d_mlp=inner if inner is not None else 4 * d,
        vocab_size=get_int(cfg, "vocab_size", 50257),
        n_positions=get_int(cfg, "max_position_embeddings", 2048),
        norm_eps=get_float(cfg, "layer_norm_epsilon", 1e-5, minimum=0.0),
        activation=activation_from_hf(cfg, "activation_function", "gelu_new"),
        tie_embeddings=get_bool(cfg, "tie_word_embeddings", True),
        attn_scale=False,
        attn_windows=windows_for(n_layers, get_int(cfg, "window_size", 256),
                                 [i for i, k in enumerate(kinds) if k == "local"]),
    )


class Attention(nnx.Module):
    def __init__(self, c: ModelConfig, dtype):
        self.q_proj = Linear(c.d_model, c.d_model, bias=False, dtype=dtype)
        self.k_proj = Linear(c.d_model, c.d_model, bias=False, dtype=dtype)
        self.v_proj = Linear(c.d_model, c.d_model, bias=False, dtype=dtype)
        self.out_proj = Linear(c.d_model, c.d_model, dtype=dtype)


class GPTNeo(GPT2):
    """GPT-2's modules, embedding, MLP, norms and unembedding; its own attention projections and ``attn``."""

    ATTENTION = Attention

    def attn(self, layer, h):
        c, block = self.config, self.h[layer]
        x = block.ln_1(h)
        att = block.attn
        q, k, v = (proj(x).reshape(*x.shape[:-1], c.n_heads, c.d_head) for proj in (att.q_proj, att.k_proj, att.v_proj))
        out = causal_attention(q, k, v, scale=1.0, window=c.window(layer))  # GPT-Neo does not scale scores
        return att.out_proj(out.reshape(*out.shape[:-2], c.d_model))


def weight_map(c: ModelConfig) -> dict[str, tuple[tuple, bool]]:
    """HF tensor name (without the ``transformer.`` prefix) -> (our param path, transpose?)."""
    m = {"wte.weight": (("wte",), False), "wpe.weight": (("wpe",), False),
         "ln_f.weight": (("ln_f", "scale"), False), "ln_f.bias": (("ln_f", "bias"), False)}
    for i in range(c.n_layers):
        for ln in ("ln_1", "ln_2"):
            m[f"h.{i}.{ln}.weight"] = (("h", i, ln, "scale"), False)
            m[f"h.{i}.{ln}.bias"] = (("h", i, ln, "bias"), False)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            m[f"h.{i}.attn.attention.{proj}.weight"] = (("h", i, "attn", proj, "kernel"), True)
        m[f"h.{i}.attn.attention.out_proj.bias"] = (("h", i, "attn", "out_proj", "bias"), False)
        for lin in ("c_fc", "c_proj"):
            m[f"h.{i}.mlp.{lin}.weight"] = (("h", i, "mlp", lin, "kernel"), True)
            m[f"h.{i}.mlp.{lin}.bias"] = (("h", i, "mlp", lin, "bias"), False)
    if not c.tie_embeddings:
        m["lm_head.weight"] = (("lm_head", "kernel"), True)
    return m


FAMILY = Family(
    name="gpt_neo",
    config_keys=_CONFIG_KEYS,
    config_from_hf=config_from_hf,
    module=GPTNeo,
    weight_map=weight_map,
    strip_prefixes=("transformer.",),
    ignored_tensors=(".attn.attention.bias", ".attn.attention.masked_bias"),  # mask buffers of old checkpoints
)
