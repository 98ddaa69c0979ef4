#!/usr/bin/env bash
# The embedded default end to end, no download: train a tiny CoAtNet on scikit-learn's digits keeping the top-3
# checkpoints per metric, cook uniform / greedy / pruned soups beside soft voting, then analyse why.
#   bash scripts/demo.sh [RUN_DIR]        (default runs/demo; it must not exist yet)
set -euo pipefail
cd "$(dirname "$0")/.."
run_dir="${1:-runs/demo}"
python=.venv/bin/python
[[ -x "$python" ]] || python=python3
"$python" -m ich_keras.fit --config configs/demo.toml --workdir "$run_dir"
"$python" -m ich_keras.soup "$run_dir" --uniform --greedy --pruned --soft-voting
"$python" -m ich_keras.analyze "$run_dir" --split test
echo "Done: $run_dir/soups/*/results.md and $run_dir/analysis/report.md"
