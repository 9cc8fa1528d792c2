#!/usr/bin/env bash
# Set up, then run every check CI runs: lint, format, the guideline check and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/vejviser guidelines check guidelines/
.venv/bin/vejviser guidelines docs --check
# Tests on ../shared/data (Synthea) fail instead of skipping when it is missing.
export VEJVISER_REQUIRE_SHARED_DATA="${VEJVISER_REQUIRE_SHARED_DATA:-1}"
status=0
# The whole suite: the slow-marked suites too (plain `pytest` skips them for a fast loop).
.venv/bin/pytest -m "slow or not slow" "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure, not a pass" >&2
  exit 1
fi
exit "$status"
