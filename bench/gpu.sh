#!/usr/bin/env bash
# tunebot vs the plain HF / peft loop on a lent GPU (issue #20, deliverable 6); see
# bench/gpu_bench.py's docstring for what is measured.
#
#   bash bench/gpu.sh                       # on the GPU machine: bench/results-gpu.json
#   bash bench/gpu.sh --device cpu --quick  # here: the same code on a 2-layer model, < 30 s
#
# Self-contained: the GPU machine's own python3 (torch, transformers, peft are there; no
# network, no celery / trl / pydantic needed). If a folder .whl/ travels with the tree (see
# /work/.library/device/README.md), its wheels are installed first into a scratch site folder.
# Bounded: the Python part is killed after GPU_BENCH_TIMEOUT seconds (default 480, 8 min) and
# adds no model size past its --budget (420 s). With $OUT set (the device tool), the JSON is
# copied there too.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' 2>/dev/null; then
        PY=.venv/bin/python
    else
        PY=python3
    fi
fi
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/tunebot-gpu-site .whl/*.whl
    export PYTHONPATH="/tmp/tunebot-gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
OUTFILE=bench/results-gpu.json
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    [ "${args[$i]}" = "--out" ] && OUTFILE="${args[$((i + 1))]}"
done
timeout "${GPU_BENCH_TIMEOUT:-480}" "$PY" bench/gpu_bench.py "$@"
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp "$OUTFILE" "$OUT/"
fi
