#!/usr/bin/env bash
# Set up, then run the demo on the embedded defaults (the shipped guideline library).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vejviser demo "$@"
