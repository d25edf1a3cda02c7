#!/usr/bin/env bash
# The GPU figures of issue 17 in one run on one CUDA device (written for an H200; about 9 minutes, each part
# under its own time limit, every log under $OUT):
#
#   OUT=/some/dir PY=python3 bash benchmarks/gpu_checks.sh
#   PARTS="kernels" OUT=... bash benchmarks/gpu_checks.sh       # only some parts, in the order given
#
# Under a 10-minute limit per command, run it as two calls: PARTS="env kernels models" (about 4-5 minutes:
# kernels 1-3 under 120 + 150 + 60 s, models under 150 s) and then PARTS="env deepspeed" (about 5 minutes: three
# recipes, each a first run under 240 s and a resumed run under 150 s, most of it data generation and start-up).
#
# Parts (PARTS, default "env kernels models deepspeed"):
#   env        torch / triton / deepspeed / flash_attn versions, the GPU        -> $OUT/machine.txt
#   kernels    1. compiled Triton kernels vs fp64, contiguous and strided q/k/v/dO (they take every stride since
#                 issue 17: checked again)
#              2. varlen_attention forward+backward through autograd, 196 tokens (B 256) and 1568 (B 32),
#                 bf16, H 12, Dh 64, 70% masking: the autograd.Function path, q/k/v views of one qkv buffer,
#                 the custom op path it replaced, the same in CUDA graphs, backend="sdpa" (pad per call),
#                 padded SDPA + mask, torch.nn.attention.varlen and flash_attn_varlen_func where installed;
#                 per call: CUDA-event time of 30 back-to-back calls, the host's time, do_bench median,
#                 TFLOP/s, peak MiB, speed-up vs padded SDPA (target >= 1.3x)
#              3. torch.profiler of one path per size: host vs device time per call  -> $OUT/kernels.md
#   models     DeeperBrain (micro-batch 64) and SLIM-Brain (4) training steps at the full recipe sizes,
#              backend triton vs sdpa (the config switch), bf16 autocast: ms/step, samples/s, peak MiB
#                                                                            -> $OUT/models.md
#   deepspeed  for deeperbrain, slim-brain, ultrasound-mtl at their full geometry on generated data:
#              `deepspeed --num_gpus 1` pretraining (bf16, ZeRO-2 from the recipes), --stop-after 6 with a
#              checkpoint, then --resume to step 10, which ends with the export. The first run goes through
#              $OUT/ds_pretrain.py (pretrain.py plus timers: it synchronises around DeepSpeedEngine.forward,
#              backward and step) -> samples/s, peak MiB, the share of each step outside
#              forward/backward/optimizer; the resumed run is plain pretrain.py   -> $OUT/deepspeed.md
#   fmri       the issue-6 parts (bench_fmri at the released geometry, fmri_study), already measured
#
# DeepSpeed: if `import deepspeed` fails, the script installs it from $WHEELS (default ./wheels), a folder of
# wheels carried to the machine, made beforehand where PyPI is reachable, e.g.
#   pip download deepspeed==0.19.8 hjson ninja py-cpuinfo msgpack einops nvidia-ml-py --no-deps -d wheels
# (pydantic, psutil, packaging, tqdm are usually there already). The recipes train with torch's AdamW, so no
# DeepSpeed op is built (DS_BUILD_OPS=0). flash-attn has no wheel on PyPI (an sdist that compiles for about an
# hour or downloads a build from elsewhere), so it is only measured where it is already installed.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUT=${OUT:-benchmarks/gpu_out}
PARTS=${PARTS:-env kernels models deepspeed}
WHEELS=${WHEELS:-wheels}
STUDY_STEPS=${STUDY_STEPS:-500}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
unset TRITON_INTERPRET
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD:${PYTHONPATH:-}" DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false

part_env() {
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv,noheader
  nproc; free -g | head -2
  "$PY" -c "import torch.nn.attention.varlen" 2>/dev/null && echo "torch.nn.attention.varlen: yes" || echo "torch.nn.attention.varlen: no"
  "$PY" -c "import flash_attn; print('flash_attn', flash_attn.__version__)" 2>/dev/null || echo "flash_attn: not installed"
  if ! "$PY" -c "import deepspeed" 2>/dev/null && [ -d "$WHEELS" ]; then
    "$PY" -m pip install --no-index --find-links "$WHEELS" deepspeed 2>&1 | tail -2
  fi
  "$PY" -c "import deepspeed; print('deepspeed', deepspeed.__version__)" 2>&1 | tail -1
}

part_kernels() {
  echo "## 1. correctness: compiled Triton vs fp64"
  timeout 120 "$PY" benchmarks/bench_attention.py --device cuda --check
  echo; echo "## 2. forward+backward through autograd, every path"
  timeout 150 "$PY" benchmarks/bench_attention.py --device cuda --e2e
  echo; echo "## 3. profile of varlen_attention (autograd.Function path)"
  timeout 60 "$PY" benchmarks/bench_attention.py --device cuda --profile
}

part_models() {
  timeout 150 "$PY" benchmarks/bench_attention.py --device cuda --models --steps 5
}

write_ds_wrapper() {
  cat > "$OUT/ds_pretrain.py" <<'EOF'
"""pretrain.py with timers around DeepSpeedEngine.forward / backward / step (synchronised), and peak memory."""
import atexit, json, os, statistics, sys, time

import torch
from deepspeed.runtime.engine import DeepSpeedEngine

from foundation.cli import main

T = {"forward": [], "backward": [], "step": [], "ends": []}


SYNC = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)


