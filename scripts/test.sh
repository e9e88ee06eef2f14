#!/usr/bin/env bash
# Install everything the tests need (Python packages into .venv; Debian's chromium and Orthanc
# when running as root; the OHIF viewer from npm), then ruff, mypy and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh all
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
    need=()
    [ -x /usr/bin/chromium ] || need+=(chromium)
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
    [ -x scripts/install_orthanc.sh ] && scripts/install_orthanc.sh
fi
# The OHIF viewer for tests/test_ohif_viewer.py (npm, into .cache/ohif/; that test skips without it).
scripts/install_ohif.sh || echo "test.sh: OHIF viewer not installed; tests/test_ohif_viewer.py will skip" >&2
# TorchXRayVision in its own venv (.venv-xrv) for tests/test_xrv_import.py (that test skips without it).
scripts/bootstrap_xrv.sh || echo "test.sh: .venv-xrv not made; tests/test_xrv_import.py will skip" >&2
# Lint and type checks first (configured in pyproject.toml), then the suite.
.venv/bin/ruff check cxrtriage scripts
.venv/bin/mypy
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
