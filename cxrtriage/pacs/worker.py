"""Triage for the Orthanc plugin, run in the project's own interpreter.

``python -m cxrtriage.pacs.worker [--model PATH]``: one DICOM file on stdin, one JSON
answer on stdout. ``--serve``: stay up and answer framed requests (8-byte big-endian
length, then the DICOM bytes; the answer is framed the same way) until stdin closes, so
the model is loaded once. Orthanc's embedded Python then needs only the standard library.

The answer: ``{"status": "results"|"skipped"|"error", "reason", "prediction",
"outputs": [{"sop_instance_uid", "sop_class_uid", "data" (base64 Part-10)}]}``.
"""

from __future__ import annotations

import argparse
import base64
import json
import struct
import sys
from typing import Any, BinaryIO

_FRAME = struct.Struct(">Q")


def answer_for(engine: Any, data: bytes) -> dict:
    from cxrtriage.pacs.pipeline import OutcomeStatus, part10, triage_bytes

    try:
        out = triage_bytes(engine, [("instance", data)])[0]
    except Exception as exc:  # noqa: BLE001 - worker must answer, not die: report, do not leave the plugin guessing
        return {"status": OutcomeStatus.ERROR.value, "reason": f"{type(exc).__name__}: {exc}", "prediction": None,
                "outputs": []}
    answer: dict = {"status": out.status.value, "reason": out.reason, "prediction": None, "outputs": []}
    if out.results is not None:
        answer["prediction"] = out.results.prediction.to_dict()
        answer["outputs"] = [{"sop_instance_uid": str(ds.SOPInstanceUID), "sop_class_uid": str(ds.SOPClassUID),
                              "data": base64.b64encode(part10(ds)).decode("ascii")} for ds in out.datasets]
    return answer


def read_frame(stream: BinaryIO) -> bytes | None:
    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (n,) = _FRAME.unpack(head)
    data = stream.read(n)
    return data if len(data) == n else None


def write_frame(stream: BinaryIO, data: bytes) -> None:
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Triage DICOM from stdin for the Orthanc plugin.")
    ap.add_argument("--model", default=None, help="model (.onnx, sidecar .json or run folder); default: bundled")
    ap.add_argument("--serve", action="store_true", help="answer framed requests until stdin closes")
    args = ap.parse_args(argv)
    from cxrtriage.infer import load_model

    engine = load_model(args.model, threads=1)
    if not args.serve:
        answer = answer_for(engine, sys.stdin.buffer.read())
        sys.stdout.write(json.dumps(answer))
        return 1 if answer["status"] == "error" else 0
    while (data := read_frame(sys.stdin.buffer)) is not None:
        write_frame(sys.stdout.buffer, json.dumps(answer_for(engine, data)).encode("utf-8"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
