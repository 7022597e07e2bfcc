"""Circuits: the smallest set of components found that carries the number in the real model.

The exact graph (:mod:`jetjax.paths.graph`) ranks components; real ablations (:mod:`jetjax.paths.ablate`)
decide. See :func:`find_circuit`.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from jetjax._internal.checks import check_position, check_positive_int
from jetjax.models.model import Model
from jetjax.paths.ablate import Evaluator
from jetjax.paths.graph import AttributionGraph, attribution_graph
from jetjax.paths.results import one_sequence
from jetjax.paths.slots import check_baseline

__all__ = ["Circuit", "find_circuit"]


@dataclasses.dataclass(frozen=True)
class Circuit:
    """A set of components that carries the number in the real model (see :func:`find_circuit`).

    Attributes:
      nodes: the kept components (node ids, execution order); everything else is ablated.
      faithfulness: ``f`` reached in the real model; target: the ``f`` asked for.
      forward_passes: real forward passes the search used (the graph's own pass not counted).
      n_components: components the search chose from; seconds: wall time of the whole call.
      graph: the exact attribution graph that guided it.
    """

    nodes: tuple[str, ...]
    faithfulness: float
    target: float
    forward_passes: int
    n_components: int
    mode: str
    seconds: float
    graph: AttributionGraph

    @property
    def fraction(self) -> float:
        return len(self.nodes) / self.n_components

    def __str__(self) -> str:
        return (f"circuit of {len(self.nodes)} of {self.n_components} components ({100 * self.fraction:.1f}%): "
                f"real faithfulness {self.faithfulness:.3f} ({self.mode} ablation, target {self.target}), "
                f"{self.forward_passes} forward passes, {self.seconds:.1f} s")


def find_circuit(model: Model, ids, target, foil=None, faithfulness: float = 0.8, *, mode: str = "mean",
                 reference=None, position: int = -1, heads: bool = False, max_passes: int = 400,
                 params=None) -> Circuit:
    """The smallest set of components found whose real faithfulness reaches ``faithfulness``.

    Guided by the exact graph: components are ranked by ``|TE|`` against the same baseline; the top
    ``k`` are tried for a geometric grid of ``k`` (one batched call), the smallest passing ``k`` is
    narrowed by bisection, then components are dropped one at a time from the least ``|TE|`` up,
    each drop kept while ``f`` stays at or above the target (ACDC's rule, one forward pass each), in
    sweeps until a sweep drops nothing or ``max_passes`` is reached. The first two passes (``F(M)``,
    ``F(∅)``) and the grid (about ``log(N) / log(1.25)`` passes for ``N`` components) always run; the
    budget bounds the rest.

    Example:
      >>> import jetjax as jj
      >>> from jetjax.testing import tiny_model
      >>> circuit = jj.find_circuit(tiny_model(), [3, 1, 4, 1], target=5, foil=2, mode="zero")
      >>> circuit.faithfulness >= 0.8, len(circuit.nodes) <= circuit.n_components
      (True, True)
    """
    start = time.perf_counter()
    if isinstance(faithfulness, bool) or not isinstance(faithfulness, (int, float)) or not 0 < faithfulness <= 1:
        raise ValueError(f"faithfulness must be a number in (0, 1], got {faithfulness!r}")
    mode = check_baseline(mode, reference)
    max_passes = check_positive_int("max_passes", max_passes)
    ids = one_sequence(model, ids, "find_circuit")
    position = check_position(position, int(ids.shape[0]))
    graph = attribution_graph(model, ids, target, foil, position=position, heads=heads, baseline=mode,
                              reference=reference, params=params)
    ev = Evaluator(model, np.asarray(graph.ids), graph.target, graph.foil, mode, reference, heads, params)
    te = dict(zip(graph.nodes, graph.te))
    ranked = sorted(graph.components, key=lambda n: -abs(te[n]))
    n = len(ranked)
    grid = sorted({min(n, max(1, int(round(1.25 ** i)))) for i in range(0, 64)} | {n})
    fs = dict(zip(grid, ev.f([tuple(ranked[:k]) for k in grid])))
    best = next((k for k in grid if fs[k] >= faithfulness), n)
    f_keep = float(fs[best])
    lo = max([k for k in grid if k < best], default=0)
    while best - lo > 1 and ev.passes < max_passes:          # bisection between the grid's neighbours
        mid = (lo + best) // 2
        f_mid = float(ev.f([tuple(ranked[:mid])])[0])
        if f_mid >= faithfulness:
            best, f_keep = mid, f_mid
        else:
            lo = mid
    keep = list(ranked[:best])
    dropped = True
    while dropped and ev.passes < max_passes:        # sweeps of drops, from the least |TE| up, until none holds
        dropped = False
        for node in sorted(keep, key=lambda x: abs(te[x])):
            if ev.passes >= max_passes:
                break
            trial = [x for x in keep if x != node]
            f_trial = float(ev.f([tuple(trial)])[0]) if trial else float("-inf")
            if f_trial >= faithfulness:
                keep, f_keep, dropped = trial, f_trial, True
    order = {x: i for i, x in enumerate(graph.nodes)}
    return Circuit(tuple(sorted(keep, key=order.get)), f_keep, float(faithfulness), ev.passes, n, mode,
                   time.perf_counter() - start, graph)
