#!/usr/bin/env bash
# One command that proves the GPU path on one H100/H200 in <= 8 minutes and writes $OUT/gpu_report.md
# (./gpu_report.md when OUT is unset): parity of every model against timm in float32; bf16 training images/s and MFU
# of coatnet_0 and coatnet_2 at 224 px against timm eager and torch.compile; first-step latency; the real path
# (convert -> fit -> soup -> analyze -> export) at 224 px; a uniform soup of 8 coatnet_2 checkpoints.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine; installs what is missing (below) first
#   bash benchmarks/gpu_check.sh --dry-run   # the same code on the CPU at tiny sizes; installs nothing (CI runs it)
#   bash benchmarks/gpu_check.sh --only parity soup   # some sections (names: python benchmarks/gpu_check.py --help)
#
# Exit status: 0 when every correctness check passed (parity, each step of the real path, the soup), 1 when one
# failed or none ran, 2 for a wrong argument or no GPU. The speed targets (coatnet_2 bf16 training >= 1.2x torch.compile and
# >= 35 % MFU) are reported met / not met, never enforced. The report is rewritten after each section, so that a run
# cut short keeps what it measured. What each section does: benchmarks/gpu_check.py.
# Installed into the interpreter's environment when missing (real run only): ich_keras itself, the cuda extra
# (jax[cuda12]), the convert extra (safetensors, torch, timm), and a CUDA build of torch and torchvision (the
# versions already there, from PyPI, whose Linux wheels are CUDA builds, or from TORCH_INDEX_URL).
# Knobs (environment variables): OUT (folder of the report), PYTHON (interpreter; .venv/bin/python if present),
# TORCH_INDEX_URL.
set -euo pipefail
DRY_RUN=0
ARGS=()  # the rest goes to gpu_check.py, which checks it (--only SECTION...)
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done
REPORT="$(realpath -m "${OUT:-.}")/gpu_report.md"  # resolved before the cd below: ./ is the caller's folder
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON="$PWD/.venv/bin/python"; else PYTHON=python3; fi
fi

missing() {  # missing CODE: true when the interpreter cannot run CODE without an error
  # From / : here the repository's own folder would make `import ich_keras` work uninstalled.
  ! (cd / && "$PYTHON" -c "$1" >/dev/null 2>&1)
}

version_of() {  # version_of PACKAGE: its installed version without the local label (2.14.1+cpu -> 2.14.1)
  "$PYTHON" -c "import importlib.metadata as m; print(m.version('$1').split('+')[0])" 2>/dev/null || true
}

install_missing() {
  if missing "import ich_keras, keras_hub, tensorflow"; then  # the package and its own dependencies
    echo "== installing ich_keras"
    "$PYTHON" -m pip install -e .
  fi
  if missing "import jax, sys; sys.exit(jax.default_backend() != 'gpu')"; then
    echo "== installing the cuda extra"
    "$PYTHON" -m pip install -e '.[cuda]'
  fi
  if missing "import safetensors, timm, sys; sys.exit(not timm.is_model('test_coatnet'))"; then  # timm >= 1.0.31
    echo "== installing the convert extra"
    "$PYTHON" -m pip install -e '.[convert]'
  fi
  if missing "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "== installing a CUDA build of torch"
    local torch_version vision_version
    torch_version=$(version_of torch)
    vision_version=$(version_of torchvision)
    "$PYTHON" -m pip uninstall -y torch torchvision
    "$PYTHON" -m pip install ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} \
      "torch${torch_version:+==$torch_version}" "torchvision${vision_version:+==$vision_version}"
  fi
}

# The real path's commands run in processes of their own beside the check's: none may take most of the GPU's
# memory up front, as JAX does by default.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
FLAGS=()
if (( DRY_RUN )); then
  export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""
  FLAGS+=(--dry-run)
else
  install_missing
fi
status=0
"$PYTHON" benchmarks/gpu_check.py "${FLAGS[@]}" "${ARGS[@]}" --report "$REPORT" || status=$?
echo "report: $REPORT; wall time ${SECONDS} s"
exit "$status"
