#!/usr/bin/env bash
# Create .venv in the checkout and install cxr-triage with everything it needs.
# Idempotent and quick when nothing changed. Usage: scripts/bootstrap.sh [core|all|serve|train|...]
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-all}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ] || [ ! -x .venv/bin/pip ]; then
    "$PY" -m venv --clear .venv
    .venv/bin/pip install -q --upgrade pip
fi
stamp=".venv/.cxr-installed-$EXTRAS"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    # The CPU build of torch first, so the extras do not pull a multi-GB CUDA build.
    case "$EXTRAS" in
        *all*|*train*) .venv/bin/pip install -q "torch==2.13.0" ;;
    esac
    if [ "$EXTRAS" = "core" ]; then
        .venv/bin/pip install -q -e .
    else
        .venv/bin/pip install -q -e ".[$EXTRAS]"
    fi
    touch "$stamp"
fi
