#!/usr/bin/env bash
# GPU acceptance in one command (stages, caps and limits: the top of scripts/gpu_acceptance.py):
#   bash scripts/gpu_acceptance.sh --archive .gpu-data/cifar10-jpg.tar.gz --out "$OUT" [--budget-s 540]
#   bash scripts/gpu_acceptance.sh --dry-run --out /tmp/gpu-dry      # CPU, tiny, same code paths
# Runs from a source checkout with PYTHONPATH=src (no install, no network, no gradio needed).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" "$here/scripts/gpu_acceptance.py" "$@"
