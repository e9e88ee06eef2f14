#!/usr/bin/env bash
# Install the OHIF viewer (npm package @ohif/app, its prebuilt static site in dist/) for the
# viewer test (tests/test_ohif_viewer.py), which serves it beside a test Orthanc.
#
#   .cache/ohif/<version>/dist   the static viewer (git-ignored; nothing is built here)
#
# Idempotent and quick when that version is already there. Needs npm (Node 20) and access to
# the npm registry for the first install only; without npm it says so and leaves the test to skip.
# CXR_OHIF_VERSION overrides the pinned version (the test reads the same variable).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${CXR_OHIF_VERSION:-3.13.2}"
DEST=".cache/ohif/${VERSION}"

if [ -f "${DEST}/.installed" ] && [ -f "${DEST}/dist/index.html" ]; then
    exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install_ohif: npm not found; the OHIF viewer test will skip (install Node.js 20 and npm)" >&2
    exit 0
fi

tmp="$(mktemp -d .cache/ohif-download.XXXXXX 2>/dev/null || (mkdir -p .cache && mktemp -d .cache/ohif-download.XXXXXX))"
trap 'rm -rf "$tmp"' EXIT
# npm pack fetches the exact published tarball and checks it against the registry's integrity hash;
# the viewer is already built, so none of its (build-time) dependencies are needed.
npm pack --silent --pack-destination "$tmp" "@ohif/app@${VERSION}" >/dev/null
tar -xzf "$tmp"/ohif-app-"${VERSION}".tgz -C "$tmp"
[ -f "$tmp/package/dist/index.html" ] || { echo "install_ohif: @ohif/app@${VERSION} has no dist/index.html" >&2; exit 1; }
rm -rf "$DEST"
mkdir -p "$DEST"
mv "$tmp/package/dist" "$tmp/package/package.json" "$DEST/"
echo "@ohif/app@${VERSION}" > "$DEST/.installed"
echo "install_ohif: OHIF viewer ${VERSION} in ${DEST}/dist"
