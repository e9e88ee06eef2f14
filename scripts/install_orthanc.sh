#!/usr/bin/env bash
# Install Orthanc with its DICOMweb and Python plugins from Debian's packages, if missing.
#
#   orthanc           the PACS (/usr/sbin/Orthanc)
#   orthanc-dicomweb  QIDO-RS / WADO-RS / STOW-RS plugin (needed by the PACS tests)
#   orthanc-python    Python plugin (the "AI triage" button; its test skips without it)
#
# Idempotent: does nothing when they are installed. Needs root (or sudo) and apt-get.
# The tests start their own Orthanc processes with their own configuration and ports
# (tests/pacs_fixtures.py); the package's system service is never used by them. Set
# CXR_ORTHANC_DISABLE_SERVICE=1 to also stop and disable that service where systemd runs it.
set -euo pipefail

REQUIRED=(orthanc orthanc-dicomweb)
OPTIONAL=(orthanc-python)

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for p in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
    installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_orthanc: apt-get not found; install ${missing[*]} with your package manager" >&2
        exit 1
    fi
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "install_orthanc: run as root (or install sudo)" >&2; exit 1; }
        SUDO="sudo"
    fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -q
    req=()
    for p in "${REQUIRED[@]}"; do installed "$p" || req+=("$p"); done
    if [ ${#req[@]} -gt 0 ]; then
        $SUDO apt-get install -y -q --no-install-recommends "${req[@]}"
    fi
    for p in "${OPTIONAL[@]}"; do
        installed "$p" || $SUDO apt-get install -y -q --no-install-recommends "$p" \
            || echo "install_orthanc: optional package $p not installed; the plugin test will skip" >&2
    done
fi

if [ "${CXR_ORTHANC_DISABLE_SERVICE:-0}" = "1" ] && command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now orthanc >/dev/null 2>&1 || true
fi

for p in "${REQUIRED[@]}" "${OPTIONAL[@]}"; do
    if installed "$p"; then
        echo "install_orthanc: $p $(dpkg-query -W -f='${Version}' "$p")"
    fi
done
test -x /usr/sbin/Orthanc
