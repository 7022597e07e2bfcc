"""Work sized by unbounded numbers is refused from a closed-form count before anything is built (issue 34).

Paths (``frozen_path_*``, ``expand_all``, ``path_streams``, ``path_attribution(method="frozen")``), the
search's ``k`` and ``beam``, and score directions that overflow float32: the ``bounds`` and ``overflow``
cases of ``tools/redteam_compute.py`` must all be "good", and every ``bounds`` case must refuse in
under 10 s with at most 1 GB more address space than the set-up took (a subprocess under
``RLIMIT_AS``; before this was fixed they enumerated ``2^33``–``2^65`` labels or asked XLA for
terabytes). The expected counts are closed forms written out here, not jetjax's counting code.
"""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import jetjax as jj
from jetjax._internal.checks import check_direction
from jetjax.models import random_model

ROOT = Path(__file__).resolve().parents[2]
_PATH = ROOT / "tools" / "redteam_compute.py"
_spec = importlib.util.spec_from_file_location("jetjax_redteam_compute", _PATH)
redteam = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = redteam
_spec.loader.exec_module(redteam)

CLASSES = ("bounds", "overflow")
CASES = [c for c in redteam.CASES_COMPUTE if redteam.case_class(c.name) in CLASSES]


@pytest.fixture(scope="module")
def ctx():
    c = redteam.ComputeCtx()
    c.warm(CLASSES)      # set-up is not the cases' time
    yield c
    c.close()


