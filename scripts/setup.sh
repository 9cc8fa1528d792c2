#!/usr/bin/env bash
# Create .venv (if missing) and install Vejviser with its development tools into it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,spark]'
# A real FHIR server for the tests (sekmet-fhir), in its own venv so its dependencies stay apart.
if [ ! -x .venv-fhir/bin/sekmet ]; then
  python3 -m venv .venv-fhir
  .venv-fhir/bin/python -m pip install --quiet --disable-pip-version-check sekmet-fhir==0.1.1
fi
