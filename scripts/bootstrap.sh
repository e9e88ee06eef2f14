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
    # The CPU build of torch first, so the extras do not pull a multi-GB CUDA build: from
    # PyTorch's CPU index when it answers (a normal machine with internet; pip then prefers
    # 2.13.0+cpu to PyPI's CUDA 2.13.0), else from whatever index or wheel folder pip is set up
    # with (an offline mirror). CXR_TORCH_INDEX names another CPU index; "none" skips the probe.
    case "$EXTRAS" in
        *all*|*train*)
            index="${CXR_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
            if [ "$index" != "none" ] && .venv/bin/python scripts/index_reachable.py "$index/torch/"; then
                .venv/bin/pip install -q "torch==2.13.0" --extra-index-url "$index"
            else
                .venv/bin/pip install -q "torch==2.13.0"
            fi
            .venv/bin/python -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else
                print('bootstrap: warning: torch', torch.__version__, 'is a CUDA build', file=sys.stderr))" ;;
    esac
    if [ "$EXTRAS" = "core" ]; then
        .venv/bin/pip install -q -e .
    else
        .venv/bin/pip install -q -e ".[$EXTRAS]"
    fi
    touch "$stamp"
fi
