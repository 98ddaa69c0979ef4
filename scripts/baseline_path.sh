#!/usr/bin/env bash
# The real path for a baseline: a 1000-class timm ResNet-50, DenseNet-121 or ViT-B/16 -> converted (checked against
# timm) -> fine-tuned with a new head on AHE64 from another working directory -> run moved -> soups (uniform,
# greedy) -> the uniform soup as the next init (four of the classes, 32 px larger: a new head, resized position
# tables) -> analysis with CKA per block -> predict -> SavedModel export.
# From the repository root:
#
#   bash scripts/baseline_path.sh                        # resnet50 at 64 px, random-weight timm W0 (no download)
#   MODEL=vit_base_patch16_224 CONFIG=configs/vit_b16.toml bash scripts/baseline_path.sh
#
# Knobs (environment variables):
#   MODEL       resnet50, densenet121 or vit_base_patch16_224                    [resnet50]
#   CONFIG      the training recipe                                              [configs/$MODEL.toml]
#   CHECKPOINT  timm weights of MODEL; without it timm's random init stands in (needs torch + timm)
#   SIZE        image size (ViT's position embedding is resampled to it)       [64]
#   DATA        ImageFolder dataset                                              [../shared/data/ahe64]
#   OUT         output root                                                      [runs/baseline_path]
#   PYTHON      interpreter                                                      [.venv/bin/python if present]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MODEL=${MODEL:-resnet50}
CONFIG=$ROOT/${CONFIG:-configs/$MODEL.toml}
SIZE=${SIZE:-64}
DATA=$(cd "${DATA:-../shared/data/ahe64}" && pwd)
OUT=$ROOT/${OUT:-runs/baseline_path}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi
rm -rf "$OUT"
mkdir -p "$OUT/fit" "$OUT/moved" "$OUT/elsewhere"
SHORT=(--set data.source="$DATA" --set data.image_size="$SIZE" --set data.max_per_class=12
       --set train.batch_size=8 --set train.grad_accum_steps=1 --set train.precision=float32)

source scripts/step.sh  # step NAME CMD...: runs CMD and prints its wall time

if [[ -z "${CHECKPOINT:-}" ]]; then
  CHECKPOINT=$OUT/w0.safetensors
  step "random timm $MODEL" "$PYTHON" -c "
import sys, timm
from safetensors.torch import save_file
model = timm.create_model(sys.argv[1], pretrained=False)
save_file({k: v.contiguous() for k, v in model.state_dict().items()}, sys.argv[2])" "$MODEL" "$CHECKPOINT"
fi
step convert "$PYTHON" -m ich_keras.convert --model "$MODEL" --checkpoint "$CHECKPOINT" --output "$OUT/w0.weights.h5" \
  --image-size "$SIZE" --check
cd "$OUT/fit"
step fit "$PYTHON" -m ich_keras.fit --config "$CONFIG" --workdir run --set model.init="$OUT/w0.weights.h5" \
  "${SHORT[@]}" --set train.epochs=2 --set train.steps_per_epoch=4
mv run "$OUT/moved/run"
cd "$OUT/elsewhere"
step soup "$PYTHON" -m ich_keras.soup ../moved/run --uniform --greedy --quiet
# The next fine-tune starts from the soup on four of the classes (linked class folders) at another image size.
for split in "$DATA"/*/; do
  mkdir -p "$OUT/next_data/$(basename "$split")"
  for class in $(ls "$split" | head -4); do ln -s "$split$class" "$OUT/next_data/$(basename "$split")/$class"; done
done
step "fit from the soup" "$PYTHON" -m ich_keras.fit --config "$CONFIG" --workdir next \
  --set model.init=../moved/run/soups/uniform/soup.weights.h5 "${SHORT[@]}" --set data.source="$OUT/next_data" \
  --set data.image_size=$((SIZE + 32)) --set train.epochs=1 --set train.steps_per_epoch=2
step analyze "$PYTHON" -m ich_keras.analyze ../moved/run --quiet
FIRST_CLASS=$(ls "$DATA/test" | head -1)
step predict "$PYTHON" -m ich_keras.predict ../moved/run "$DATA/test/$FIRST_CLASS" --quiet --output predictions.csv
step export "$PYTHON" -m ich_keras.export ../moved/run --format savedmodel --output exported
"$PYTHON" -c "import json, sys; cka = json.load(open(sys.argv[1], encoding='utf-8'))
print(f'Linear CKA with W0 on {cka[\"examples\"]} {cka[\"split\"]} images, first / last block:')
for label, row in zip(cka['labels'], cka['cka']):
    print(f'  {label}: {cka[\"blocks\"][0]} {row[0]:.3f} / {cka[\"blocks\"][-1]} {row[-1]:.3f}')" \
  ../moved/run/analysis/cka.json
echo "baseline path of $MODEL done: $OUT"
