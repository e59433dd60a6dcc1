#!/usr/bin/env bash
# Build benchmarks/.peers-venv: torch + the peer DCN-V2 libraries + dcn-explore, in ONE
# environment, so that benchmarks/movielens_quality.py can run ours and theirs in one process.
#
# This venv is git-ignored and never a project dependency. Facts followed (see shared/PEERS.md):
# - torch==2.13.0 (CPU build) goes in first; every torch-dependent peer is installed with
#   --no-deps and a pinned version, then its light dependencies by hand (otherwise pip may pull
#   a multi-GB CUDA torch);
# - deepctr-torch 0.3.0 imports `requests` (undeclared) and scikit-learn;
# - fuxictr 2.3.10 imports polars and ray at import time (polars, pyarrow, ray[data], pydantic);
# - torchrec 1.9.2 declares fbgemm-gpu (CUDA): install fbgemm-gpu-cpu==1.8.0 instead (1.9.0
#   fails to load against torch 2.13), plus tensordict, torchmetrics, lightning-utilities,
#   pyre-extensions.
#
# Usage: bash benchmarks/peers/setup.sh            (from anywhere; idempotent)
#        PYTHON=python3.11 bash benchmarks/peers/setup.sh
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
VENV="$REPO/benchmarks/.peers-venv"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

"${PIP[@]}" --upgrade pip setuptools wheel
# 1. torch first: the CPU build (a local wheel when the machine has one, else PyTorch's CPU index)
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')" 2>/dev/null; then
  "${PIP[@]}" "torch==2.13.0" || "${PIP[@]}" "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
fi

# 2. peers, pinned, without their declared dependencies
"${PIP[@]}" --no-deps "deepctr-torch==0.3.0" "fuxictr==2.3.10" "torchrec==1.9.2" "fbgemm-gpu-cpu==1.8.0"

# 3. their light dependencies, by hand
"${PIP[@]}" \
  numpy pandas scikit-learn scipy tqdm requests h5py pyyaml \
  polars pyarrow "ray[data]" pydantic \
  tensordict torchmetrics lightning-utilities pyre-extensions iopath

# 4. dcn-explore itself (editable, no deps) and its light dependencies
"${PIP[@]}" -e "$REPO" --no-deps
"${PIP[@]}" pandas plotly tqdm torchmetrics pooch

# 5. torch must still be the CPU 2.13.0 build, and everything must import
"$VENV/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), torch.__version__
import deepctr_torch, fuxictr, torchrec, dcn_explore  # noqa: F401
from deepctr_torch.models import DCN, DCNMix  # noqa: F401
from fuxictr.pytorch.layers import CrossNetV2, CrossNetMix, MLP_Block, FeatureEmbedding  # noqa: F401
from torchrec.modules.crossnet import CrossNet, LowRankCrossNet, LowRankMixtureCrossNet  # noqa: F401
from importlib.metadata import version
print("peers venv ready:", {p: version(p) for p in ("torch", "deepctr-torch", "fuxictr", "torchrec", "fbgemm-gpu-cpu", "dcn-explore")})
PY
