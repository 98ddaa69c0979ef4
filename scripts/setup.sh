#!/usr/bin/env bash
# Creates .venv in the repository root and installs ich_keras into it.
#   bash scripts/setup.sh          the toolkit (keras, jax, keras-hub, ...)
#   bash scripts/setup.sh --dev    plus the tests' tools: pytest, ruff, the converter's (safetensors, torch, timm),
#                                  the export runtimes (jax2onnx, onnx, onnxruntime) and the data/logging routes
#                                  (tensorflow-datasets, tensorboard, wandb) and HEIC photos (pillow-heif)
# The wheels (about 9 GB with --dev: torch with its CUDA libraries, TensorFlow, JAX) go in through uv, which
# installs them in parallel; --compile-bytecode writes the .pyc files as pip does, without which a process that
# cannot write them (PYTHONDONTWRITEBYTECODE) compiles every module it imports afresh: `import ich_keras.fit` 15 s
# instead of 5. Measured on a 2-core machine, `time bash scripts/setup.sh --dev`: 250 s with pip, 76 s with uv
# (its cache warm). pip itself stays in the venv, so `.venv/bin/pip install` works as usual. uv reads its own
# settings (UV_DEFAULT_INDEX, uv.toml), not pip.conf: where packages must come through pip's configuration, run
# `INSTALLER=pip bash scripts/setup.sh [--dev]`.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
case "${INSTALLER:-uv}" in
  uv)
    .venv/bin/python -m pip install --quiet --upgrade pip uv
    install() { .venv/bin/python -m uv pip install --quiet --compile-bytecode --python .venv/bin/python "$@"; } ;;
  pip)
    .venv/bin/python -m pip install --quiet --upgrade pip
    install() { .venv/bin/python -m pip install --quiet "$@"; } ;;
  *) echo "error: INSTALLER must be uv (the default) or pip. Received: $INSTALLER" >&2; exit 2 ;;
esac
if [[ "${1:-}" == "--dev" ]]; then
  # torchvision (imported by timm) must match torch exactly; pin the pair, then everything else.
  install "torch==2.14.1" "torchvision==0.29.1"
  install -e ".[convert,export,tfds,tensorboard,wandb,heic,dev]"
else
  install -e .
fi
