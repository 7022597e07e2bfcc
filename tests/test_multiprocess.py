"""benchmarks/multiprocess.py: jetjax on 2 processes × 2 CPU devices (gloo) against 1 process × 4.

The script runs the processes; these tests check what it reports, recheck the numbers from the
files the processes wrote, and check that no process outlives it.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.product   # tier: the product on real models and the CLI end to end

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "multiprocess.py"


def _run(*args, timeout=240):
    """Run the script; at the timeout SIGTERM it first, so that it kills its own workers."""
    proc = subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"{SCRIPT.name} {' '.join(args)} ran past {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _assert_all_gone(pids):
    assert pids, "the script recorded no process ids"
    for rec in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(rec["pid"], 0)


def _load(directory, name):
    with np.load(directory / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_two_processes_match_one_process(tmp_path):
    # 2 layers keep the test short; the script's default model has 3
    proc = _run("--out", str(tmp_path), "--layers", "2", "--timeout", "200")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is True and result["error"] is None

    cases = {c["case"]: c for c in result["cases"]}
    for name in ("weights", "topology", "path_attribution", "reduce_paths", "bigrams", "frozen", "top_paths"):
        assert cases[name]["status"] == "compared" and cases[name]["ok"], cases[name]
    for name in ("path_attribution", "reduce_paths", "bigrams", "frozen", "top_paths"):
        assert cases[name]["max_rel"] <= 1e-5, cases[name]

    runs = {r["name"]: r for r in result["runs"]}
    workers = [runs["worker-0"], runs["worker-1"]]
    assert [w["process_index"] for w in workers] == [0, 1]
    for w in workers:
        assert (w["process_count"], w["device_count"], w["local_device_count"]) == (2, 4, 2)
        assert sorted(d["process_index"] for d in w["mesh"]) == [0, 0, 1, 1]  # the mesh spans both
    assert (runs["single"]["process_count"], runs["single"]["device_count"]) == (1, 4)
    assert len({r["weights_sha256"] for r in result["runs"]}) == 1

    # recheck the numbers from the files, not from the script's verdict
    ref = _load(tmp_path, "single")
    for worker in ("worker-0", "worker-1"):
        got = _load(tmp_path, worker)
        for key in ("path_attribution/scores", "reduce_paths/norms", "reduce_paths/top_logits",
                    "bigrams/probs", "bigrams/logsumexp", "frozen/scores", "top_paths/scores"):
            scale = np.abs(ref[key]).max()
            np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=1e-5 * scale, err_msg=f"{worker} {key}")
        for key in ("bigrams/ids", "bigrams/global_pairs", "reduce_paths/top"):
            np.testing.assert_array_equal(got[key], ref[key], err_msg=f"{worker} {key}")
    # and that the results are real ones: a full vocabulary table, paths adding up to the total
    assert ref["bigrams/ids"].shape == (61, 5)
    probs = ref["bigrams/probs"]
    assert np.all(probs >= 0) and np.all(probs.sum(1) <= 1 + 1e-5) and np.all(probs[:, :-1] >= probs[:, 1:])
    scores = ref["path_attribution/scores"]
    assert scores.shape == (16,) and np.abs(scores).max() > 0
    np.testing.assert_allclose(scores.sum() + ref["path_attribution/remainder"], ref["path_attribution/total"],
                               rtol=1e-5)
    frozen = ref["frozen/scores"]
    assert abs(frozen.sum() - ref["frozen/total"]) <= 1e-4 * np.abs(frozen).sum()  # frozen paths add up exactly

    # the search: each path it returns has the score the full frozen enumeration gives some path, and
    # what it scored plus what it left unexplored is the model's total
    for s in ref["top_paths/scores"]:
        assert np.min(np.abs(frozen - s)) <= 1e-5 * np.abs(frozen).max()
    assert ref["top_paths/explored"] + ref["top_paths/unexplored"] == pytest.approx(float(ref["frozen/total"]),
                                                                                    abs=1e-4)

    assert {r["name"] for r in result["pids"]} == {"single", "worker-0", "worker-1"}
    assert all(r["returncode"] == 0 for r in result["pids"])
    _assert_all_gone(result["pids"])


def test_failing_worker_is_reported_and_the_others_killed(tmp_path):
    proc = _run("--out", str(tmp_path), "--layers", "2", "--timeout", "120", "--inject-failure", "1", timeout=150)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # the failing worker's own traceback comes back in the message
    assert "worker-1 (pid" in proc.stderr and "injected failure in worker 1" in proc.stderr, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False and "injected failure in worker 1" in result["error"]
    codes = {r["name"]: r["returncode"] for r in result["pids"]}
    assert codes["worker-1"] == 1
    assert codes["worker-0"] == -signal.SIGKILL  # it waits for worker 1 forever: the script killed it
    _assert_all_gone(result["pids"])


def test_timeout_kills_every_process(tmp_path):
    proc = _run("--out", str(tmp_path), "--layers", "2", "--timeout", "3", timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "was still running at the timeout" in proc.stderr, proc.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["ok"] is False and result["seconds"]["total"] < 30
    assert all(r["returncode"] == -signal.SIGKILL for r in result["pids"]), result["pids"]
    _assert_all_gone(result["pids"])


@pytest.mark.parametrize("args, message", [
    (["--processes", "3", "--mesh-devices", "4"],
     "--mesh-devices 4 does not split evenly over --processes 3"),
    (["--mesh-devices", "8"],
     "--mesh-devices 8 asks for a mesh over 8 devices, but 2 processes × 2 devices per process give only 4"),
    (["--processes", "0"], "must be at least 1, got 0 and 2"),
    (["--devices-per-process", "2", "--processes", "2", "--layers", "0"], "--layers must be at least 1, got 0"),
])
def test_bad_layout_is_refused_before_any_work(tmp_path, args, message):
    out = tmp_path / "out"
    t0 = time.monotonic()
    proc = _run("--out", str(out), *args, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr, proc.stderr
    assert not out.exists()  # refused before anything was started or written
    assert time.monotonic() - t0 < 20
