#!/usr/bin/env bash
# One script for a GPU or TPU machine (issue 35.3): check the device, run the test tiers that matter on
# it, then the benchmark suite, and write everything under benchmarks/results/accelerator/<device>/.
#
#   bash benchmarks/accelerator.sh              # needs a jax build for the accelerator (e.g. jax[cuda12])
#   QUICK=1 bash benchmarks/accelerator.sh      # small sizes: a smoke run of the whole script in minutes
#
# It refuses to run on a CPU-only jax (the CPU figures live in benchmarks/results/ already). The test
# tiers run with JAX_PLATFORMS unset so jax picks the accelerator (tests/conftest.py only defaults it to
# cpu when it is not set at all). Nothing here downloads a model: SmolLM2 comes from its wheel
# (make setup), the rest are random models of the papers' shapes.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

platform=$(JAX_PLATFORMS= "$PY" -c 'import jax; d = jax.devices()[0]; print(d.platform)' 2>/dev/null)
if [ "$platform" != "gpu" ] && [ "$platform" != "tpu" ] && [ "$platform" != "cuda" ] && [ "$platform" != "rocm" ]; then
    echo "accelerator.sh: jax sees no GPU or TPU (platform: ${platform:-none}); install a jax build for" \
         "the accelerator (e.g. pip install 'jax[cuda12]==<the pinned jax version>') and run again" >&2
    exit 2
fi
kind=$(JAX_PLATFORMS= "$PY" -c 'import jax; print(jax.devices()[0].device_kind.replace(" ", "-"))')
out="benchmarks/results/accelerator/$kind"
mkdir -p "$out"
log="$out/run.log"
: > "$log"
say() { echo "$@" | tee -a "$log"; }

say "== device"
JAX_PLATFORMS= "$PY" - <<'EOF' | tee -a "$log" "$out/device.txt"
import jax, platform
print("jax", jax.__version__, "| backend", jax.default_backend(), "| devices", jax.devices())
print("host", platform.node(), platform.machine())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log" "$out/device.txt"

say "== test tiers on the accelerator (unit + parity: jets, lenses, paths, graphs, n-grams)"
t0=$(date +%s)
JAX_PLATFORMS= "$PY" -m pytest -q -p no:cacheprovider -m "unit or parity" \
    tests/jet tests/lenses tests/paths tests/ngrams tests/models 2>&1 | tail -40 | tee -a "$log"
tests_rc=${PIPESTATUS[0]}
say "tests: exit $tests_rc in $(( $(date +%s) - t0 )) s"

say "== benchmark suite (float32 and bfloat16 parameters)"
quick=()
[ "${QUICK:-0}" = 1 ] && quick=(--quick)
t0=$(date +%s)
JAX_PLATFORMS= JETJAX_COMPILE_CACHE=off "$PY" -m jetjax bench "${quick[@]}" --dtype float32 bfloat16 \
    --out "$out" 2>&1 | tee -a "$log"
bench_rc=${PIPESTATUS[0]}
say "bench: exit $bench_rc in $(( $(date +%s) - t0 )) s; results in $out (summary.md first)"

say "== path search on SmolLM2: first and warm call"
JAX_PLATFORMS= JETJAX_BENCH_RESULTS="$out" "$PY" -m jetjax.bench.search "${quick[@]}" 2>&1 | tail -20 | tee -a "$log"

exit $(( tests_rc != 0 || bench_rc != 0 ))
