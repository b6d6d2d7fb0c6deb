#!/usr/bin/env bash
# Offline lint with locally installed tools (no pre-commit downloads):
#   pip install ruff clang-format mypy
# C++ formatting (clang-format), Python lint + format (ruff), facade types (mypy --strict).
set -euo pipefail
cd "$(dirname "$0")/.."

status=0
cxx_files=$(git ls-files '*.h' '*.cc' '*.inc')
if command -v clang-format >/dev/null; then
  clang-format --dry-run -Werror $cxx_files || status=1
else
  echo "lint: clang-format not installed"; status=1
fi
if command -v ruff >/dev/null; then
  ruff check python tests_py bench examples || status=1
  ruff format --check python tests_py bench examples || status=1
else
  echo "lint: ruff not installed"; status=1
fi
if python -c "import mypy" 2>/dev/null; then
  python -m mypy || status=1
else
  echo "lint: mypy not installed"; status=1
fi
exit $status
