"""Architectures: one file per family, all implementing the residual interface of ``base``."""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp

from jetjax.models import gpt2
from jetjax.models.base import Model, ModelConfig, ResidualModule, abstract_params, nest

# HF model_type -> family module (one file per family under jetjax/models/).
FAMILIES: dict[str, ModuleType] = {t: fam for fam in (gpt2,) for t in fam.MODEL_TYPES}


def random_model(config: ModelConfig, *, seed: int = 0, scale: float = 0.02, dtype=jnp.float32) -> Model:
    """A model of ``config.arch`` with random weights (normal(0, scale); norms near 1).

    For benchmarks and experiments that need a model's shapes, not its knowledge.

    Example:
      >>> from jetjax.models import ModelConfig, random_model
      >>> cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=64,
      ...                   vocab_size=50, n_positions=32, norm_eps=1e-5, activation="gelu_new")
      >>> random_model(cfg).logits([1, 2, 3]).shape
      (3, 50)
    """
    family = FAMILIES[config.arch]
    skeleton, shapes = abstract_params(lambda: family.MODULE(config, dtype=dtype))
    keys = jax.random.split(jax.random.key(seed), len(shapes))
    flat = {}
    for key, (path, sds) in zip(keys, sorted(shapes.items(), key=lambda kv: str(kv[0]))):
        noise = scale * jax.random.normal(key, sds.shape, jnp.float32)
        base = 1.0 if path[-1] == "scale" else 0.0  # norm gains start at one
        flat[path] = (base + noise).astype(sds.dtype)
    return Model(skeleton, nest(flat), source=f"random({config.arch}, seed={seed})")


__all__ = ["Model", "ModelConfig", "ResidualModule", "FAMILIES", "random_model"]
