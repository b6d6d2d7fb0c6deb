#!/usr/bin/env bash
# Every test: GoogleTest through ctest (dev preset), then pytest against the package installed
# in the virtual environment. Run tools/setup.sh --test first (the README's test command does
# both).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SF_VENV:-.venv}"
# shellcheck disable=SC1091
. "$venv/bin/activate"

cmake --preset dev
cmake --build --preset dev
ctest --preset dev

# pytest exits 5 when it collects nothing: with `set -e` that fails the run, as it should.
python -m pytest tests_py
