#!/usr/bin/env bash
# The main job on a fresh machine: install into .venv (no torch needed), then triage the
# bundled sample radiographs with the bundled model and draw where it looked.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh core
.venv/bin/cxr predict cxrtriage/assets/samples
.venv/bin/cxr explain cxrtriage/assets/samples --out explanations
