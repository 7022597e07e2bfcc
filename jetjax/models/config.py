"""Architecture hyper-parameters: one frozen :class:`ModelConfig` in one vocabulary for every family."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters, in one vocabulary for every family.

    Attributes:
      arch: the family (``"gpt2"``, ...).
      n_layers, d_model, n_heads, d_head, d_mlp, vocab_size: sizes (TransformerLens names:
        ``d_vocab`` is ``vocab_size``).
      n_positions: length of the learned position table, or ``None`` when positions are rotary.
      norm_eps: epsilon of the normalisation layers.
      activation: name of the MLP non-linearity (a key of :data:`~jetjax.models.layers.ACTIVATIONS`).
      tie_embeddings: whether the unembedding is the transposed token embedding.
      parallel_residual: both branches of a layer read the same stream (GPT-NeoX, GPT-J).
      attn_scale_by_layer: divide attention scores by ``layer + 1`` as well (GPT-2 option).
      attn_scale: scale attention scores by ``1/sqrt(d_head)``.
      n_kv_heads: key/value heads (grouped-query attention when fewer than ``n_heads``; query head
        ``i`` reads key/value head ``i // (n_heads // n_kv_heads)``); ``None``: as many as ``n_heads``.
      rope_dim: how many leading dimensions of each query/key head are rotated (rotary position
        embedding, in the "rotate half" layout); 0: no rotary embedding.
      rope_theta: the rotary base period.
      rope_scaling: ``(("rope_type", "llama3"), ("factor", 8.0), ...)``: a frequency rescaling
        (``"linear"`` or ``"llama3"``, with Hugging Face's parameter names); ``()``: none.
      attn_windows: per layer, the sliding-window length (a query sees the last ``w`` positions,
        itself included) or ``None`` for global causal attention; ``None``: every layer global.
      qkv_bias, out_bias, mlp_bias: whether the query/key/value, attention output and MLP
        projections have biases (families that always have them ignore these).
      norm: ``"layernorm"``, ``"layernorm_no_affine"`` (no gain or bias, OLMo), ``"rmsnorm"`` or
        ``"rmsnorm_plus_one"`` (gain stored as ``w`` and applied as ``1 + w``, Gemma).
      embed_scale: the token embedding is multiplied by this (Gemma: ``sqrt(d_model)``).
      clip_qkv: clip queries, keys and values to ``[-clip_qkv, clip_qkv]`` (OLMo option).
      post_norms: each branch normalises its own output too (Gemma 2/3: RMS norm after the
        attention and after the MLP, inside the branch, so the delta γ adds includes it).
      qk_norm: RMS norm over each query and key head before the rotary embedding (Gemma 3).
      query_pre_attn_scalar: attention scores are scaled by ``query_pre_attn_scalar ** -0.5``
        instead of ``d_head ** -0.5`` (Gemma 2/3); ``None``: the usual scale.
      attn_softcap: attention scores ``s`` become ``attn_softcap · tanh(s / attn_softcap)`` before
        the mask (Gemma 2); ``None``: no capping.
      final_softcap: the logits ``z`` become ``final_softcap · tanh(z / final_softcap)`` (Gemma 2):
        the unembedding is then *not* affine (see :attr:`unembedding_is_affine`); ``None``: none.
      local_rope_theta, local_rope_scaling: the rotary embedding of the sliding-window layers when
        it differs from the global layers' (Gemma 3: base 10k locally, 1M globally); ``None``: the
        same rope on every layer.
      attn_multiplier: attention scores are multiplied by this instead of ``d_head ** -0.5``
        (Granite's ``attention_multiplier``); ``None``: the usual scale.
      residual_multiplier: each branch's output is multiplied by this before it joins the stream
        (Granite), inside the branch, so the delta γ adds includes it.
      logits_scale: the logits are divided by this (Granite's ``logits_scaling``); the unembedding
        stays affine.
      nope_layers: indices of the layers whose attention has no rotary embedding (SmolLM3: every
        fourth layer); ``()``: rotary on every layer that has ``rope_dim > 0``.
    """

    arch: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    vocab_size: int
    n_positions: int | None
    norm_eps: float
    activation: str
    tie_embeddings: bool = True
    parallel_residual: bool = False
    attn_scale: bool = True
    attn_scale_by_layer: bool = False
    n_kv_heads: int | None = None
    rope_dim: int = 0
    rope_theta: float = 10000.0
    rope_scaling: tuple[tuple[str, Any], ...] = ()
    attn_windows: tuple[int | None, ...] | None = None
    qkv_bias: bool = True
    out_bias: bool = True
    mlp_bias: bool = True
    norm: str = "layernorm"
    embed_scale: float = 1.0
    clip_qkv: float | None = None
    post_norms: bool = False
    qk_norm: bool = False
    query_pre_attn_scalar: float | None = None
    attn_softcap: float | None = None
    final_softcap: float | None = None
    local_rope_theta: float | None = None
    local_rope_scaling: tuple[tuple[str, Any], ...] = ()
    attn_multiplier: float | None = None
    residual_multiplier: float = 1.0
    logits_scale: float = 1.0
    nope_layers: tuple[int, ...] = ()

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "d_head", "d_mlp", "vocab_size"):
            _check_int(name, getattr(self, name))
        for name in ("n_positions", "n_kv_heads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name))
        _check_int("rope_dim", self.rope_dim, minimum=0)
        _check_number("norm_eps", self.norm_eps, minimum=0.0)
        _check_number("rope_theta", self.rope_theta, positive=True)
        _check_number("embed_scale", self.embed_scale, positive=True)
        _check_number("residual_multiplier", self.residual_multiplier, positive=True)
        _check_number("logits_scale", self.logits_scale, positive=True)
        for name in ("clip_qkv", "query_pre_attn_scalar", "attn_softcap", "final_softcap", "local_rope_theta",
                     "attn_multiplier"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), positive=True)
        if self.local_rope_scaling and self.local_rope_theta is None:
            raise ValueError("local_rope_scaling needs local_rope_theta (the local layers' own rope)")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.rope_dim % 2 or not 0 <= self.rope_dim <= self.d_head:
            raise ValueError(f"rope_dim must be even and at most d_head={self.d_head}, got {self.rope_dim}")
        if not all(type(i) is int and 0 <= i < self.n_layers for i in self.nope_layers):
            raise ValueError(f"nope_layers must be layer indices in 0..{self.n_layers - 1}, got {self.nope_layers!r}")
        if self.attn_windows is not None and len(self.attn_windows) != self.n_layers:
            raise ValueError(f"attn_windows needs one entry per layer ({self.n_layers}), got {len(self.attn_windows)}")

    @property
    def d_vocab(self) -> int:
        return self.vocab_size

    @property
    def kv_heads(self) -> int:
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def unembedding_is_affine(self) -> bool:
        """Whether ``unembed(x) == x @ W + b`` (false when the logits are soft-capped)."""
        return self.final_softcap is None

    @property
    def attn_score_scale(self) -> float:
        """The factor attention scores are multiplied by (before any soft-capping)."""
        if self.attn_multiplier is not None:
            return float(self.attn_multiplier)
        if self.query_pre_attn_scalar is not None:
            return float(self.query_pre_attn_scalar) ** -0.5
        return float(self.d_head) ** -0.5 if self.attn_scale else 1.0

    def rope_at(self, layer: int) -> tuple[float, tuple]:
        """``(rope_theta, rope_scaling)`` of layer ``layer``: the local rope on sliding-window layers
        when the model has one, the global rope elsewhere."""
        if self.local_rope_theta is not None and self.window(layer) is not None:
            return self.local_rope_theta, self.local_rope_scaling
        return self.rope_theta, self.rope_scaling

    def rotary(self, layer: int) -> bool:
        """Whether layer ``layer``'s attention rotates its queries and keys."""
        return self.rope_dim > 0 and layer not in self.nope_layers

    def window(self, layer: int) -> int | None:
        """The sliding-window length of layer ``layer`` (``None``: global causal attention)."""
        return None if self.attn_windows is None else self.attn_windows[layer]


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or type(value) is not int or value < minimum:
        raise ValueError(f"ModelConfig.{name} must be an int >= {minimum}, got {value!r}")


def _check_number(name: str, value, *, minimum: float | None = None, positive: bool = False) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (not positive or value > 0) and (minimum is None or value >= minimum)
    if not ok:
        bound = " > 0" if positive else f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"ModelConfig.{name} must be a finite number{bound}, got {value!r}")


NORMS = ("layernorm", "layernorm_no_affine", "rmsnorm", "rmsnorm_plus_one")


__all__ = ["ModelConfig", "NORMS"]
