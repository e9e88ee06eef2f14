"""A per-key token bucket: how often one API token (or client address) may ask for something."""

from __future__ import annotations

import math
import threading
import time

MAX_KEYS = 10000


class RateLimiter:
    """``per_minute`` calls per key, in bursts of up to ``burst`` (0 per minute: unlimited)."""

    def __init__(self, per_minute: int, burst: int = 10):
        self.rate = per_minute / 60.0
        self.burst = max(1, min(burst, per_minute)) if per_minute else 0
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, time)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """0.0 when the call may go ahead (and is counted), else the seconds until it may."""
        if not self.rate:
            return 0.0
        now = time.monotonic()
        with self._lock:
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > MAX_KEYS:  # forget the oldest keys (their buckets were full again anyway)
                for old in list(self._buckets)[: MAX_KEYS // 10]:
                    self._buckets.pop(old, None)
            return (1.0 - tokens) / self.rate


def retry_header(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}
