"""cxr-triage: a chest X-ray triage assistant.

A decision aid that sorts a reading queue; it is not a diagnostic device.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "AI triage aid, not a diagnosis: every image must still be read by a qualified clinician."
)
