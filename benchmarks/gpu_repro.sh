#!/usr/bin/env bash
# Issue #9's GPU reproduction in phases, each sized for one 10-minute call of the device tool.
#
# Here, once:  bash benchmarks/gpu_repro.sh stage     (model halves, wheels and benchmark data into .gpu/)
# Device call 1: carry .gpu/a .gpu/whl .gpu/init            command: bash .gpu/init/device-init.sh
# Device call 2: carry .gpu/b .gpu/init .gpu/data, at once  command: bash .gpu/init/device-init.sh &&
#                                                                      bash benchmarks/gpu_repro.sh speed
# Later calls while the machine is warm:  bash benchmarks/gpu_repro.sh trees | sweep | datagen | train METHOD
#
# Phases (settings from the environment; every figure is a ratio measured within one call):
#   speed    decode_overhead.py: hf-generate, raw loop, vanilla and eagle2/hass/coral, eager and compiled
#            (--compile $COMPILE), $TOKENS tokens; then step_overhead.py (host cost per step, eager/compiled).
#   trees    tree_size.py, compiled: verify forward time vs tree size next to the bandwidth floor, and
#            eagle2's tokens/s at several total_tokens (the size to use on this device).
#   sweep    harness run over $METHODS x $SUITES x T=$TEMPERATURES, $LIMIT questions per task, with the
#            committed drafts (or $DRAFTS/<m> when trained here) and the total_tokens the trees phase chose
#            (run trees first: a sweep resumes only with the settings it started with), compiled; then
#            the report. Results and report come back as one tar.gz. A sweep cut by the call's time limit
#            resumes when rerun.
#   datagen  self-distillation data for training ($SAMPLES answers).
#   train M  train draft M on that data with the GPU preset for at most $TRAIN_SECONDS; the checkpoint
#            lands in $DRAFTS/M (kept for sweep) and comes back as a tar.gz.
# With WORKERS=N, sweep and datagen run on N Ray workers, one GPU each (docs/cluster.md).
# Work that later phases reuse stays in $WORK (lost when the machine is given back); what comes back is
# under $OUT (at most 8 files).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f /tmp/gpu-env ] && . /tmp/gpu-env
WORK=${WORK:-/tmp/repro}
OUT=${OUT:-$WORK/out}
DRAFTS=${DRAFTS:-$WORK/drafts}
COMPILE=${COMPILE:-reduce-overhead}
METHODS=${METHODS:-hf-generate,pld,eagle2,hass,fspad,coral,medusa}
SUITES=${SUITES:-mtbench,gsm8k,humaneval,specbench}
TEMPERATURES=${TEMPERATURES:-0,1}
LIMIT=${LIMIT:-5}
TOKENS=${TOKENS:-128}
SAMPLES=${SAMPLES:-4096}
TRAIN_SECONDS=${TRAIN_SECONDS:-480}
PY=${PYTHON:-python3}
export HARNESS_DATA_DIR=${HARNESS_DATA_DIR:-$( [ -d .gpu/data ] && echo "$PWD/.gpu/data" || echo "$PWD/../shared/data")}
mkdir -p "$WORK" "$OUT" "$DRAFTS"

bandwidth_gbs() {   # peak HBM bandwidth of the device, for the step-time floor (vendor data sheets)
  "$PY" - <<'PY'
import torch
name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
table = {"H200": 4800, "H100 PCIe": 2000, "H100": 3350, "A100-SXM4-80GB": 2039, "A100": 1555}
print(next((gbs for key, gbs in table.items() if key in name), 0))
PY
}

tuned_args() {   # the total_tokens the trees phase found best on this device, for every EAGLE-family method
  [ -f "$WORK/tree_size.json" ] || return 0
  local total
  total=$("$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["recommended_total_tokens"])' \
    "$WORK/tree_size.json")
  for method in eagle2 hass fspad coral coral-fullhead; do
    case ",$METHODS," in *",$method,"*) echo -n "--opt $method.total_tokens=$total " ;; esac
  done
}

checkpoint_args() {   # drafts trained in this session replace the committed ones
  local args=()
  for dir in "$DRAFTS"/*/; do [ -f "$dir/config.json" ] && args+=(--checkpoint "$(basename "$dir")=$dir"); done
  echo "${args[@]:-}"
}

case "${1:-}" in
  stage)
    bash ../shared/gpu/stage.sh
    rm -rf .gpu/data && mkdir -p .gpu/data
    cp -r ../shared/data/{spec_bench,mt_bench,gsm8k,humaneval,train_prompts} .gpu/data/
    du -sh .gpu/data ;;
  speed)
    "$PY" benchmarks/decode_overhead.py --methods eagle2,hass,coral --compile "$COMPILE" --tokens "$TOKENS" \
      --repeats 3 --json "$OUT/decode_overhead.json" 2>&1 | grep -v '^\s*$' | tail -n 12
    "$PY" benchmarks/step_overhead.py --modes "off,$COMPILE" --tokens 100 --json "$OUT/step_overhead.json" \
      2>&1 | tail -n 8 ;;
  trees)
    bw=$(bandwidth_gbs)
    "$PY" benchmarks/tree_size.py --compile "$COMPILE" ${bw:+--bandwidth-gbs $bw} --tokens 128 \
      --json "$WORK/tree_size.json" 2>&1 | tail -n 30
    cp "$WORK/tree_size.json" "$OUT/" ;;
  sweep)
    # Stop the sweep before the call's 10 minutes run out, so the report and the archive still come back;
    # rerunning the phase resumes it.
    # shellcheck disable=SC2046
    timeout "${SWEEP_SECONDS:-480}" "$PY" -m harness run --methods "$METHODS" --suite "$SUITES" \
      --temperature "$TEMPERATURES" --limit "$LIMIT" --per-task --max-new-tokens "$TOKENS" --compile "$COMPILE" \
      --allow-code-exec --out "$WORK/results/gpu-sweep" $(checkpoint_args) $(tuned_args) \
      ${WORKERS:+--workers "$WORKERS"} 2>&1 \
      | grep -v 'it/s\]\|s/it\]' | tail -n 60 || echo "sweep stopped at the time limit: rerun this phase to resume"
    "$PY" -m harness report --results "$WORK/results/gpu-sweep" --out "$WORK/reports/gpu-sweep" | tail -n 5
    tar czf "$OUT/gpu-sweep.tar.gz" -C "$WORK" results/gpu-sweep reports/gpu-sweep ;;
  datagen)
    "$PY" -m harness datagen --out "$WORK/datagen" --max-samples "$SAMPLES" --max-new-tokens "$TOKENS" \
      --batch-size 64 ${WORKERS:+--workers "$WORKERS"} 2>&1 | tail -n 3 ;;
  train)
    method=${2:?train needs a method name}
    "$PY" -m harness train --method "$method" --data "$WORK/datagen" --out "$DRAFTS/$method" --preset gpu \
      --set time_budget_s="$TRAIN_SECONDS" 2>&1 | tail -n 5
    tar czf "$OUT/draft-$method.tar.gz" -C "$DRAFTS" "$method" ;;
  *)
    echo "usage: bash benchmarks/gpu_repro.sh stage | speed | trees | sweep | datagen | train METHOD" >&2
    exit 2 ;;
esac
