#!/usr/bin/env bash
# Creates .venv in the repository root and installs ich_keras into it.
#   bash scripts/setup.sh          the toolkit (keras, jax, keras-hub, ...)
#   bash scripts/setup.sh --dev    plus the tests' tools: pytest, ruff, the converter's (safetensors, torch, timm),
#                                  the export runtimes (jax2onnx, onnx, onnxruntime) and the data/logging routes
#                                  (tensorflow-datasets, tensorboard, wandb)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [[ "${1:-}" == "--dev" ]]; then
  # torchvision (imported by timm) must match torch exactly; pin the pair, then everything else.
  .venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
  .venv/bin/python -m pip install --quiet -e ".[convert,export,tfds,tensorboard,wandb,dev]"
else
  .venv/bin/python -m pip install --quiet -e .
fi
