#!/usr/bin/env bash
# The paper's real path at the paper's size: a 1000-class coatnet_0_rw_224 -> converted -> fine-tuned at 224 px with
# the configs/coatnet0.toml recipe and a new head -> soups (uniform, greedy, WiSE-FT, MonoSoup against the 1000-class
# W0) -> analysis with CKA -> predict -> ONNX export, loaded with onnxruntime. From the repository root:
#
#   bash scripts/paper_path.sh                                   # random-weight timm W0 (no download), AHE64 slice
#   CHECKPOINT=model.safetensors DATA=data/ich17 PER_CLASS=0 EPOCHS=50 bash scripts/paper_path.sh   # the real run
#
# Only data size and epochs are overridden; everything else is the recipe (batch 16 x 8 accumulation, AdamW,
# restarts, bf16, MixUp/CutMix, top-8 per metric). Knobs (environment variables):
#   CHECKPOINT  timm coatnet_0_rw_224 weights (the Hugging Face repo timm/coatnet_0_rw_224.sw_in1k, file
#               model.safetensors); without it a timm model with random weights stands in (needs torch + timm)
#   DATA        ImageFolder dataset                                              [../shared/data/ahe64]
#   PER_CLASS   images per class in every split (data.max_per_class; 0 = all)    [20: one update of 128 per epoch]
#   EPOCHS      epochs                                                           [2]
#   OUT         output root                                                      [runs/paper_path]
#   PYTHON      interpreter                                                      [.venv/bin/python if present]
# It prints each step's wall time and, at the end, the disk use of the run directory.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/ahe64}
PER_CLASS=${PER_CLASS:-20}
EPOCHS=${EPOCHS:-2}
OUT=${OUT:-runs/paper_path}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
MODEL=coatnet_0_rw_224
RUN=$OUT/run
mkdir -p "$OUT"
START=$(date +%s)

source scripts/step.sh  # step NAME CMD...: runs CMD and prints its wall time

if [[ -z "${CHECKPOINT:-}" ]]; then
  CHECKPOINT=$OUT/timm_random_$MODEL.safetensors
  step "timm W0 with random weights" "$PYTHON" -c "
import sys, safetensors.numpy
from ich_keras import parity
safetensors.numpy.save_file(parity.random_state_dict(parity.timm_model('$MODEL', 1000, 224)), sys.argv[1])
" "$CHECKPOINT"
fi
W0=$OUT/$MODEL.weights.h5
step convert "$PYTHON" -m ich_keras.convert --model "$MODEL" --checkpoint "$CHECKPOINT" --output "$W0"

step fit "$PYTHON" -m ich_keras.fit --config configs/coatnet0.toml --workdir "$RUN" \
  --set "data.source=\"$DATA\"" --set "data.max_per_class=$PER_CLASS" --set "train.epochs=$EPOCHS" \
  --set "model.init=\"$W0\""
step soups "$PYTHON" -m ich_keras.soup "$RUN" --uniform --greedy --interpolate --quiet
W1=$("$PYTHON" -c "import sys; from ich_keras.rundir import load_run; \
print(load_run(sys.argv[1]).best('accuracy').path)" "$RUN")
step monosoup "$PYTHON" -m ich_keras.soup monosoup "$RUN" --pretrained "$W0" --finetuned "$W1" --quiet
step analyze "$PYTHON" -m ich_keras.analyze "$RUN" --cka-examples 64 --quiet
step predict "$PYTHON" -m ich_keras.predict "$RUN" "$DATA/test" --weights soups/uniform/soup.weights.h5 \
  --output "$OUT/predictions.csv" --quiet
step export "$PYTHON" -m ich_keras.export "$RUN" --weights soups/uniform/soup.weights.h5 --format onnx \
  --output "$OUT/uniform.onnx" --overwrite
step "load the export" "$PYTHON" -c "import sys, numpy as np; from ich_keras.export import load_exported; \
print('onnxruntime:', load_exported(sys.argv[1], 'onnx')(np.zeros((1, 224, 224, 3), np.uint8)).shape)" \
  "$OUT/uniform.onnx"

echo "total $(( $(date +%s) - START )) s"
# One du each: given several folders, du counts a file once, so a folder inside another would show nothing.
for part in "$RUN" "$RUN/checkpoints" "$RUN/state" "$RUN/soups"; do du -sh "$part"; done
ls -l "$RUN/checkpoints" "$W0"
