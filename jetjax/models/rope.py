"""Rotary position embeddings: frequencies (with Hugging Face's rescalings), tables, rotation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jetjax.models.config import ModelConfig

Array = jax.Array

ROPE_TYPES = ("default", "linear", "llama3")
# the rope_parameters each type reads (Hugging Face's names); anything else is refused when parsing
ROPE_PARAMETERS = {"default": (), "linear": ("factor",),
                   "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")}


def rope_frequencies(c: ModelConfig, layer: int | None = None) -> np.ndarray:
    """Inverse frequencies (float64, ``[rope_dim // 2]``) of ``c``'s rotary embedding (of layer
    ``layer``'s where layers differ, :meth:`ModelConfig.rope_at`)."""
    dim = c.rope_dim
    theta, scaling = (c.rope_theta, c.rope_scaling) if layer is None else c.rope_at(layer)
    inv = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    s = dict(scaling)
    kind = s.get("rope_type", "default")
    if kind == "linear":
        inv = inv / s["factor"]
    elif kind == "llama3":
        # Llama 3.1: long wavelengths slowed down by `factor`, short ones kept, a smooth blend between.
        factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        context = s["original_max_position_embeddings"]
        wavelength = 2 * np.pi / inv
        slowed = np.where(wavelength > context / low, inv / factor, inv)
        blend = (context / wavelength - low) / (high - low)
        smoothed = (1 - blend) * slowed / factor + blend * slowed
        medium = (wavelength >= context / high) & (wavelength <= context / low)
        inv = np.where(medium, smoothed, slowed)
    elif kind != "default":
        raise ValueError(f"unsupported rope_type {kind!r}; supported: {ROPE_TYPES}")
    return inv


def rotary_tables(c: ModelConfig, t: int, dtype, layer: int | None = None) -> tuple[Array, Array]:
    """``(cos, sin)``, each ``[T, rope_dim]``, for positions ``0..T-1`` (of layer ``layer``'s rope):
    constants, not traced."""
    angles = np.arange(t, dtype=np.float64)[:, None] * rope_frequencies(c, layer)[None, :]
    angles = np.concatenate([angles, angles], axis=-1)
    return jnp.asarray(np.cos(angles), dtype), jnp.asarray(np.sin(angles), dtype)


def apply_rotary(x: Array, cos: Array, sin: Array) -> Array:
    """Rotate the first ``rope_dim`` dims of each head of ``x`` (``[..., T, heads, d_head]``).

    The "rotate half" layout: dimension ``i`` pairs with ``i + rope_dim / 2``; the remaining
    ``d_head - rope_dim`` dimensions pass through (partial rotary, GPT-NeoX).
    """
    r = cos.shape[-1]
    rot, rest = x[..., :r], x[..., r:]
    half = r // 2
    rotated_half = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = cos[:, None, :], sin[:, None, :]  # broadcast over heads
    return jnp.concatenate([rot * cos + rotated_half * sin, rest], axis=-1)


__all__ = ["ROPE_TYPES", "ROPE_PARAMETERS", "rope_frequencies", "rotary_tables", "apply_rotary"]
