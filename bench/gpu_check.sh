#!/usr/bin/env bash
# One GPU run that measures what the GPU training and decoding paths claim (bench/gpu_check.py)
# and writes one JSON: $OUT/gpu_check.json on the device machine, else bench-work/.
#   bash bench/gpu_check.sh             # on a GPU machine, ~8 minutes
#   bash bench/gpu_check.sh --dry-run   # the same script on a CPU, small sizes
# Python packages the machine lacks (ctranslate2) can come as wheels in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
out_dir=${OUT:-bench-work}
mkdir -p "$out_dir"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
python3 bench/gpu_check.py --out "$out_dir/gpu_check.json" "$@"
