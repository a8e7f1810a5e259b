#!/bin/sh
# The image's install, step by step: run by the Dockerfile (as `install.sh /src /opt/rlscale`) and by
# tests/test_dockerfile.py (into a temporary directory), so CI checks the steps the image takes.
#   1. build rlscale's wheel from SRC (no dependencies: they come from the index in step 3);
#   2. a fresh venv at VENV;
#   3. torch as TORCH_INSTALL says (pip install arguments), when set (the Dockerfile: torch from PyTorch's
#      CPU-only index; a plain install gets
#      the CUDA build on Linux x86_64, gigabytes the controller never uses), then the wheel with the kubernetes extra;
#   4. pip and wheel out of the venv: nothing in the image installs or builds packages (setuptools stays:
#      tensorboard imports it at run time).
# PYTHON (default python3) is the interpreter of the venv.
set -eu
src=$1
venv=$2
python=${PYTHON:-python3}
wheels=$(mktemp -d)
"$python" -m pip wheel --no-cache-dir --no-deps --wheel-dir "$wheels" "$src"
"$python" -m venv "$venv"
if [ -n "${TORCH_INSTALL:-}" ]; then
  # shellcheck disable=SC2086 # several pip arguments in one variable
  "$venv/bin/python" -m pip install --no-cache-dir $TORCH_INSTALL
fi
"$venv/bin/python" -m pip install --no-cache-dir "$(ls "$wheels"/rlscale-*.whl)[kubernetes]"
"$venv/bin/python" -m pip uninstall --yes wheel >/dev/null 2>&1 || true
"$venv/bin/python" -m pip uninstall --yes pip
rm -rf "$wheels"
