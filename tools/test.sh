#!/usr/bin/env bash
# Every test: GoogleTest through ctest (dev preset), then pytest against the installed
# package. Run tools/setup.sh --test first (the README's test command does both).
set -euo pipefail
cd "$(dirname "$0")/.."

cmake --preset dev
cmake --build --preset dev
ctest --preset dev

# pytest exits 5 when it collects nothing: with `set -e` that fails the run, as it should.
python3 -m pytest tests_py
