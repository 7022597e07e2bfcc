"""Reading Hugging Face ``config.json`` files: the allowlist type and the parsers every family needs."""

from __future__ import annotations

import dataclasses

from jetjax.models.layers import ACTIVATIONS
from jetjax.models.rope import ROPE_PARAMETERS, ROPE_TYPES


@dataclasses.dataclass(frozen=True)
class ConfigKeys:
    """A family's config.json allowlist for one ``model_type`` (the penzai way).

    ``handled``: keys the family reads; ``ignored``: keys with no effect on the forward pass
    (dropout, initialisation, caching); ``required``: ``{key: accepted values}`` for features that
    are fine only at some values. Anything else is refused by :func:`jetjax.from_pretrained`.
    """

    handled: frozenset[str]
    ignored: frozenset[str]
    required: dict[str, tuple] = dataclasses.field(default_factory=dict)

    def known(self) -> frozenset[str]:
        return self.handled | self.ignored | frozenset(self.required)


def activation_from_hf(cfg: dict, key: str, default: str) -> str:
    act = cfg.get(key, default)
    if act not in ACTIVATIONS:
        raise ValueError(f"unsupported {key} {act!r}; supported: {sorted(ACTIVATIONS)}")
    return act


def rope_from_hf(cfg: dict, d_head: int, *, default_partial: float = 1.0, allow_partial: bool = True) -> dict:
    """``rope_dim``, ``rope_theta``, ``rope_scaling`` from ``rope_parameters`` (transformers v5) or
    the older ``rope_theta`` / ``rope_scaling`` / ``rotary_pct`` / ``rotary_emb_base`` keys.

    Raises ``ValueError`` naming the feature for rope types other than :data:`ROPE_TYPES`, for
    parameters we do not implement, and for odd rotary widths.

    Example:
      >>> rope_from_hf({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}}, 64)
      {'rope_dim': 64, 'rope_theta': 10000.0, 'rope_scaling': (('rope_type', 'linear'), ('factor', 2.0))}
      >>> rope_from_hf({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}}, 64)
      Traceback (most recent call last):
        ...
      ValueError: unsupported rope_type 'yarn' in rope_parameters; supported: ('default', 'linear', 'llama3')
    """
    params = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    kind = params.pop("rope_type", params.pop("type", "default"))
    theta = params.pop("rope_theta", cfg.get("rope_theta", cfg.get("rotary_emb_base", 10000.0)))
    partial = params.pop("partial_rotary_factor",
                         cfg.get("partial_rotary_factor", cfg.get("rotary_pct", default_partial)))
    if kind not in ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {kind!r} in rope_parameters; supported: {ROPE_TYPES}")
    needed = ROPE_PARAMETERS[kind]
    missing = [k for k in needed if params.get(k) is None]
    if missing:
        raise ValueError(f"rope_type {kind!r} needs rope_parameters {missing}")
    unknown = sorted(k for k in params if k not in needed and params[k] is not None)
    if unknown:
        raise ValueError(f"unsupported rope_parameters {unknown} for rope_type {kind!r} "
                         f"(jetjax implements {list(needed) or 'no extra parameters'})")
    if not allow_partial and float(partial) != 1.0:
        raise ValueError(f"unsupported partial_rotary_factor={partial} for {cfg.get('model_type')} (only 1.0)")
    dim = int(d_head * float(partial))
    if dim % 2:
        raise ValueError(f"unsupported odd rotary dimension {dim} (d_head={d_head} × partial_rotary_factor="
                         f"{partial}); rotary embeddings need an even number of dimensions")
    scaling = () if kind == "default" else (("rope_type", kind),) + tuple(
        sorted((k, float(params[k])) for k in needed))
    return dict(rope_dim=dim, rope_theta=float(theta), rope_scaling=scaling)


def windows_for(n_layers: int, window: int | None, sliding_layers) -> tuple[int | None, ...] | None:
    """Per-layer windows: ``window`` on the layers in ``sliding_layers``, global elsewhere."""
    if window is None:
        return None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"sliding_window must be a positive int or null, got {window!r}")
    return tuple(window if layer in sliding_layers else None for layer in range(n_layers))


__all__ = ["ConfigKeys", "activation_from_hf", "rope_from_hf", "windows_for"]
