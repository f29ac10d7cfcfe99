#!/usr/bin/env bash
# GPU acceptance in one command: scripts/gpu_acceptance.sh DATA_ARCHIVE OUT_DIR [options]
# (see scripts/gpu_acceptance.py --help). Runs from a source checkout with PYTHONPATH=src.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" "$here/scripts/gpu_acceptance.py" "$@"
