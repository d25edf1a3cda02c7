#!/usr/bin/env bash
# GPU checks of foundation.kernels for one CUDA device (written for an H200; about 3-5 minutes).
#
#   bash benchmarks/gpu_kernels.sh            # uses .venv/bin/python when present, else python
#   PY=python3 OUT=/some/dir bash benchmarks/gpu_kernels.sh
#
# 1. correctness: the compiled Triton kernels (no interpreter) against fp64, forward and q/k/v
#    gradients, sequence and packed tiling, bf16/fp16/fp32, head dims 32/64/128; error <= 2x the
#    error of plain torch in the same precision (+1e-6 for fp32);
# 2. the kernel test-suite's CPU tests still pass on this machine (interpreter, CPU tensors);
# 3. speed: Triton varlen vs padded SDPA (+ key-padding mask; and flash backend without mask as a
#    bound), FlexAttention with a document mask (block-mask build included), flash_attn_varlen_func
#    when flash_attn is importable (it is not installed by this script: the machine is offline);
#    fwd and fwd+bwd, 70% masking of 196 and 1568 tokens, bf16, H=12, Dh=64: ms, TFLOP/s, peak MiB.
#    Targets: Triton >= 1.3x faster than padded SDPA, and >= 80% of flash_attn_varlen_func's speed.
# Results go to $OUT/gpu_kernels_results.md (default benchmarks/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python; fi
fi
OUT=${OUT:-benchmarks}
mkdir -p "$OUT"
LOG="$OUT/gpu_kernels_results.md"
unset TRITON_INTERPRET
{
  echo "# foundation.kernels on GPU ($(date -u +%Y-%m-%dT%H:%MZ))"
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
  echo
  echo "## 1. correctness (compiled Triton vs fp64)"
  timeout 120 "$PY" benchmarks/bench_attention.py --device cuda --check
  echo
  echo "## 2. kernel tests (CPU, Triton interpreter)"
  timeout 120 "$PY" -m pytest tests/kernels tests/layers/test_attention.py -q -x 2>&1 | tail -3
  echo
  echo "## 3. speed"
  timeout 240 "$PY" benchmarks/bench_attention.py --device cuda --repeats 20
} 2>&1 | tee "$LOG"
