"""Architectures: one file per family, all implementing the residual interface of ``base``."""

from __future__ import annotations

from types import ModuleType

import jax
import jax.numpy as jnp
from flax import nnx

from jetjax.models import gpt2, gpt_neo, gpt_neox, llama, olmo
from jetjax.models.base import Model, ModelConfig, ResidualModule, nest

# HF model_type -> family module (one file per family under jetjax/models/).
FAMILIES: dict[str, ModuleType] = {t: fam for fam in (gpt2, gpt_neox, llama, gpt_neo, olmo)
                                   for t in fam.CONFIG_KEYS}


def random_model(config: ModelConfig, *, seed: int = 0, scale: float = 0.02, dtype=jnp.float32) -> Model:
    """A model of ``config.arch`` with random weights: each parameter's initial value (zero, or
    the identity gain of a norm) plus normal(0, scale) noise.

    For benchmarks and experiments that need a model's shapes, not its knowledge.

    Example:
      >>> from jetjax.models import ModelConfig, random_model
      >>> cfg = ModelConfig(arch="gpt2", n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=64,
      ...                   vocab_size=50, n_positions=32, norm_eps=1e-5, activation="gelu_new")
      >>> random_model(cfg).logits([1, 2, 3]).shape
      (3, 50)
    """
    if config.arch not in FAMILIES:
        raise ValueError(f"unknown arch {config.arch!r}; known: {sorted(FAMILIES)}")
    module = FAMILIES[config.arch].MODULE(config, dtype=dtype)
    _, state = nnx.split(module)
    initial = {tuple(path): var[...] for path, var in nnx.to_flat_state(state)}
    keys = jax.random.split(jax.random.key(seed), len(initial))
    flat = {}
    for key, (path, init) in zip(keys, sorted(initial.items(), key=lambda kv: str(kv[0]))):
        noise = scale * jax.random.normal(key, init.shape, jnp.float32)
        flat[path] = (init.astype(jnp.float32) + noise).astype(init.dtype)
    return Model(module, nest(flat), source=f"random({config.arch}, seed={seed})")


__all__ = ["Model", "ModelConfig", "ResidualModule", "FAMILIES", "random_model"]