def _param(case):
    marks = ()
    if case.name in redteam.KNOWN:
        marks = pytest.mark.xfail(strict=True, reason=redteam.KNOWN[case.name])
    return pytest.param(case, id=case.name, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_unbounded_work_is_refused_clearly(ctx, case):
    result = redteam.run_case(case, ctx)
    assert result.outcome == "good", f"{result.outcome}: {result.why}\n{result.message}"


def test_every_bounds_case_refuses_fast_under_a_memory_limit():
    """In a fresh process, with the address space capped at the set-up's + 1 GB: each refusal in < 10 s."""
    out = subprocess.run([sys.executable, str(_PATH), "-k", "bounds/", "--json", "--memory-gb", "1"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert {r["name"] for r in rows} == {c.name for c in CASES if c.name.startswith("bounds/")}
    for r in rows:
        assert r["outcome"] == "good", r
        # a refusal within 10 s; a case answered with a warning and a result (k beyond the paths of a
        # tiny model) does its work, within the same memory limit
        assert r["seconds"] < 10 or r["why"] == "warned", r
    assert sum(r["why"] != "warned" for r in rows) >= 15


def _model(n_layers, parallel=False):
    cfg = redteam.dataclasses.replace(redteam._api.GPT2, n_layers=n_layers, parallel_residual=parallel)
    return random_model(cfg, scale=0.3)


@pytest.fixture(scope="module")
def four():
    return _model(4)


def test_frozen_paths_are_refused_exactly_above_max_paths(four):
    # 4 layers, branches: 2^8 emb paths and 2^8 - 1 constants' paths = 511, bias>dec aside
    n = 2 ** 9 - 1
    att = jj.frozen_path_attribution(four, [2, 3, 4], target=5, max_paths=n)
    assert len(att.labels) == n + 1
    with pytest.raises(ValueError, match=rf"give {n} paths, more than max_paths={n - 1}; narrow them with max_length="):
        jj.frozen_path_attribution(four, [2, 3, 4], target=5, max_paths=n - 1)
    with pytest.raises(ValueError, match=rf"give {2 ** 5 - 1} paths, more than max_paths=30"):
        jj.frozen_path_streams(four, [2, 3, 4], max_paths=30)       # blocks: 2^4 + 2^4 - 1
    with pytest.raises(ValueError, match="more than max_paths=30"):
        jj.path_attribution(four, [2, 3, 4], target=5, method="frozen", granularity="block", max_paths=30)
    assert len(jj.frozen_path_streams(four, [2, 3, 4], max_paths=None).labels) == 2 ** 5 - 1


def test_jet_paths_are_refused_exactly_above_max_paths(four):
    assert len(jj.expand_all(four, [2, 3], max_paths=16).labels) == 16
    with pytest.raises(ValueError, match=r"give 16 paths, more than max_paths=15"):
        jj.expand_all(four, [2, 3], max_paths=15)
    with pytest.raises(ValueError, match=r"give 256 paths, more than max_paths=255"):
        jj.path_streams(four, [2, 3], granularity="branch", max_paths=255)
    # reduce_paths counts against its own max_paths, not path_streams' default
    res = jj.reduce_paths(four, [2, 3], granularity="branch", max_paths=256, top_k=0)
    assert len(res.labels) == 256


def test_the_refusal_says_how_to_get_the_work_done(ctx):
    with pytest.raises(ValueError) as err:
        jj.frozen_path_attribution(ctx.deep, [2, 3, 4], target=5)
    msg = str(err.value)
    assert str(2 ** 65 - 1) in msg and "\n" not in msg
    # the largest max_length that fits is named with its own count: C(64, ≤3) emb paths + constants' paths
    emb = sum(_comb(64, j) for j in range(4))
    bias = sum(sum(_comb(63 - s, j) for j in range(3)) for s in range(64))
    assert f"max_length=3 gives {emb + bias} paths here" in msg
    assert "jj.top_paths" in msg and "max_paths=" in msg


def _comb(n, k):
    from math import comb
    return comb(n, k)


def test_a_beam_beyond_the_paths_is_capped_and_changes_nothing(four):
    n_paths = 2 ** 9        # 511 frozen branch paths and bias>dec
    wide = jj.top_paths(four, [2, 3, 4], 5, target=5, foil=6, beam=10 ** 6)
    exact = jj.top_paths(four, [2, 3, 4], 5, target=5, foil=6, beam=n_paths)
    assert wide.beam == n_paths and wide.labels == exact.labels
    np.testing.assert_array_equal(wide.scores, exact.scores)
    with pytest.warns(UserWarning, match="k=1000000 exceeds the 512 paths"):
        every = jj.top_paths(four, [2, 3, 4], 10 ** 6, target=5, foil=6)
    assert len(every.labels) == n_paths and every.beam == n_paths


def test_a_beam_that_cannot_fit_is_refused_from_its_size(ctx):
    from jetjax.paths.search import _check_beam_size

    # (1 + 1) * beam + 1 candidates of 3 x 8 floats, twice over, and a 64-component mask each
    _check_beam_size(5, 1000, 3, 8, 1, 64, available=(2 * 1000 + 1) * (2 * 3 * 8 * 4 + 64) + 3 * 5 * 72)
    with pytest.raises(MemoryError, match=r"k=5 with beam=1000 holds 2001 prefixes of 3×8 floats"):
        _check_beam_size(5, 1000, 3, 8, 1, 64, available=(2 * 1000 + 1) * (2 * 3 * 8 * 4 + 64))
    with pytest.raises(ValueError, match=r"2\^31 - 1 an int32 index reaches"):
        _check_beam_size(5, 2 ** 30, 3, 8, 1, 64, available=2 ** 60)


@pytest.mark.parametrize("direction,match", [
    (np.full(7, 1e39), "overflows float32"),
    (np.full(7, 1e30), "has norm 2.65e\\+30"),
    (np.full(7, 1e-50), "zero in float32"),
    (np.zeros(7), "zero in float32"),
    (np.array([1, 2, np.nan, 0, 0, 0, 0.0]), "1 NaN/inf"),
])
def test_score_directions_are_checked_for_float32(direction, match):
    with pytest.raises(ValueError, match=match):
        check_direction(direction, 7)
    assert check_direction(np.full(7, 1e17), 7).dtype == np.float64     # norm 2.6e17: accepted
