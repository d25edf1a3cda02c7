#!/usr/bin/env bash
# Every GPU figure the issues ask for, in one run on one CUDA device (written for an H200, about 11 minutes).
#
#   OUT=/some/dir PY=python3 bash benchmarks/gpu_checks.sh
#
# In order of what is still missing (each part has its own time limit, its log goes to $OUT):
# 1. bench_fmri.py at the released SLIM-Brain geometry: memory and step time of top-k windows + 70%
#    unit deletion vs all windows, no deletion (issue 6)                    -> $OUT/bench_fmri_cuda.md
# 2. fmri_study.py with a real pretraining budget (issue 6)               -> $OUT/fmri_study_cuda.md
# 3. foundation.kernels compiled on the GPU: correctness against fp64 and speed vs padded SDPA,
#    FlexAttention (issue 4)                                               -> $OUT/gpu_kernels.md
# 4. kernel-level times by CUDA events and the tile sweep (issue 4)       -> $OUT/sweep_varlen_tiles.md
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-benchmarks}
STUDY_STEPS=${STUDY_STEPS:-500}
mkdir -p "$OUT"
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 PYTHONPATH=".:${PYTHONPATH:-}"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/machine.txt"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader | tee -a "$OUT/machine.txt"
echo "== 1. bench_fmri (released geometry)"
timeout 120 "$PY" benchmarks/bench_fmri.py --device cuda --size released --frames 200 --scans 1 --top-k 2 --repeat 2 2>&1 | tee "$OUT/bench_fmri_cuda.md"
echo "== 2. fmri_study ($STUDY_STEPS steps)"
timeout 250 "$PY" benchmarks/fmri_study.py --device cuda --steps "$STUDY_STEPS" --batch 32 --seeds 3 2>&1 | grep -v -i "warn" | tee "$OUT/fmri_study_cuda.md"
echo "== 3. kernels"
{
  echo "## correctness (compiled Triton vs fp64)"
  timeout 70 "$PY" benchmarks/bench_attention.py --device cuda --check
  echo
  echo "## speed"
  timeout 130 "$PY" benchmarks/bench_attention.py --device cuda
} 2>&1 | tee "$OUT/gpu_kernels.md"
echo "== 4. tile sweep"
timeout 120 "$PY" benchmarks/sweep_varlen_tiles.py 2>&1 | tee "$OUT/sweep_varlen_tiles.md"
