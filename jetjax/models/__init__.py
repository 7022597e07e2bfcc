"""Architectures: one file per family, each implementing the residual interface of ``model`` and
ending with its :class:`~jetjax.models.family.Family` record, registered here.

``config`` (ModelConfig), ``layers`` (shared layers), ``rope`` (rotary embeddings), ``model``
(ResidualModule, the Model facade), ``hf_config`` (config.json allowlists and parsers), ``family``
(the Family contract and the registry).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jetjax.models import (gemma3, gpt2, gpt_neo, gpt_neox, granite, llama, olmo, olmo2, phi3, qwen3,
                           smollm3, starcoder2)
from jetjax.models.config import ModelConfig
from jetjax.models.layers import ACTIVATIONS
from jetjax.models.family import FAMILIES, GGUF_FAMILIES, Family, GgufArch, register
from jetjax.models.model import Model, ResidualModule, nest

for _family in (gpt2.FAMILY, gpt_neox.FAMILY, llama.FAMILY, gpt_neo.FAMILY, olmo.FAMILY, gemma3.FAMILY,
                qwen3.FAMILY, olmo2.FAMILY, starcoder2.FAMILY, granite.FAMILY, phi3.FAMILY,
                smollm3.FAMILY):
    register(_family)
del _family


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
    if config.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {config.activation!r}; known: {sorted(ACTIVATIONS)}")
    family = FAMILIES[config.arch]
    if not family.independent_head_dim and config.n_heads * config.d_head != config.d_model:
        raise ValueError(f"{config.arch} needs n_heads × d_head == d_model, got {config.n_heads} × {config.d_head} != "
                         f"{config.d_model}")
    module = family.module(config, dtype=dtype)
    _, state = nnx.split(module)
    initial = {tuple(path): var[...] for path, var in nnx.to_flat_state(state)}
    keys = jax.random.split(jax.random.key(seed), len(initial))
    flat = {}
    for key, (path, init) in zip(keys, sorted(initial.items(), key=lambda kv: str(kv[0]))):
        noise = scale * jax.random.normal(key, init.shape, jnp.float32)
        flat[path] = (init.astype(jnp.float32) + noise).astype(init.dtype)
    return Model(module, nest(flat), source=f"random({config.arch}, seed={seed})")


__all__ = ["Model", "ModelConfig", "ResidualModule", "Family", "FAMILIES", "GGUF_FAMILIES", "GgufArch", "register",
           "random_model"]
