#!/usr/bin/env bash
# Create .venv-xrv: TorchXRayVision beside cxr-triage, for `cxr import torchxrayvision`.
# TorchXRayVision needs torchvision, whose only build here is pinned to another torch than the
# project's (.venv keeps torch 2.13.0 CPU), so it gets its own venv; cxr-triage goes in editable
# with its core dependencies (no torch extras). Idempotent and quick when nothing changed.
# Usage: scripts/bootstrap_xrv.sh   (PYTHON=python3.x to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV=.venv-xrv
TORCH="torch==2.14.1"
TORCHVISION="torchvision==0.29.1"
# The pin of the `xrv` extra in pyproject.toml is the one installed here.
XRV="$(sed -n 's/^xrv = \[\"\(torchxrayvision==[^"]*\)\".*/\1/p' pyproject.toml)"
XRV="${XRV:-torchxrayvision==1.5.7}"
if [ ! -x "$VENV/bin/python" ] || [ ! -x "$VENV/bin/pip" ]; then
    "$PY" -m venv --clear "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
stamp="$VENV/.cxr-installed-xrv"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$0" -nt "$stamp" ]; then
    "$VENV/bin/pip" install -q "$TORCH" "$TORCHVISION" "$XRV"
    "$VENV/bin/pip" install -q -e .
    "$VENV/bin/python" -c "import torchxrayvision, cxrtriage.io, onnx, onnxruntime"
    touch "$stamp"
fi
