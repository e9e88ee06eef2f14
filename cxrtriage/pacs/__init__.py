"""PACS integration: triage radiographs arriving in a PACS and write the results back as DICOM.

* :func:`cxrtriage.pacs.watch.watch`: follow Orthanc's change feed (or poll QIDO-RS),
  triage new CR/DX instances, STOW a Secondary Capture overlay and a TID 1500 SR into
  the same study (``cxr pacs watch``);
* :func:`cxrtriage.pacs.listen.listen`: a C-STORE receiver that triages and forwards the
  results with C-STORE (``cxr pacs listen``);
* :func:`list_pacs_studies` / :func:`open_pacs_study` / :func:`fetch_pacs_images`: the PACS
  side of the service's worklist;
* :class:`PacsConnection`: how to reach a PACS (URL, DICOMweb root, credentials, timeout, TLS
  verification), taken by all of the above (or a URL with the same fields as keywords);
* ``orthanc_plugin.py``: the "AI triage" button of Orthanc Explorer (orthanc-python).

Needs the ``pacs`` extra (highdicom, dicomweb-client, pynetdicom, requests). Importing
this package is cheap: the modules load when used.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PacsConnection", "fetch_pacs_images", "list_pacs_studies", "open_pacs_study", "read_result_sr",
           "study_results"]


def __getattr__(name: str) -> Any:
    if name in ("fetch_pacs_images", "list_pacs_studies", "open_pacs_study", "study_results"):
        from cxrtriage.pacs import worklist

        return getattr(worklist, name)
    if name == "PacsConnection":
        from cxrtriage.pacs.connection import PacsConnection

        return PacsConnection
    if name == "read_result_sr":
        from cxrtriage.pacs.results import read_result_sr

        return read_result_sr
    raise AttributeError(f"module 'cxrtriage.pacs' has no attribute {name!r}")
