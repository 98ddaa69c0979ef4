#!/usr/bin/env bash
# The paper's protocol on real heritage photos (../shared/data/ahe64), at a scale a shared 2-core CPU finishes in
# about 15 minutes (802 s measured; docs/reproduction.md). From the repository root:
#
#   scripts/reproduce_ahe64.sh                 # -> runs/ahe64_repro/{scratch,pretrain,finetune}, timings.txt
#   EPOCHS=30 PER_CLASS=0 scripts/reproduce_ahe64.sh      # the full-data version (hours on CPU)
#
# (a) From scratch (the paper's Table VII setting): coatnet_tiny at 64 px on all 10 classes, top-K checkpoints per
#     val metric (loss, accuracy, F1), then uniform / greedy / pruned soups, soft voting and the analysis
#     (MDS of cross-entropy distances, bias-variance, per-class table: scratch/analysis/report.md).
# (b) Transfer with a new head (a real W0 -> W1 pair, as in the paper: W0 and W1 differ in their heads): pretrain
#     on six classes, fine-tune on the other four from the pretrained weights (W0 = the pretraining run's best
#     val-accuracy checkpoint, its 6-class head replaced by a fresh 4-class one), then the same soups, MonoSoup of
#     the best fine-tuned checkpoint W1 against W0, WiSE-FT curves W0 -> W1 and W0 -> each soup, and the analysis
#     (with CKA). The two datasets are symlink trees under $OUT/views (no image is copied).
#
# Scale knobs (environment variables; the defaults are what docs/reproduction.md reports):
#   PER_CLASS        images per class kept in every split before the val carve (data.max_per_class; 0 = all)  [500]
#   EPOCHS           epochs from scratch                                                                     [12]
#   PRETRAIN_EPOCHS  epochs of six-class pretraining                                                         [12]
#   FINETUNE_EPOCHS  epochs of four-class fine-tuning                                                        [10]
#   TOP_K            checkpoints kept per val metric                                                         [8]
#   MODEL            model.name                                                                              [coatnet_tiny]
#   DATA             the ImageFolder dataset                                                 [../shared/data/ahe64]
#   OUT              output root (git-ignored under runs/)                                     [runs/ahe64_repro]
#   PRETRAIN_CLASSES space-separated pretraining classes; the rest are fine-tuned on
#                    [altar bell_tower dome_inner flying_buttress stained_glass vault]
#   SCRATCH          1 runs (a); 0 runs only the transfer protocol (b)                                       [1]
#   NICE             niceness of every step (the machine is shared)                                          [5]
#   PYTHON           interpreter                                                  [.venv/bin/python if present]
# Steps whose outputs exist are not redone (delete $OUT, or one run directory, to redo them).
set -euo pipefail

cd "$(dirname "$0")/.."
PER_CLASS=${PER_CLASS:-500}
EPOCHS=${EPOCHS:-12}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-12}
FINETUNE_EPOCHS=${FINETUNE_EPOCHS:-10}
TOP_K=${TOP_K:-8}
MODEL=${MODEL:-coatnet_tiny}
DATA=${DATA:-../shared/data/ahe64}
OUT=${OUT:-runs/ahe64_repro}
PRETRAIN_CLASSES=${PRETRAIN_CLASSES:-altar bell_tower dome_inner flying_buttress stained_glass vault}
SCRATCH_RUN=${SCRATCH:-1}
NICE=${NICE:-5}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

CONFIG=configs/ahe64_cpu.toml
KEEP="checkpoint.keep=[{metric=\"loss\",mode=\"min\",k=$TOP_K},{metric=\"accuracy\",mode=\"max\",k=$TOP_K},{metric=\"f1\",mode=\"max\",k=$TOP_K}]"
SOUPS=(--uniform --greedy --pruned --soft-voting --quiet)
ALPHAS=(0 0.2 0.4 0.6 0.8 1.0)
mkdir -p "$OUT/logs"
TIMINGS="$OUT/timings.txt"
START=$(date +%s)
echo "# $(date -Is) PER_CLASS=$PER_CLASS EPOCHS=$EPOCHS PRETRAIN_EPOCHS=$PRETRAIN_EPOCHS" \
     "FINETUNE_EPOCHS=$FINETUNE_EPOCHS TOP_K=$TOP_K MODEL=$MODEL nproc=$(nproc)" >> "$TIMINGS"

# step NAME DONE_FILE CMD...: runs CMD under nice unless DONE_FILE exists; logs to $OUT/logs/NAME.log.
step() {
  local name=$1 done_file=$2
  shift 2
  if [[ -e "$done_file" ]]; then
    echo "== $name: done already ($done_file)"
    return
  fi
  echo "== $name: $*"
  local t0
  t0=$(date +%s)
  nice -n "$NICE" "$@" 2>&1 | grep --line-buffered -v -e '^I0000' -e '^WARNING: All log' -e '^E0000.*cuInit' \
    | tee "$OUT/logs/$name.log"
  echo "$name $(( $(date +%s) - t0 )) s" | tee -a "$TIMINGS"
}

# The lr restarts once halfway through the epochs after warmup, so the kept checkpoints come from two cosine
# periods (the paper's source of diverse ingredients); restart_epochs is a float.
restart() { "$PYTHON" -c "print(max(1.0, ($1 - $2) / 2))"; }  # restart EPOCHS WARMUP

fit() {  # fit RUN_DIR EPOCHS WARMUP_EPOCHS SOURCE [--set ...]
  local dir=$1 epochs=$2 warmup=$3 source=$4
  shift 4
  step "fit_$(basename "$dir")" "$dir/results.json" "$PYTHON" -m ich_keras.fit --config "$CONFIG" --workdir "$dir" \
    --set "data.source=\"$source\"" --set "data.max_per_class=$PER_CLASS" --set "model.name=$MODEL" \
    --set "train.epochs=$epochs" --set "train.warmup_epochs=$warmup" \
    --set "train.restart_epochs=$(restart "$epochs" "$warmup")" --set "$KEEP" "$@"
}

