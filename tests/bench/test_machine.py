"""The machine record and GEMM rates every benchmark reports (``jetjax.bench.machine``)."""

import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from jetjax.bench.machine import FLAGS, GEMMS, describe, gemm_rates, machine


def _proc_cpuinfo():
    """(model name, flags) of the first processor, read here independently of the module."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "unknown")
    flags = next((set(ln.split(":", 1)[1].split()) for ln in lines if ln.startswith("flags")), set())
    return model, flags


@pytest.fixture(scope="module")
def info():
    return machine()


def test_machine_keys_and_types(info):
    assert set(info) == {"cpu", "isa", "cores", "backend", "device", "jax", "jaxlib", "numpy", "torch",
                         "torch_threads", "load_average", "platform"}
    assert isinstance(info["cpu"], str) and info["cpu"]
    assert list(info["isa"]) == list(FLAGS) and all(type(v) is bool for v in info["isa"].values())
    assert info["cores"] == os.cpu_count()
    import jax
    import jaxlib
    import numpy as np

    assert (info["jax"], info["jaxlib"], info["numpy"]) == (jax.__version__, jaxlib.__version__, np.__version__)
    assert info["backend"] == jax.default_backend() and isinstance(info["device"], str)
    assert info["platform"] == platform.platform()
    assert len(info["load_average"]) == 3 and all(isinstance(x, float) and x >= 0 for x in info["load_average"])
    try:
        import torch
    except ImportError:
        assert info["torch"] is None and info["torch_threads"] is None
    else:
        assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads() >= 1


def test_cpu_and_isa_flags_match_proc_cpuinfo(info):
    proc = _proc_cpuinfo()
    if proc is None:
        assert info["cpu"] == "unknown" and not any(info["isa"].values())
        return
    model, flags = proc
    assert info["cpu"] == model
    assert info["isa"] == {f: f in flags for f in FLAGS}


def test_gemm_rates_small_shape():
    g = gemm_rates(48, 32, 80, repeats=2)
    assert g["shape"] == [48, 32, 80] and set(g["gflops"]) == set(GEMMS) == set(g["rows"])
    for name in ("xla_float32", "xla_bfloat16"):
        assert math.isfinite(g["gflops"][name]) and g["gflops"][name] > 0 and g["rows"][name] == 48
    try:
        import torch  # noqa: F401
    except ImportError:
        assert g["gflops"]["torch_float32"] is None and g["gflops"]["torch_bfloat16"] is None
    else:
        assert all(g["gflops"][n] > 0 and math.isfinite(g["gflops"][n]) for n in ("torch_float32", "torch_bfloat16"))
    for precision in ("float32", "bfloat16"):
        available = {n: r for n, r in g["gflops"].items() if GEMMS[n] == precision and r is not None}
        name, rate = g["best"][precision]
        assert rate == max(available.values()) and available[name] == rate


def test_gemm_rates_without_torch_and_slow_gemms():
    g = gemm_rates(64, 16, 40, repeats=1, torch_ok=False)
    assert g["gflops"]["torch_float32"] is None and g["gflops"]["torch_bfloat16"] is None
    assert g["best"] == {"float32": ("xla_float32", g["gflops"]["xla_float32"]),
                         "bfloat16": ("xla_bfloat16", g["gflops"]["xla_bfloat16"])}
    # A budget no full call fits: every GEMM is timed on its first 16 rows instead, and says so.
    slow = gemm_rates(64, 16, 40, repeats=2, torch_ok=False, max_call_s=1e-9)
    assert slow["rows"]["xla_float32"] == slow["rows"]["xla_bfloat16"] == 16
    assert slow["gflops"]["xla_float32"] > 0


@pytest.mark.parametrize("bad", [dict(m=0), dict(k=-1), dict(n=2.0), dict(repeats=0), dict(max_call_s=0)])
def test_gemm_rates_rejects_bad_arguments(bad):
    args = dict(m=8, k=8, n=8, repeats=1, max_call_s=1.0) | bad
    with pytest.raises(ValueError, match=f"^{next(iter(bad))} must"):
        gemm_rates(args.pop("m"), args.pop("k"), args.pop("n"), **args)


def test_describe(info):
    line = describe(info)
    assert line.startswith("CPU: ") and info["cpu"] in line and "\n" not in line
    assert f"{info['cores']} cores" in line and f"jax {info['jax']}" in line
    flags = {"avx2": True, "fma": True, "avx512f": True, "avx512_bf16": True, "amx_tile": True, "amx_bf16": True}
    amx = describe(dict(info, isa=flags, torch=None))
    assert "AVX-512 BF16" in amx and "AMX-BF16" in amx and "no " not in amx and "torch not installed" in amx
    bare = describe(dict(info, isa={f: False for f in FLAGS}))
    assert "no AVX2, no FMA, no AVX-512, no AMX" in bare


def test_importing_the_module_imports_no_torch():
    code = "import sys, jetjax.bench.machine; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
