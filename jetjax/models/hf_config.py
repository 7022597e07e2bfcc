"""Reading Hugging Face ``config.json`` files: the allowlist type and the parsers every family needs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

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


class ConfigValueError(ValueError):
    """A config value of the wrong type or out of range; the message names the key and the value."""


_MISSING: Any = object()


def _present(cfg: dict, key: str, default, nullable: bool):
    """The value of ``key`` (``default`` when absent, or when null and ``nullable``); ``_MISSING`` if
    the key is null and null is not accepted."""
    if key not in cfg:
        return default
    value = cfg[key]
    if value is None:
        if nullable:
            return default
        return _MISSING
    return value


def get_int(cfg: dict, key: str, default=None, *, minimum: int = 1, nullable: bool = False):
    """``cfg[key]`` as an int ``>= minimum`` (``default`` when absent); a clear error otherwise.

    JSON numbers written as floats with an integral value (``12.0``) are accepted; ``2.5``, ``"2"``,
    ``true`` and null (unless ``nullable``: then null means ``default``) are refused by name.

    Example:
      >>> get_int({"n_layer": 12}, "n_layer", 6)
      12
      >>> get_int({"n_layer": 2.5}, "n_layer", 6)
      Traceback (most recent call last):
        ...
      jetjax.models.hf_config.ConfigValueError: config key 'n_layer' must be an int >= 1, got 2.5
    """
    value = _present(cfg, key, default, nullable)
    if value is None and default is None and (nullable or key not in cfg):
        return None
    ok = (not isinstance(value, (bool, np.bool_)) and value is not _MISSING
          and (isinstance(value, (int, np.integer))
               or (isinstance(value, (float, np.floating)) and float(value).is_integer())))
    if not ok or int(value) < minimum:
        shown = "null" if value is _MISSING else repr(value)
        raise ConfigValueError(f"config key {key!r} must be an int >= {minimum}, got {shown}")
    return int(value)


def get_float(cfg: dict, key: str, default=None, *, minimum: float | None = None, positive: bool = False,
              nullable: bool = False):
    """``cfg[key]`` as a finite float (``>= minimum``; ``> 0`` with ``positive``); a clear error otherwise.

    Example:
      >>> get_float({"layer_norm_epsilon": -1e-05}, "layer_norm_epsilon", 1e-5, minimum=0.0)
      Traceback (most recent call last):
        ...
      jetjax.models.hf_config.ConfigValueError: config key 'layer_norm_epsilon' must be a finite number >= 0.0, got -1e-05
    """
    value = _present(cfg, key, default, nullable)
    if value is None and default is None and (nullable or key not in cfg):
        return None
    ok = (not isinstance(value, (bool, np.bool_)) and value is not _MISSING
          and isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value))
    if ok and positive:
        ok = value > 0
    if ok and minimum is not None:
        ok = value >= minimum
    if not ok:
        shown = "null" if value is _MISSING else repr(value)
        bound = " > 0" if positive else (f" >= {minimum}" if minimum is not None else "")
        raise ConfigValueError(f"config key {key!r} must be a finite number{bound}, got {shown}")
    return float(value)


def get_bool(cfg: dict, key: str, default: bool) -> bool:
    """``cfg[key]`` as a bool (``default`` when absent or null); ``"yes"``, ``1`` and the like are refused."""
    value = _present(cfg, key, default, True)
    if not isinstance(value, (bool, np.bool_)):
        raise ConfigValueError(f"config key {key!r} must be true or false, got {value!r}")
    return bool(value)


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
    theta = get_float({"rope_theta": theta}, "rope_theta", positive=True)
    partial = get_float({"partial_rotary_factor": partial}, "partial_rotary_factor", positive=True)
    if partial > 1:
        raise ConfigValueError(f"config key 'partial_rotary_factor' must be in (0, 1], got {partial!r}")
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


__all__ = ["ConfigKeys", "ConfigValueError", "activation_from_hf", "get_bool", "get_float", "get_int",
           "rope_from_hf", "windows_for"]
