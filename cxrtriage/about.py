"""What the package says about itself: its version and the disclaimer every output carries.

A leaf module (it imports nothing of the package), so every layer may import it without
reaching up to the package root."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cxr-triage")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

DISCLAIMER = (
    "AI triage aid, not a diagnosis: every image must still be read by a qualified clinician."
)

__all__ = ["DISCLAIMER", "__version__"]