def timed(name, orig):
    def wrapper(self, *args, **kwargs):
        SYNC()
        t0 = time.perf_counter()
        result = orig(self, *args, **kwargs)
        SYNC()
        T[name].append(time.perf_counter() - t0)
        if name == "step":
            T["ends"].append(time.perf_counter())
        return result
    return wrapper


for _name in ("forward", "backward", "step"):
    setattr(DeepSpeedEngine, _name, timed(_name, getattr(DeepSpeedEngine, _name)))


def report():
    ends, skip = T["ends"], 2  # the first steps compile kernels and allocate optimizer state
    walls = [b - a for a, b in zip(ends[skip:], ends[skip + 1:])]
    if not walls:
        return
    idx = range(skip + 1, skip + 1 + len(walls))
    inside = [T["forward"][i] + T["backward"][i] + T["step"][i] for i in idx]
    args = sys.argv
    rec = {"recipe": args[args.index("--recipe") + 1], "steps_timed": len(walls),
           "wall_ms": 1e3 * statistics.median(walls),
           "forward_ms": 1e3 * statistics.median(T["forward"][i] for i in idx),
           "backward_ms": 1e3 * statistics.median(T["backward"][i] for i in idx),
           "optimizer_ms": 1e3 * statistics.median(T["step"][i] for i in idx),
           "outside_share": statistics.median(1 - s / w for s, w in zip(inside, walls)),
           "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")}
    with open(os.environ["DS_STATS"], "a") as fh:
        fh.write(json.dumps(rec) + "\n")


atexit.register(report)
sys.exit(main(["pretrain", *sys.argv[1:]]))
EOF
}

part_deepspeed() {
  write_ds_wrapper
  local launcher=(deepspeed --num_gpus 1)
  command -v deepspeed >/dev/null || launcher=("$PY" -m deepspeed.launcher.runner --num_gpus 1)
  [ -n "${DS_LAUNCH:-}" ] && read -r -a launcher <<< "$DS_LAUNCH"  # e.g. DS_LAUNCH=python3 for a CPU smoke test
  export DS_STATS="$OUT/ds_stats.jsonl"
  rm -f "$DS_STATS"
  mkdir -p "$OUT/runs"
  for recipe in ${DS_RECIPES:-deeperbrain slim-brain ultrasound-mtl}; do
    local extra=()  # a smaller generated corpus, the recipe's geometry (model, window, micro-batch) unchanged
    case $recipe in
      deeperbrain) extra=(--set data.demo.n_subjects=6) ;;  # 84 windows of 10 s >= micro-batch 64
      slim-brain) extra=(--set data.demo_subjects=4) ;;  # 4 scans x top-4 windows of 40 frames at 96^3
      ultrasound-mtl) extra=(--set data.source=demo --set train.num_workers=2) ;;
    esac
    local run="$OUT/runs/$recipe"
    rm -rf "$run"
    local common=(--recipe "$recipe" --output-dir "$run" --set train.steps=10 --set train.warmup_steps=2
                  --set train.checkpoint_every=0 --set "data.cache_dir=$OUT/cache/$recipe")
    echo "### $recipe"
    timeout "${DS_FIRST_TIMEOUT:-240}" "${launcher[@]}" "$OUT/ds_pretrain.py" "${common[@]}" "${extra[@]}" \
      --stop-after 6 > "$run.first.log" 2>&1
    echo "first run (stop after 6): exit $?"; tail -4 "$run.first.log"
    timeout 150 "${launcher[@]}" pretrain.py "${common[@]}" "${extra[@]}" --resume > "$run.resume.log" 2>&1
    echo "resumed run (to step 10, export): exit $?"; tail -6 "$run.resume.log"
    ls "$run" "$run/export" 2>&1 | head -20
    "$PY" - "$run/metrics.jsonl" <<'EOF'
import json, os, sys
recs = [json.loads(line) for line in open(sys.argv[1])] if os.path.exists(sys.argv[1]) else []
print("steps logged:", [r["step"] for r in recs], "samples/s (engine):", [round(r["samples_per_s"], 1) for r in recs])
EOF
  done
  echo
  "$PY" - "$DS_STATS" <<'EOF'
import json, os, sys
print("| recipe | steps timed | ms/step | forward ms | backward ms | optimizer ms | outside share | peak MiB |")
print("|---|---|---|---|---|---|---|---|")
for line in open(sys.argv[1]) if os.path.exists(sys.argv[1]) else []:
    r = json.loads(line)
    print(f"| {r['recipe']} | {r['steps_timed']} | {r['wall_ms']:.1f} | {r['forward_ms']:.1f} | {r['backward_ms']:.1f} "
          f"| {r['optimizer_ms']:.1f} | {100 * r['outside_share']:.0f}% | {r['peak_mib']:.0f} |")
EOF
}

part_fmri() {
  echo "== bench_fmri (released geometry)"
  timeout 120 "$PY" benchmarks/bench_fmri.py --device cuda --size released --frames 200 --scans 1 --top-k 2 --repeat 2
  echo "== fmri_study ($STUDY_STEPS steps)"
  timeout 250 "$PY" benchmarks/fmri_study.py --device cuda --steps "$STUDY_STEPS" --batch 32 --seeds 3 2>&1 | grep -v -i "warn"
}

declare -A LOG=([env]=machine.txt [kernels]=kernels.md [models]=models.md [deepspeed]=deepspeed.md [fmri]=fmri.md)
for part in $PARTS; do
  echo "== $part ($(date -u +%T))"
  SECONDS=0
  "part_$part" 2>&1 | tee "$OUT/${LOG[$part]}"
  echo "== $part took ${SECONDS}s"
done