# ---- (a) from scratch, 10 classes ------------------------------------------------------------------------------
SCRATCH=$OUT/scratch
if [[ $SCRATCH_RUN == 1 ]]; then
  fit "$SCRATCH" "$EPOCHS" 1 "$DATA"
  step soup_scratch "$SCRATCH/soups/pruned/results.json" "$PYTHON" -m ich_keras.soup "$SCRATCH" "${SOUPS[@]}"
  step analyze_scratch "$SCRATCH/analysis/report.md" "$PYTHON" -m ich_keras.analyze "$SCRATCH" --quiet
fi

# ---- (b) transfer: six classes -> the other four, a new head -----------------------------------------------------------
# ImageFolder views as symlink trees: views/<part>/<split>/<class> -> DATA/<split>/<class>.
VIEWS=$OUT/views
DATA_ABS=$(cd "$DATA" && pwd)
read -r -a PRE <<< "$PRETRAIN_CLASSES"
for split_dir in "$DATA_ABS"/*/; do
  split=$(basename "$split_dir")
  for class_dir in "$split_dir"*/; do
    class=$(basename "$class_dir")
    part=finetune
    for c in "${PRE[@]}"; do [[ $c == "$class" ]] && part=pretrain; done
    mkdir -p "$VIEWS/$part/$split"
    ln -sfn "${class_dir%/}" "$VIEWS/$part/$split/$class"
  done
done
for c in "${PRE[@]}"; do
  [[ -d "$DATA_ABS/train/$c" ]] || { echo "PRETRAIN_CLASSES: no class $c in $DATA_ABS/train" >&2; exit 2; }
done

PRETRAIN=$OUT/pretrain
FINETUNE=$OUT/finetune
fit "$PRETRAIN" "$PRETRAIN_EPOCHS" 1 "$VIEWS/pretrain"
# W0: the pretraining run's best checkpoint by val accuracy.
W0=$("$PYTHON" -c "import sys; from ich_keras.rundir import load_run; \
print(load_run(sys.argv[1]).best('accuracy').path)" "$PRETRAIN")
echo "W0 = $W0" | tee -a "$TIMINGS"
# Fine-tuning starts from W0 with a lower peak learning rate and a short warmup (a fresh start uses 2e-3).
fit "$FINETUNE" "$FINETUNE_EPOCHS" 0.5 "$VIEWS/finetune" --set "model.init=\"$W0\"" \
  --set train.learning_rate=5e-4
W1=$("$PYTHON" -c "import sys; from ich_keras.rundir import load_run; \
print(load_run(sys.argv[1]).best('accuracy').path)" "$FINETUNE")
echo "W1 = $W1" | tee -a "$TIMINGS"
# Soups, with WiSE-FT curves W0 -> each soup.
step soup_finetune "$FINETUNE/soups/pruned/results.json" "$PYTHON" -m ich_keras.soup "$FINETUNE" "${SOUPS[@]}" \
  --interpolate --alphas "${ALPHAS[@]}"
# WiSE-FT W0 -> W1 proper: a "uniform soup" of the single best fine-tuned checkpoint is W1 itself.
step wiseft_finetune "$FINETUNE/wiseft_w1/uniform/results.json" "$PYTHON" -m ich_keras.soup "$FINETUNE" \
  --checkpoints "$W1" --uniform --interpolate --alphas "${ALPHAS[@]}" --output "$FINETUNE/wiseft_w1" --quiet
step monosoup_finetune "$FINETUNE/soups/monosoup_variance/results.json" "$PYTHON" -m ich_keras.soup monosoup \
  "$FINETUNE" --pretrained "$W0" --finetuned "$W1" --rule variance --energy 0.9 --quiet
step analyze_finetune "$FINETUNE/analysis/report.md" "$PYTHON" -m ich_keras.analyze "$FINETUNE" --quiet

# ---- summary -------------------------------------------------------------------------------------------------
"$PYTHON" - "$FINETUNE" <<'EOF' > "$OUT/wiseft.md"
import json, sys
from pathlib import Path

run = Path(sys.argv[1])
print("# WiSE-FT: W0 + alpha (W - W0), test accuracy / macro F1 (val accuracy)\n")
curves = {"W1 (best fine-tuned)": run / "wiseft_w1/uniform/results.json"}
curves.update({f"{m} soup": run / f"soups/{m}/results.json" for m in ("uniform", "greedy", "pruned")})
rows = {name: json.loads(p.read_text())["interpolation"] for name, p in curves.items() if p.exists()}
alphas = [point["alpha"] for point in next(iter(rows.values()))]
print("| W | " + " | ".join(f"alpha={a:g}" for a in alphas) + " |")
print("|---|" + "---|" * len(alphas))
for name, points in rows.items():
    cells = [f"{100 * p['test']['accuracy']:.2f} / {100 * p['test']['f1']:.2f} ({100 * p['val']['accuracy']:.2f})"
             for p in points]
    print(f"| {name} | " + " | ".join(cells) + " |")
EOF
echo "total $(( $(date +%s) - START )) s" | tee -a "$TIMINGS"
echo
[[ $SCRATCH_RUN == 1 ]] && cat "$SCRATCH/soups/results.md"
cat "$FINETUNE/soups/results.md" "$FINETUNE/soups/monosoup_variance/results.md" \
  "$OUT/wiseft.md"
echo "Reports: $SCRATCH/analysis/report.md $FINETUNE/analysis/report.md; timings: $TIMINGS"
