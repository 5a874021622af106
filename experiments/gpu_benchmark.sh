#!/usr/bin/env bash
# The GPU benchmark in one go (about 8 minutes on one H200):
#
#   bash experiments/gpu_benchmark.sh [OUT_DIR]
#
# 1. profile + the benchmark rows (f32, bf16) + the candidate variants, in one
#    process with a time budget (experiments/gpu_benchmark.py);
# 2. the default training step under other XLA flags (conv layouts,
#    autotuning, Triton GEMMs), one short process each (an XLA that does not
#    know a flag fails that run only);
# 3. the 4 seeds of the synthetic default in one vmapped step against the
#    ordinary step per seed (experiments/seed_layouts.py, OUT_DIR/seed_layouts.json);
# 4. OUT_DIR/gpu_benchmark.md from OUT_DIR/gpu_benchmark.json.
# Needs JAX with CUDA and PyTorch with CUDA (torch is optional: without it
# JAX is timed alone).
set -u
OUT="${1:-${OUT:-gpu_benchmark_out}}"
PY="${PYTHON:-python}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
rm -f "$OUT/gpu_benchmark.json"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv \
  > "$OUT/nvidia_smi.txt" 2>&1 || true

timeout 360 "$PY" -m experiments.gpu_benchmark --out="$OUT" --budget_s=300 \
  --repeats=10 --warmup=2 \
  2>&1 | tee "$OUT/main.log" | grep -v '^W' || echo "main part failed or timed out"

run_flags() {  # tag, XLA_FLAGS
  XLA_FLAGS="$2" timeout 75 "$PY" -m experiments.gpu_benchmark --out="$OUT" \
    --part=flags --tag="$1" --repeats=10 --warmup=2 2>&1 | tee "$OUT/flags_$1.log" | grep -v '^W' \
    || echo "flags run $1 failed or timed out"
}
run_flags conv_nhwc --xla_gpu_force_conv_nhwc=true
run_flags conv_nchw --xla_gpu_force_conv_nchw=true
run_flags autotune_0 --xla_gpu_autotune_level=0
run_flags no_triton_gemm --xla_gpu_enable_triton_gemm=false

timeout 100 "$PY" -m experiments.seed_layouts --programs=mesh,loop --steps=5 \
  --json="$OUT/seed_layouts.json" 2>&1 | tee "$OUT/seed_layouts.log" | grep -v '^W' \
  || echo "seed layouts failed or timed out"

"$PY" -m experiments.gpu_benchmark --out="$OUT" --part=report
cat "$OUT/gpu_benchmark.md"
