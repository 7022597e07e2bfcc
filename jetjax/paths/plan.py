"""The plan: the order in which a model's residual components run, read by every path method.

A residual model runs its components in *steps*; the components of one step read the same stream
and their outputs are added to it together. Sequential blocks (GPT-2, Llama) run ``attn{l}`` then
``mlp{l}`` as two steps per layer; parallel-residual blocks (GPT-NeoX, GPT-J) run both branches of a
layer in one step; at ``"block"`` granularity each layer is one step (``block{l}``).

Example:
  >>> component_steps(2, "branch", parallel_residual=False)
  [(0, ('attn',)), (0, ('mlp',)), (1, ('attn',)), (1, ('mlp',))]
  >>> component_steps(2, "branch", parallel_residual=True)
  [(0, ('attn', 'mlp')), (1, ('attn', 'mlp'))]
  >>> component_steps(2, "block", parallel_residual=False)
  [(0, ('block',)), (1, ('block',))]
"""

from __future__ import annotations

__all__ = ["component_steps"]


def component_steps(n_layers: int, granularity: str, parallel_residual: bool) -> list[tuple[int, tuple[str, ...]]]:
    """``(layer, kinds)`` per step, in execution order; several kinds in one step read the same stream."""
    if granularity == "block":
        return [(layer, ("block",)) for layer in range(n_layers)]
    if parallel_residual:
        return [(layer, ("attn", "mlp")) for layer in range(n_layers)]
    return [(layer, (kind,)) for layer in range(n_layers) for kind in ("attn", "mlp")]
