"""The writers and readers of a model's attribution graph, and the baselines they are measured against.

Shared by the graph (:mod:`jetjax.paths.graph`) and the real-model ablations (:mod:`jetjax.paths.ablate`),
so that a node id means the same output in both.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jetjax.models.model import Model
from jetjax.paths.labels import BIAS, EMB, SEP
from jetjax.paths.plan import component_steps

__all__ = ["GraphSlots", "BASELINES", "check_baseline", "reference_ids"]

BASELINES = ("zero", "mean")


@dataclasses.dataclass(frozen=True)
class GraphSlots:
    """The writers of a model's graph in execution order: ``names[i]`` and the ``step`` it runs in
    (the embedding: step −1). ``receivers`` are the indices of components (they read the stream);
    the other writers are sources (``emb``, and with heads the output projection's bias)."""

    names: tuple[str, ...]
    steps: tuple[int, ...]
    receivers: tuple[int, ...]

    @staticmethod
    def of(model: Model, heads: bool) -> "GraphSlots":
        c = model.config
        names, steps, receivers = [EMB], [-1], []
        for s, (layer, kinds) in enumerate(component_steps(c.n_layers, "branch", c.parallel_residual)):
            for kind in kinds:
                if heads and kind == "attn":
                    for h in range(c.n_heads):
                        receivers.append(len(names))
                        names.append(f"attn{layer}.h{h}")
                        steps.append(s)
                    names.append(f"{BIAS}{SEP}attn{layer}")   # the output projection's bias: a source
                    steps.append(s)
                else:
                    receivers.append(len(names))
                    names.append(f"{kind}{layer}")
                    steps.append(s)
        return GraphSlots(tuple(names), tuple(steps), tuple(receivers))


def check_baseline(baseline: str, reference) -> str:
    if baseline not in BASELINES:
        raise ValueError(f"baseline/mode must be one of {BASELINES}, got {baseline!r}")
    if baseline == "mean" and not reference:
        raise ValueError("the 'mean' baseline needs reference texts (reference=[...]: their mean component "
                         "outputs are the baseline); or use 'zero'")
    return baseline


def reference_ids(model: Model, reference) -> tuple[np.ndarray, np.ndarray]:
    """Reference texts (or id sequences) as ``(ids [B, T_max], mask [B, T_max])``, padded at the end
    (the model is causal: padding after a text changes nothing before it)."""
    if isinstance(reference, (str, bytes)) or reference is None:
        raise TypeError(f"reference must be a list of texts or token id sequences, got {type(reference).__name__}")
    seqs = []
    for i, item in enumerate(reference):
        ids = model.tokenize(item) if isinstance(item, str) else model.check_ids(np.asarray(item))
        if np.ndim(ids) != 1:
            raise ValueError(f"reference[{i}] must be one text or one sequence of ids, got shape {np.shape(ids)}")
        seqs.append(np.asarray(ids, np.int32))
    if not seqs:
        raise ValueError("reference is empty: give at least one text")
    t = max(len(s) for s in seqs)
    batch = np.zeros((len(seqs), t), np.int32)
    mask = np.zeros((len(seqs), t))
    for i, s in enumerate(seqs):
        batch[i, : len(s)] = s
        mask[i, : len(s)] = 1.0
    return batch, mask
