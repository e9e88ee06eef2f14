"""``python -m cxrtriage.serve``: run the service (the same as ``cxr serve``)."""

from __future__ import annotations

import argparse
import sys

from cxrtriage.serve import SettingsError, serve


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cxrtriage.serve", description=__doc__)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", default=None, help="model (.onnx, .json or run folder); default: the bundled one")
    p.add_argument("--data-dir", default=None, help="database and uploads (default: $CXR_DATA_DIR or ./cxr-data)")
    p.add_argument("--token-file", default=None, help="file holding the API token (or set CXR_API_TOKEN)")
    p.add_argument("--max-upload-mb", type=float, default=None, help="request size limit in MiB (default 64)")
    p.add_argument("--cors-origin", action="append", default=None, help="allow this origin (repeatable)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    p.add_argument("--no-samples", action="store_true", help="do not offer the bundled samples on first start")
    p.add_argument("--pacs-url", default=None,
                   help="DICOMweb PACS to list and open studies from (or set CXR_PACS_URL; credentials: "
                        "CXR_PACS_USER/CXR_PACS_PASSWORD or CXR_PACS_TOKEN)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true")
    a = p.parse_args(argv)
    try:
        serve(a.host, a.port, a.model, a.data_dir, None, token_file=a.token_file,
              max_upload_bytes=int(a.max_upload_mb * 1048576) if a.max_upload_mb else None,
              cors_origins=a.cors_origin, threads=a.threads, samples=False if a.no_samples else None,
              pacs_url=a.pacs_url, log_level=a.log_level, access_log=not a.no_access_log)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
