#!/usr/bin/env bash
# Every GPU figure of issue 5 in one go on one H100/H200 (about 4 min); see run.py for the checks.
#
#   bash benchmarks/gpu/run.sh             # on the lent GPU machine: writes $OUT/gpu_results.json
#   bash benchmarks/gpu/run.sh --dry-run   # CPU, tiny models, < 1 min (tests/benchmarks runs it)
#
# A GPU machine whose Python has CUDA torch but neither Ray nor Optuna, and no package index: bring
# their wheels in .whl/ (`pip download 'ray[default,tune,train]' optuna -d .whl` elsewhere, for the
# machine's Python version); this script installs them into .site/. wandb is not needed.
# PYTHON picks the interpreter (default python3, the one with CUDA torch there).
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Only where Ray or Optuna is missing (the GPU image): a machine with them keeps its own.
if ! "$PYTHON" -c "import ray, optuna" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target .site .whl/*.whl
  export PYTHONPATH="$PWD/.site:$PYTHONPATH"
fi
if ! "$PYTHON" -c "import optuna" 2>/dev/null; then
  echo "Optuna is missing (tlsearch's training loop imports it): install Ray and Optuna, or put their wheels in .whl/ (pip download 'ray[default,tune,train]' optuna -d .whl)" >&2
  exit 2
fi
export WANDB_MODE=disabled HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
exec "$PYTHON" benchmarks/gpu/run.py "$@"
