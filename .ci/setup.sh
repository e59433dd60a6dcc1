#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install dcn-explore into it.
#   bash .ci/setup.sh            -> core package (enough for `dcn-explore quickstart`)
#   bash .ci/setup.sh notebooks  -> + JupyterLab, ipywidgets, papermill
#   bash .ci/setup.sh test       -> + pytest, nbval, Playwright and Debian's chromium for the browser test
# Environment: DCNX_VENV (default .venv), PYTHON (default python3), DCNX_TORCH (the torch requirement used
# when no torch is installed and no GPU is visible; default torch==2.13.0, the CPU build on these machines).
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
VENV="${DCNX_VENV:-.venv}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV with $($PY --version 2>&1)"
  "$PY" -m venv "$VENV"
fi
pip_install() { "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@"; }
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing torch with CUDA from the default index"
    pip_install "torch>=2.4"
  else
    echo "[setup] no GPU: installing ${DCNX_TORCH:-torch==2.13.0} (CPU) first"
    pip_install "${DCNX_TORCH:-torch==2.13.0}"
  fi
fi
spec="."
[ -n "$extra" ] && spec=".[$extra]"
echo "[setup] installing dcn-explore$([ -n "$extra" ] && echo "[$extra]") (editable)"
pip_install -e "$spec"
if [ "$extra" = "test" ] && [ ! -x /usr/bin/chromium ]; then
  echo "[setup] installing Debian chromium for the browser test"
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver >/dev/null; }; then
    echo "[setup] WARNING: could not install chromium; the browser test will fail under CI=true and skip otherwise" >&2
  fi
fi
if [ "$extra" = "test" ] || [ "$extra" = "notebooks" ]; then
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
fi
echo "[setup] ready: $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'))"
