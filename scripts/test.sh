#!/usr/bin/env bash
# Install everything the tests need (Python packages into .venv; Debian's chromium and Orthanc
# when running as root), then run the whole test suite.
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
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
