"""Exit 0 when a package index page answers within a few seconds, else 1 (used by bootstrap.sh
to choose PyTorch's CPU index only where the network reaches it)."""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:  # noqa: BLE001 - any failure (DNS, refused, TLS, timeout) means: not reachable
    sys.exit(1)
