#!/usr/bin/env bash
# The embedded default end to end, no download: train a tiny CoAtNet on scikit-learn's digits keeping the top-3
# checkpoints per metric, cook uniform / greedy / pruned soups beside soft voting, then analyse why.
#   bash scripts/demo.sh [RUN_DIR]        (default runs/demo in the repository; it must not exist yet)
set -euo pipefail
# A RUN_DIR given relative to where the command was typed stays there (and so do the messages that name it).
[[ $# -gt 0 ]] && run_dir=$(realpath -m -- "$1")
cd "$(dirname "$0")/.."
run_dir="${run_dir:-runs/demo}"
python=.venv/bin/python
[[ -x "$python" ]] || python=python3
"$python" -m ich_keras.fit --config configs/demo.toml --workdir "$run_dir"
"$python" -m ich_keras.soup "$run_dir" --uniform --greedy --pruned --soft-voting
"$python" -m ich_keras.analyze "$run_dir" --split test
echo "Done: $run_dir/soups/*/results.md and $run_dir/analysis/report.md"
