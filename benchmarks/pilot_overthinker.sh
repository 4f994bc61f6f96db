#!/usr/bin/env bash
# The pilot of issue 24 (see configs/pilot_overthinker.yaml): GRPO from the overthinker, one seed,
# outcome-only vs RePro (alpha 0.1, 0.3) vs the length penalty at a few weights, two runs at a time
# (one torch thread each, as the grid runs). Rerunning skips finished runs. Then draws the held-out
# curves side by side (OUT/held_out.png, OUT/held_out.md with the seconds per update):
#   bash benchmarks/pilot_overthinker.sh [OUT_DIR=runs/pilot]      (run it alone on the machine)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/pilot}
CLI=${CLI:-.venv/bin/repro-env}
mkdir -p "$OUT"
export OMP_NUM_THREADS=1
run() {  # NAME, then --set overrides
  local name=$1; shift
  if [ -f "$OUT/$name/DONE" ]; then echo "done: $name"; return; fi
  echo "$(date +%T) start $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
  if [ -d "$OUT/$name/checkpoints" ]; then
    "$CLI" train --resume "$OUT/$name" > "$OUT/$name.log" 2>&1
  else
    "$CLI" train configs/pilot_overthinker.yaml --set "out_dir=$OUT/$name" "$@" > "$OUT/$name.log" 2>&1
  fi
  touch "$OUT/$name/DONE"
  echo "$(date +%T) end $name (load $(cut -d' ' -f1-3 /proc/loadavg))"
}
run grpo --set learner.process_reward=false &
run repro-a0.1 &
wait
run repro-a0.3 --set learner.alpha=0.3 &
run lp-0.5 --set learner.process_reward=false --set learner.length_penalty=0.5 &
wait
run lp-0.2 --set learner.process_reward=false --set learner.length_penalty=0.2 &
run lp-0.1 --set learner.process_reward=false --set learner.length_penalty=0.1 &
wait
"$CLI" plot "$OUT"/grpo "$OUT"/repro-a0.1 "$OUT"/repro-a0.3 "$OUT"/lp-0.1 "$OUT"/lp-0.2 "$OUT"/lp-0.5 --out "$OUT"
