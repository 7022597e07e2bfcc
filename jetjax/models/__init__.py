"""Architectures: one file per family, all implementing the residual interface of ``base``."""

from jetjax.models.base import Model, ModelConfig, ResidualModule

__all__ = ["Model", "ModelConfig", "ResidualModule"]
