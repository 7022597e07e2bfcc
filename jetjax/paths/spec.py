"""What selects and weights the paths of Algorithm 2: one frozen, hashable :class:`PathSpec`.

:func:`jetjax.expand_all`, :func:`jetjax.path_streams`, :func:`jetjax.count_paths`,
:func:`jetjax.reduce_paths` and :func:`jetjax.path_attribution` take the same path settings (jet
order, granularity, weights and the filters). Each builds one :class:`PathSpec` at entry, from
``spec=`` or from its keyword arguments (:func:`resolve_spec`), and passes only the spec inward.
Building it checks and normalises every field, so a bad value is refused before anything is
compiled or cached, and two spellings of one setting give equal specs with equal hashes: the spec
is the compile-cache key.

Example:
  >>> from jetjax.paths.spec import PathSpec
  >>> a = PathSpec(granularity="branch", include=["mlp2", "attn0"], max_length=2)
  >>> a
  PathSpec(order=0, granularity='branch', weights='unit', include=('attn0', 'mlp2'), exclude=(), max_length=2, attention_free=False)
  >>> a == PathSpec(granularity="branch", include=("attn0", "mlp2", "mlp2"), max_length=2) and hash(a) == hash(a)
  True
  >>> PathSpec(max_length=2.0)
  Traceback (most recent call last):
  ...
  ValueError: max_length must be a non-negative int or None, got 2.0
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from jetjax._internal.checks import check_nonnegative_int, check_order, check_positive_int
from jetjax.paths.labels import Component, check_component_names, check_granularity

__all__ = ["PathSpec", "WEIGHTS", "UNSET", "resolve_spec"]

WEIGHTS = ("unit", "uniform")


class _Unset:
    """The default of a path keyword: "not given", told apart from every value a user may pass."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<PathSpec default>"


# Keyword arguments default to this, so that a keyword given next to ``spec=`` can be noticed.
UNSET: Any = _Unset()


@dataclasses.dataclass(frozen=True, repr=False)
class PathSpec:
    """The settings that select and weight the paths of Algorithm 2, checked and normalised.

    Attributes:
      order: the jet order of every expansion (a non-negative int).
      granularity: ``"block"`` (one γ per layer) or ``"branch"`` (attention and MLP separately).
      weights: ``"unit"`` (each expansion's weights are 1) or ``"uniform"`` (``1/C``, as the paper).
        Per-centre arrays are for :func:`jetjax.paths.expand` and :func:`jetjax.expand_block`.
      include: only paths through these components (``None``: no such filter); given as names
        (``"attn0"``), :class:`~jetjax.paths.labels.Component` s or one name alone, kept as a sorted,
        deduplicated tuple of components of this granularity.
      exclude: no path through these components; normalised as ``include`` (``None`` means ``()``).
      max_length: at most this many components per path (``None``: no limit).
      attention_free: no ``attn*`` component.

    Construction raises ``ValueError`` (``TypeError`` for a jet order that is not an int) naming
    the field and the value. Depth is a property of the model: :meth:`validate` checks the
    components' layers against it.
    """

    order: int = 0
    granularity: str = "block"
    weights: str = "unit"
    include: tuple[Component, ...] | None = None
    exclude: tuple[Component, ...] = ()
    max_length: int | None = None
    attention_free: bool = False

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("order", check_order(self.order))
        granularity = check_granularity(self.granularity)
        put("granularity", str(granularity))
        if not isinstance(self.weights, str) or self.weights not in WEIGHTS:
            raise ValueError(f"weights must be 'unit' or 'uniform' for paths (per-centre arrays are for "
                             f"jj.expand / jj.expand_block), got {self.weights!r}")
        put("weights", str(self.weights))
        put("include", check_component_names(self.include, what="include", granularity=granularity))
        put("exclude", check_component_names(() if self.exclude is None else self.exclude, what="exclude",
                                             granularity=granularity))
        put("max_length", check_nonnegative_int("max_length", self.max_length, optional=True))
        if not isinstance(self.attention_free, (bool, np.bool_)):
            raise ValueError(f"attention_free must be True or False, got {self.attention_free!r}")
        put("attention_free", bool(self.attention_free))

    def __repr__(self) -> str:
        include = None if self.include is None else tuple(map(str, self.include))
        return (f"PathSpec(order={self.order}, granularity={self.granularity!r}, weights={self.weights!r}, "
                f"include={include!r}, exclude={tuple(map(str, self.exclude))!r}, "
                f"max_length={self.max_length!r}, attention_free={self.attention_free})")

    def validate(self, model) -> PathSpec:
        """Check the components named by ``include`` / ``exclude`` against ``model``; returns ``self``.

        ``model`` is a :class:`jetjax.Model` or its number of layers.

        Example:
          >>> PathSpec(exclude="mlp7", granularity="branch").validate(4)
          Traceback (most recent call last):
          ...
          ValueError: exclude names mlp7: layer 7 is out of range for a model with 4 layers (valid: 0..3)
        """
        config = getattr(model, "config", None)
        n_layers = check_positive_int("n_layers", model if config is None else config.n_layers)
        check_component_names(self.include, what="include", n_layers=n_layers)
        check_component_names(self.exclude, what="exclude", n_layers=n_layers)
        return self

    def allows(self, component: Component) -> bool:
        """Whether paths may go through ``component`` (``max_length`` aside).

        Example:
          >>> spec = PathSpec(granularity="branch", attention_free=True, exclude=["mlp1"])
          >>> [spec.allows(Component(k, 1)) for k in ("attn", "mlp")], spec.allows(Component("mlp", 0))
          ([False, False], True)
        """
        if self.attention_free and component.kind == "attn":
            return False
        return component not in self.exclude and (self.include is None or component in self.include)


def resolve_spec(spec: PathSpec | None, **given) -> PathSpec:
    """The :class:`PathSpec` of one call: ``spec`` itself, or one built from the keywords given.

    Keywords left at :data:`UNSET` were not given. Next to a ``spec``, a keyword may only repeat
    what the spec says (compared after normalisation); one that disagrees is an error, rather than
    one of the two being silently ignored.

    Example:
      >>> resolve_spec(None, max_length=UNSET, granularity="branch").granularity
      'branch'
      >>> resolve_spec(PathSpec(max_length=1), max_length=2)
      Traceback (most recent call last):
      ...
      ValueError: spec= and keyword arguments disagree: the spec has max_length=1, the keyword gives 2; pass each setting once, in the spec or as a keyword
    """
    explicit = {name: value for name, value in given.items() if value is not UNSET}
    if spec is None:
        return PathSpec(**explicit)
    if not isinstance(spec, PathSpec):
        raise TypeError(f"spec must be a jetjax.PathSpec, got {type(spec).__name__}: {spec!r}")
    clashes = []
    for name, value in explicit.items():
        # normalised alone, with the spec's granularity to check components against
        alone = PathSpec(**{"granularity": spec.granularity, name: value})
        if getattr(alone, name) != getattr(spec, name):
            clashes.append(f"the spec has {name}={_show(getattr(spec, name))}, the keyword gives {value!r}")
    if clashes:
        raise ValueError("spec= and keyword arguments disagree: " + "; ".join(clashes)
                         + "; pass each setting once, in the spec or as a keyword")
    return spec


def _show(value) -> str:
    if isinstance(value, tuple):
        return repr(tuple(map(str, value)))
    return repr(value)
