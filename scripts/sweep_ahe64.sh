#!/usr/bin/env bash
# Model soups the way the original protocol gets its gains: several fine-tunes of one pretrained W0 with different
# hyperparameters, then every merging method across them (docs/reproduction.md, section (d)). From the repository
# root:
#
#   scripts/sweep_ahe64.sh          # -> runs/ahe64_sweep/{learning_rate=...,seed=...}/, soups/, timings.txt
#
# W0 and the four-class fine-tuning data come from the transfer protocol of scripts/reproduce_ahe64.sh
# (section (c)): if $TRANSFER has no pretraining run yet, that script runs first with SCRATCH=0.
# Every point fine-tunes coatnet_tiny from W0 exactly as section (c) does (a new 4-class head, 10 epochs, top-8
# checkpoints per val metric); the grid varies the peak learning rate and the seed (data order, augmentation);
# every point's new head starts from one draw (HEAD_SEED), as model soups need.
#
# Knobs (environment variables):
#   TRANSFER  the transfer protocol's output root                                          [runs/ahe64_transfer]
#   OUT       the sweep directory                                                          [runs/ahe64_sweep]
#   LRS       TOML list of peak learning rates                                                  [[5e-4,2e-4]]
#   SEEDS     TOML list of seeds                                                                      [[0,1]]
#   HEAD_SEED the new 4-class head's seed, one head for every point (model.head_seed)                       [0]
#   EPOCHS    fine-tuning epochs per point                                                                 [10]
#   TOP_K     checkpoints kept per val metric                                                               [8]
#   NICE      niceness of every step                                                                        [5]
# Steps whose outputs exist are not redone; the sweep itself skips finished points and resumes killed ones.
set -euo pipefail

cd "$(dirname "$0")/.."
TRANSFER=${TRANSFER:-runs/ahe64_transfer}
OUT=${OUT:-runs/ahe64_sweep}
LRS=${LRS:-[5e-4,2e-4]}
SEEDS=${SEEDS:-[0,1]}
HEAD_SEED=${HEAD_SEED:-0}
EPOCHS=${EPOCHS:-10}
TOP_K=${TOP_K:-8}
NICE=${NICE:-5}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

if [[ ! -e "$TRANSFER/pretrain/results.json" ]]; then
  SCRATCH=0 OUT=$TRANSFER NICE=$NICE PYTHON=$PYTHON scripts/reproduce_ahe64.sh
fi
W0=$("$PYTHON" -c "import sys; from ich_keras.rundir import load_run; \
print(load_run(sys.argv[1]).best('accuracy').path.resolve())" "$TRANSFER/pretrain")
DATA=$(cd "$TRANSFER/views/finetune" && pwd)

mkdir -p "$OUT/logs"
TIMINGS="$OUT/timings.txt"
echo "# $(date -Is) LRS=$LRS SEEDS=$SEEDS HEAD_SEED=$HEAD_SEED EPOCHS=$EPOCHS TOP_K=$TOP_K nproc=$(nproc) W0=$W0" >> "$TIMINGS"
quiet_logs() { grep --line-buffered -v -e '^I0000' -e '^WARNING: All log' -e '^E0000.*cuInit'; }
timed() {  # timed NAME CMD...: runs CMD under nice, logs to $OUT/logs/NAME.log, appends its wall time
  local name=$1 t0
  shift
  t0=$(date +%s)
  nice -n "$NICE" "$@" 2>&1 | quiet_logs | tee "$OUT/logs/$name.log"
  echo "$name $(( $(date +%s) - t0 )) s" | tee -a "$TIMINGS"
}

KEEP="checkpoint.keep=[{metric=\"loss\",mode=\"min\",k=$TOP_K},{metric=\"accuracy\",mode=\"max\",k=$TOP_K},{metric=\"f1\",mode=\"max\",k=$TOP_K}]"
restart=$("$PYTHON" -c "print(max(1.0, ($EPOCHS - 0.5) / 2))")
timed sweep "$PYTHON" -m ich_keras.sweep --config configs/ahe64_cpu.toml --output "$OUT" --no-soup --quiet \
  --grid "train.learning_rate=$LRS" --grid "train.seed=$SEEDS" \
  --set "data.source=\"$DATA\"" --set data.max_per_class=500 --set "model.init=\"$W0\"" \
  --set "model.head_seed=$HEAD_SEED" --set "train.epochs=$EPOCHS" --set train.warmup_epochs=0.5 --set "train.restart_epochs=$restart" --set "$KEEP"

# Every method over every kept checkpoint of every point, against the best single one.
RUNS=$("$PYTHON" -c "import json, sys; \
print(' '.join(sys.argv[2] + '/' + p['directory'] for p in json.load(open(sys.argv[1], encoding='utf-8'))['points']))" \
  "$OUT/sweep.json" "$OUT")
# shellcheck disable=SC2086  # RUNS is a list of directories without spaces (named by their values)
timed soups "$PYTHON" -m ich_keras.soup --runs $RUNS --pretrained "$W0" --quiet \
  --uniform --greedy --pruned --learned --model-stock --task-arithmetic --ties --dare --slerp --soft-voting
# MonoSoup of the best single fine-tune (on val accuracy, across the points) against W0.
W1=$("$PYTHON" -c "import sys; from ich_keras.rundir import load_run
best = max((load_run(d).best('accuracy') for d in sys.argv[1:]), key=lambda c: (c.val['accuracy'], -c.val['loss']))
print(best.path.resolve())" $RUNS)
echo "W1 = $W1" | tee -a "$TIMINGS"
timed monosoup "$PYTHON" -m ich_keras.soup monosoup "$(dirname "$(dirname "$W1")")" --pretrained "$W0" \
  --finetuned "$W1" --rule variance --energy 0.9 --output "$OUT/soups" --quiet
cat "$OUT/soups/results.md" "$OUT/soups/monosoup_variance/results.md"
