#!/usr/bin/env bash
# A development view of the Python package from a plain CMake build (no pip): symlinks
# to python/sparseforge/*.py plus the built _core module under <build>/pkg/sparseforge.
#   cmake -S . -B build/mine -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSF_BUILD_PYTHON=ON
#   cmake --build build/mine --target _core
#   tools/devpkg.sh build/mine          # prints the PYTHONPATH to use
#   PYTHONPATH=build/mine/pkg python -m pytest tests_py/test_x.py
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:?usage: tools/devpkg.sh <build dir>}"
so=$(find "$build/python" -maxdepth 2 -name '_core*.so' | head -1)
[ -n "$so" ] || { echo "devpkg: no _core*.so under $build/python (build the _core target)" >&2; exit 1; }
pkg="$build/pkg/sparseforge"
mkdir -p "$pkg"
find "$pkg" -maxdepth 1 -type l -delete
for f in python/sparseforge/*; do ln -s "$PWD/$f" "$pkg/$(basename "$f")"; done
rm -f "$pkg/$(basename "$so")"; ln -s "$PWD/$so" "$pkg/$(basename "$so")"
echo "$PWD/$build/pkg"
