"""Small random models for doctests, tests and experiments: the shapes of a real family, no knowledge.

Sizes are small and mostly distinct primes where it matters, so that a transposed axis cannot pass by
accident; the weights are random (``scale`` sets their spread) and every bias and norm gain is
perturbed, so a mis-mapped bias cannot pass either.

Example:
  >>> from jetjax.testing import tiny_model
  >>> model = tiny_model()
  >>> model.config.arch, model.config.n_layers, model.logits([3, 1, 4]).shape
  ('gpt2', 2, (3, 19))
  >>> tiny_model("llama").config.n_kv_heads
  2
"""

from __future__ import annotations

import jax.numpy as jnp

from jetjax.models import ModelConfig, random_model
from jetjax.models.model import Model

__all__ = ["tiny_config", "tiny_model"]

_CONFIGS = {
    "gpt2": dict(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, vocab_size=19, n_positions=8, norm_eps=1e-5,
                 activation="gelu_new"),
    "llama": dict(n_layers=2, d_model=16, n_heads=4, d_head=4, d_mlp=24, vocab_size=19, n_positions=None,
                  norm_eps=1e-6, activation="silu", n_kv_heads=2, rope_dim=4, norm="rmsnorm", tie_embeddings=False),
}


def tiny_config(arch: str = "gpt2", **overrides) -> ModelConfig:
    """The :class:`~jetjax.ModelConfig` of :func:`tiny_model` (``arch``: ``"gpt2"`` or ``"llama"``), with
    ``overrides`` applied."""
    if arch not in _CONFIGS:
        raise ValueError(f"tiny_config knows arch 'gpt2' and 'llama', got {arch!r}")
    return ModelConfig(arch=arch, **{**_CONFIGS[arch], **overrides})


def tiny_model(arch: str = "gpt2", *, seed: int = 0, scale: float = 0.5, dtype=jnp.float32, **overrides) -> Model:
    """A random model of ``arch`` at :func:`tiny_config`'s sizes (no tokenizer: give token ids)."""
    return random_model(tiny_config(arch, **overrides), seed=seed, scale=scale, dtype=dtype)
