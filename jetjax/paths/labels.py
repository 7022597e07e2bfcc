"""The one grammar of path labels: ``emb>attn3>mlp7>dec``, ``emb>block0>block2>dec``, ``bias>attn0>dec``.

A path label names one input→output path of a residual model: its source, the residual
components the path goes through (layers 0-based, in the order the model runs them), the decoder::

    label     := source (">" component)* ">dec"
    source    := "emb" | "bias"
    component := "attn" LAYER | "mlp" LAYER        (granularity "branch")
               | "block" LAYER                     (granularity "block")
    LAYER     := "0" | [1-9][0-9]*                 (ASCII digits, no leading zeros)

The source ``emb`` is the embedding. The source ``bias`` exists only in the frozen decomposition
(:func:`jetjax.frozen_path_attribution`), where every component is affine, ``γ(v) = L_γ(v) + b_γ``:
``bias>γ>…`` starts at the constant ``b_γ`` of its first component ``γ`` (``γ``'s output on a zero
input with the nonlinear factors frozen) and goes on through the linear parts of the others. That
first component counts towards the path's length (``bias>attn0>mlp3>dec`` has length 2), and a
``bias`` path names at least one, except ``bias>dec``: the frozen decoder's own constant.

Rules (every function here applies all of them, so a label has exactly one spelling):

* Execution order: ``attn{l}`` before ``mlp{l}`` before ``attn{l+1}``; ``block{l}`` before
  ``block{l+1}``; each component at most once.
* A path never mixes granularities: it is made of ``block{l}`` components or of ``attn{l}`` /
  ``mlp{l}`` components, never both (``emb>dec`` belongs to both). Each label is then the label of
  one term of :func:`jetjax.expand_all` at one granularity.
* In parallel-residual models (GPT-NeoX, GPT-J) both branches of a layer read the same stream, so
  ``attn{l}>mlp{l}`` is not a path there.
* No whitespace anywhere and no leading zeros: ``" emb>dec"``, ``"emb> mlp0>dec"`` and ``"mlp00"``
  are errors (naming the canonical spelling), not silently normalised, so that two spellings of one
  path can never count as two paths.

A *stream label* is the same without the final ``">dec"`` (``emb>block0``, ``bias>block0``): what
:func:`jetjax.path_streams` and :func:`jetjax.frozen_path_streams` write for paths that stop at the
last residual stream (there is no stream label ``bias``).

Example:
  >>> from jetjax.paths.labels import Component, format_label, parse_label, parse_path
  >>> parse_label("emb>attn0>mlp2>dec")
  (Component(kind='attn', layer=0), Component(kind='mlp', layer=2))
  >>> format_label([Component("block", 0), "block2"])
  'emb>block0>block2>dec'
  >>> parse_path("bias>attn0>mlp2>dec")
  ('bias', (Component(kind='attn', layer=0), Component(kind='mlp', layer=2)))
  >>> format_label(["block1"], source="bias", decoded=False), format_label([], source="bias")
  ('bias>block1', 'bias>dec')
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence, Union

import numpy as np

from jetjax.paths.plan import component_steps

__all__ = ["Component", "EMB", "BIAS", "SOURCES", "DEC", "SEP", "KINDS", "GRANULARITIES", "PATH_FORMS",
           "parse_component", "format_label", "parse_label", "parse_path", "label_length", "extend_label",
           "model_components", "check_granularity", "check_component_names"]

EMB = "emb"
BIAS = "bias"
SOURCES = (EMB, BIAS)
DEC = "dec"
SEP = ">"
KINDS = ("attn", "mlp", "block")
GRANULARITIES = ("block", "branch")
_GRANULARITY = {"attn": "branch", "mlp": "branch", "block": "block"}
_RANK = {"attn": 0, "mlp": 1, "block": 0}  # position within a layer, in execution order

# What a user may write where a path is named (listed in error messages).
PATH_FORMS = ("emb>dec", "emb>mlp{l}>dec", "emb>attn{l}>dec", "emb>attn{l}>mlp{m}>dec (l <= m)",
              "emb>mlp{l}>attn{m}>dec (l < m)", "any chain emb>c1>c2>...>dec of attn{l}/mlp{l} in execution order",
              "emb>block{l}>dec", "any chain emb>block{l}>block{m}>...>dec (l < m < ...)")
_BIAS_FORMS = ("bias>c1>...>dec (c1's constant through the others, frozen decomposition only)", "bias>dec")
_COMPONENT_FORMS = "attn{l}, mlp{l} or block{l} with l a layer number (0, 1, 2, ...; no leading zeros)"
_COMPONENT_RE = re.compile(r"(attn|mlp|block)(0|[1-9][0-9]*)")
_LOOSE_RE = re.compile(r"([a-z]+)([0-9]+)", re.ASCII)


@dataclasses.dataclass(frozen=True, slots=True)
class Component:
    """One residual component of a path: ``kind`` (``"attn"``, ``"mlp"``, ``"block"``) of ``layer``.

    ``str(Component("attn", 3)) == "attn3"``, the spelling inside labels. Hashable and comparable,
    so it serves as a set member or dictionary key.

    Example:
      >>> c = Component("mlp", 3)
      >>> str(c), c.granularity
      ('mlp3', 'branch')
      >>> Component("ffn", 0)
      Traceback (most recent call last):
      ...
      ValueError: component kind must be one of ('attn', 'mlp', 'block'), got 'ffn'
    """

    kind: str
    layer: int

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"component kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)) or self.layer < 0:
            raise ValueError(f"component layer must be a non-negative int, got {self.layer!r}")
        object.__setattr__(self, "layer", int(self.layer))

    def __str__(self) -> str:
        return f"{self.kind}{self.layer}"

    @property
    def granularity(self) -> str:
        """``"block"`` for ``block{l}``, ``"branch"`` for ``attn{l}`` / ``mlp{l}``."""
        return _GRANULARITY[self.kind]


ComponentLike = Union[Component, str]


def _forms(n_layers: int | None = None) -> str:
    text = "; ".join(PATH_FORMS)
    return text if n_layers is None else f"{text} (layers 0..{n_layers - 1})"


def _component_error(text) -> str:
    """Why ``text`` is not a component, naming the canonical spelling when there is one."""
    if not isinstance(text, str):
        return f"{text!r} is not a component name (a str such as 'mlp3')"
    if text != "".join(text.split()):
        return f"{text!r} contains whitespace; write {''.join(text.split())!r}"
    loose = _LOOSE_RE.fullmatch(text)
    if loose is not None and loose.group(1) in KINDS:
        return f"{text!r} has a leading zero; write {loose.group(1) + str(int(loose.group(2)))!r}"
    if text in (*SOURCES, DEC):
        return f"{text!r} can only {'end' if text == DEC else 'start'} a path"
    return f"{text!r} is not a component; components are {_COMPONENT_FORMS}"


def parse_component(text: str) -> Component:
    """``"mlp3"`` -> ``Component("mlp", 3)``; a :class:`Component` is returned as it is.

    Example:
      >>> parse_component("attn12")
      Component(kind='attn', layer=12)
      >>> parse_component("mlp03")
      Traceback (most recent call last):
      ...
      ValueError: bad component name: 'mlp03' has a leading zero; write 'mlp3'
    """
    if isinstance(text, Component):
        return text
    match = _COMPONENT_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"bad component name: {_component_error(text)}")
    return Component(match.group(1), int(match.group(2)))


def _check_components(label: str, comps: Sequence[Component], n_layers: int | None, granularity: str | None,
                      parallel_residual: bool) -> None:
    """Depth, granularity and execution-order rules of one path (see the module docstring)."""
    if granularity is not None:
        check_granularity(granularity)
    kinds = {c.granularity for c in comps}
    if len(kinds) > 1:
        block = next(c for c in comps if c.kind == "block")
        branch = next(c for c in comps if c.kind != "block")
        raise ValueError(f"path {label!r} mixes block and branch components ({block} and {branch}): a path is made "
                         "of block{l} components (granularity 'block') or of attn{l}/mlp{l} components "
                         "(granularity 'branch'), never both")
    for c in comps:
        if n_layers is not None and c.layer >= n_layers:
            raise ValueError(f"path {label!r}: {c}: layer {c.layer} is out of range for a model with {n_layers} "
                             f"layers (valid: 0..{n_layers - 1})")
        if granularity is not None and c.granularity != granularity:
            allowed = "block{l}" if granularity == "block" else "attn{l}/mlp{l}"
            raise ValueError(f"path {label!r}: {c} is a {c.granularity} component, but granularity={granularity!r} "
                             f"paths are made of {allowed} components")
    for a, b in zip(comps, comps[1:]):
        if (b.layer, _RANK[b.kind]) <= (a.layer, _RANK[a.kind]):
            raise ValueError(f"path {label!r}: {b} cannot follow {a}; components must be in execution order "
                             "(attn{l} before mlp{l} before attn{l+1}; block{l} before block{l+1}), each at most once")
        if parallel_residual and a.layer == b.layer:
            raise ValueError(f"path {label!r}: in a parallel-residual model attn{a.layer} and mlp{a.layer} both read "
                             "the same stream, so one cannot follow the other")


def _or(names) -> str:
    return " or ".join(map(repr, names))


def _check_sources(sources) -> tuple[str, ...]:
    items = (sources,) if isinstance(sources, str) else tuple(sources)
    if not items or any(not isinstance(x, str) or x not in SOURCES for x in items):
        raise ValueError(f"sources must name one or more of {SOURCES}, got {sources!r}")
    return items


def _bias_without_component(label: str) -> str:
    return (f"{label!r} names no component: a 'bias' path starts at the constant of its first component "
            "(bias>attn0>...); only 'bias>dec', the decoder's own constant, names none")


def parse_path(label: str, *, n_layers: int | None = None, granularity: str | None = None,
               parallel_residual: bool = False, decoded: bool = True,
               sources: Sequence[str] = SOURCES) -> tuple[str, tuple[Component, ...]]:
    """``"bias>attn0>mlp2>dec"`` -> ``("bias", components)``: a label's source and components.

    Checks every rule of the grammar, with the keywords of :func:`parse_label`; ``sources`` are the
    sources accepted (default both, ``"emb"`` and ``"bias"``).

    Example:
      >>> parse_path("emb>mlp1>dec")
      ('emb', (Component(kind='mlp', layer=1),))
      >>> parse_path("bias>dec"), parse_path("bias>block0", decoded=False)
      (('bias', ()), ('bias', (Component(kind='block', layer=0),)))
      >>> parse_path("bais>attn0>dec")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: unknown path name 'bais>attn0>dec'; ... Here it starts with 'bais'; a path starts with 'emb' or 'bias'
    """
    sources = _check_sources(sources)
    if not isinstance(label, str):
        raise TypeError(f"a path name must be a str, got {type(label).__name__}: {label!r}")

    def bad(detail: str):
        forms = _forms(n_layers) + ("; " + "; ".join(_BIAS_FORMS) if BIAS in sources else "")
        return ValueError(f"unknown path name {label!r}; valid forms: {forms}. Here {detail}")

    if label != "".join(label.split()):
        raise bad(f"it contains whitespace; labels have none: {''.join(label.split())!r}")
    parts = label.split(SEP)
    source = parts[0]
    if source not in sources:
        if source == BIAS:
            raise bad(f"it starts with {BIAS!r}: bias paths exist only in the frozen decomposition "
                      f"(jj.frozen_path_attribution); a path here starts with {_or(sources)}")
        hint = f" (write {SEP.join([source.lower(), *parts[1:]])!r})" if source.lower() in sources else ""
        raise bad(f"it starts with {source!r}; a path starts with {_or(sources)}{hint}")
    if decoded:
        if len(parts) < 2 or parts[-1] != DEC:
            raise bad("it does not end with '>dec'")
        parts = parts[1:-1]
    else:
        if parts[-1] == DEC and len(parts) > 1:
            raise bad("a stream label ends at the last residual stream, without '>dec'")
        parts = parts[1:]
    comps = []
    for part in parts:
        match = _COMPONENT_RE.fullmatch(part)
        if match is None:
            raise bad(_component_error(part))
        comps.append(Component(match.group(1), int(match.group(2))))
    comps = tuple(comps)
    if source == BIAS and not comps and not decoded:
        raise bad(_bias_without_component(label))
    _check_components(label, comps, n_layers, granularity, parallel_residual)
    return source, comps


def parse_label(label: str, *, n_layers: int | None = None, granularity: str | None = None,
                parallel_residual: bool = False, decoded: bool = True,
                sources: Sequence[str] = (EMB,)) -> tuple[Component, ...]:
    """``"emb>attn0>mlp2>dec"`` -> its components, checking every rule of the grammar.

    Args:
      label: a path label.
      n_layers: the model's depth: every component's layer must be below it (``None``: unchecked).
      granularity: ``"block"`` (only ``block{l}``), ``"branch"`` (only ``attn{l}``/``mlp{l}``) or
        ``None`` (either; a path never mixes them whatever this says).
      parallel_residual: the model runs both branches of a layer on the same stream, so
        ``attn{l}>mlp{l}`` is not a path.
      decoded: ``True``: a path label, ending in ``">dec"``; ``False``: a stream label, without it.
      sources: the sources accepted. Only ``"emb"`` by default: the components alone do not tell
        ``bias>mlp0>dec`` from ``emb>mlp0>dec``, and ``bias`` paths exist only in the frozen
        decomposition; pass :data:`SOURCES` (or use :func:`parse_path`) to accept them.

    Raises:
      TypeError: ``label`` is not a str.
      ValueError: naming the label, the part at fault and what is accepted.

    Example:
      >>> parse_label("emb>block0>block2>dec", n_layers=3, granularity="block")
      (Component(kind='block', layer=0), Component(kind='block', layer=2))
      >>> parse_label("emb>dec")
      ()
      >>> parse_label("emb>mlp1>attn1>dec")  # doctest: +ELLIPSIS
      Traceback (most recent call last):
      ...
      ValueError: path 'emb>mlp1>attn1>dec': attn1 cannot follow mlp1; components must be in execution order ...
    """
    return parse_path(label, n_layers=n_layers, granularity=granularity, parallel_residual=parallel_residual,
                      decoded=decoded, sources=sources)[1]


def format_label(components: Iterable[ComponentLike], *, decoded: bool = True, source: str = EMB) -> str:
    """The label of the path from ``source`` through ``components`` (``Component`` s or names such as ``"mlp3"``).

    Checks the same rules as :func:`parse_path`, so every label it writes parses back to the same
    source and components. ``decoded=False`` writes the stream label (no ``">dec"``).

    Example:
      >>> format_label([]), format_label(["attn0", "mlp2"]), format_label(["block1"], decoded=False)
      ('emb>dec', 'emb>attn0>mlp2>dec', 'emb>block1')
      >>> format_label(["attn0", "mlp3"], source="bias")
      'bias>attn0>mlp3>dec'
    """
    if not isinstance(source, str) or source not in SOURCES:
        raise ValueError(f"paths start at {_or(SOURCES)}, got {source!r}")
    if isinstance(components, (str, Component)):
        raise ValueError(f"format_label takes a sequence of components, got the single {components!r}; "
                         f"write format_label([{str(components)!r}])")
    comps = tuple(parse_component(c) for c in components)
    label = SEP.join([source, *map(str, comps)] + ([DEC] if decoded else []))
    if source == BIAS and not comps and not decoded:
        raise ValueError(_bias_without_component(label))
    _check_components(label, comps, None, None, False)
    return label


def label_length(label: str) -> int:
    """How many components a path (``"emb>...>dec"``) or stream (``"emb>..."``) label goes through.

    A ``bias`` path's first component (whose constant starts it) counts.

    Example:
      >>> label_length("emb>dec"), label_length("emb>attn0>mlp2>dec"), label_length("emb>block0")
      (0, 2, 1)
      >>> label_length("bias>dec"), label_length("bias>attn0>mlp3>dec"), label_length("bias>block0")
      (0, 2, 1)
    """
    decoded = isinstance(label, str) and label.endswith(SEP + DEC)
    return len(parse_path(label, decoded=decoded)[1])


def extend_label(prefix: str, part: ComponentLike) -> str:
    """``prefix>part``: the label of a term whose centre is labelled ``prefix``, after ``part``.

    ``part`` is a component or ``"dec"``. Centres of :func:`jetjax.expand_block` may carry any
    label (``"h1"``, ``"c0"``); expanding one at a component (or the decoder) appends it. A source
    alone is a prefix too: ``extend_label("bias", "attn0")`` starts attn0's constant's path.

    Example:
      >>> extend_label("emb>attn0", Component("mlp", 0)), extend_label("h1", "dec")
      ('emb>attn0>mlp0', 'h1>dec')
      >>> extend_label("bias", "attn0"), extend_label("bias>attn0", "dec")
      ('bias>attn0', 'bias>attn0>dec')
    """
    return f"{prefix}{SEP}{part if part == DEC else parse_component(part)}"


def check_granularity(granularity: str) -> str:
    if not isinstance(granularity, str) or granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    return granularity


def model_components(n_layers: int, granularity: str) -> tuple[Component, ...]:
    """A model's components in execution order: ``block0..`` or ``attn0, mlp0, attn1, ...``.

    Example:
      >>> [str(c) for c in model_components(2, "branch")]
      ['attn0', 'mlp0', 'attn1', 'mlp1']
    """
    steps = component_steps(n_layers, check_granularity(granularity), parallel_residual=False)
    return tuple(Component(kind, layer) for layer, kinds in steps for kind in kinds)


def check_component_names(names: Iterable[ComponentLike] | str | None, *, what: str,
                          n_layers: int | None = None, granularity: str | None = None) -> tuple[Component, ...] | None:
    """Parse a list of component names (``include=["attn0", "mlp3"]``), checked against a model.

    ``None`` stays ``None``; one name alone (``"mlp3"``) counts as a list of it, as a single path does
    where paths are named. Every name must be a component of a model with ``n_layers`` layers at
    this ``granularity``. The result is sorted in execution order, without duplicates, so that two
    spellings of one filter are equal.

    Example:
      >>> check_component_names(["mlp2", "attn0", "mlp2"], what="include", n_layers=3)
      (Component(kind='attn', layer=0), Component(kind='mlp', layer=2))
      >>> check_component_names(["mlp1"], what="exclude", granularity="block")
      Traceback (most recent call last):
      ...
      ValueError: exclude names mlp1, a branch component, but granularity='block' paths are made of block{l} components
    """
    if names is None:
        return None
    if isinstance(names, (str, Component)):
        names = [names]
    try:
        items = list(names)
    except TypeError:
        raise ValueError(f"{what} must be a list of component names ({_COMPONENT_FORMS}), got {names!r}") from None
    comps = set()
    for name in items:
        try:
            c = parse_component(name)
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
        if n_layers is not None and c.layer >= n_layers:
            raise ValueError(f"{what} names {c}: layer {c.layer} is out of range for a model with {n_layers} layers "
                             f"(valid: 0..{n_layers - 1})")
        if granularity is not None and c.granularity != check_granularity(granularity):
            allowed = "block{l}" if granularity == "block" else "attn{l}/mlp{l}"
            raise ValueError(f"{what} names {c}, a {c.granularity} component, but granularity={granularity!r} "
                             f"paths are made of {allowed} components")
        comps.add(c)
    return tuple(sorted(comps, key=lambda c: (c.layer, _RANK[c.kind], c.kind)))


# -- graph node ids --------------------------------------------------------------------------
#
#     node     := (writer | "bias>" receiver | "logit") "@" POS
#     writer   := "emb" | receiver
#     receiver := "attn" LAYER ["." "h" HEAD] | "mlp" LAYER
#
# ``emb@p`` is the embedding at position p, ``attn3@p`` / ``mlp3@p`` a component's output there,
# ``attn3.h2@p`` one attention head's, ``bias>mlp3@p`` the frozen constant of ``mlp3`` at ``p`` (see
# :mod:`jetjax.paths.graph`), ``logit@p`` the number explained at the predicting position.

LOGIT = "logit"
NODE_FORMS = ("emb@{p}", "attn{l}@{p}", "attn{l}.h{h}@{p}", "mlp{l}@{p}", "bias>attn{l}@{p}", "bias>attn{l}.h{h}@{p}",
              "bias>mlp{l}@{p}", "logit@{p}")
_NUM = r"(0|[1-9][0-9]*)"
_NODE_RE = re.compile(rf"(?:(bias)>)?(emb|logit|attn{_NUM}(?:\.h{_NUM})?|mlp{_NUM})@{_NUM}", re.ASCII)


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """One node of an attribution graph: ``slot`` (``"emb"``, ``"attn3"``, ``"attn3.h2"``, ``"mlp3"``,
    ``"bias>mlp3"``, ``"logit"``) at token ``position``. ``str(node)`` is its id, ``"mlp3@5"``.

    Example:
      >>> n = parse_node("bias>attn3.h2@5")
      >>> n.slot, n.position, n.kind, n.layer, n.head, n.constant
      ('bias>attn3.h2', 5, 'attn', 3, 2, True)
      >>> str(parse_node("mlp0@0")), parse_node("emb@4").layer
      ('mlp0@0', None)
    """

    slot: str
    position: int

    def __str__(self) -> str:
        return f"{self.slot}@{self.position}"

    @property
    def constant(self) -> bool:
        return self.slot.startswith(BIAS + SEP)

    @property
    def receiver(self) -> str:
        """The slot without its ``bias>`` prefix (the component a constant belongs to)."""
        return self.slot[len(BIAS + SEP):] if self.constant else self.slot

    @property
    def kind(self) -> str:
        """``"emb"``, ``"attn"``, ``"mlp"`` or ``"logit"``."""
        return re.match(r"[a-z]+", self.receiver).group(0)

    @property
    def layer(self) -> int | None:
        m = re.match(r"(?:attn|mlp)([0-9]+)", self.receiver)
        return None if m is None else int(m.group(1))

    @property
    def head(self) -> int | None:
        m = re.search(r"\.h([0-9]+)$", self.receiver)
        return None if m is None else int(m.group(1))


def parse_node(text) -> Node:
    """A node id (``"attn3@5"``, ``"attn3.h2@5"``, ``"bias>mlp0@1"``, ``"emb@0"``, ``"logit@7"``) as a :class:`Node`.

    Example:
      >>> parse_node("attn3@5")
      Node(slot='attn3', position=5)
      >>> parse_node("attn3")
      Traceback (most recent call last):
      ...
      ValueError: 'attn3' is not a node id: node ids are emb@{p}, attn{l}@{p}, attn{l}.h{h}@{p}, mlp{l}@{p}, bias>attn{l}@{p}, bias>attn{l}.h{h}@{p}, bias>mlp{l}@{p}, logit@{p} (l a layer, h a head, p a position; no spaces or leading zeros)
    """
    m = _NODE_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None or (m.group(1) and m.group(2) in (EMB, LOGIT)):
        raise ValueError(f"{text!r} is not a node id: node ids are {', '.join(NODE_FORMS)} (l a layer, h a head, "
                         "p a position; no spaces or leading zeros)")
    slot = text[: text.rindex("@")]
    return Node(slot, int(m.group(6)))


__all__ += ["LOGIT", "NODE_FORMS", "Node", "parse_node"]
