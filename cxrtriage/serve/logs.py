"""A log that an attack cannot flood: repeated warnings and errors are rate-limited.

Under a flood of bad connections the same line (``socket.accept() out of system resource``,
``Invalid HTTP request received.``, a closed slow client) can be written thousands of times a
second and fill the disk. :class:`RepeatFilter` lets the first few records of each message
template through in each window, drops the rest, and says how many it dropped on the next one
let through. INFO records (the audit trail included) are never dropped.
"""

from __future__ import annotations

import logging
import threading
import time

MAX_KEYS = 1000


class RepeatFilter(logging.Filter):
    """At most ``burst`` records of one (logger, level, template) per ``window`` seconds, for WARNING and above."""

    def __init__(self, burst: int = 5, window: float = 60.0):
        super().__init__()
        self.burst, self.window = burst, window
        self._state: dict[tuple, list] = {}  # key -> [window start, count, dropped]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = time.monotonic()
        with self._lock:
            st = self._state.get(key)
            if st is None or now - st[0] >= self.window:
                dropped = st[2] if st is not None else 0
                if st is None and len(self._state) >= MAX_KEYS:
                    self._state.pop(next(iter(self._state)))
                self._state[key] = [now, 1, 0]
                if dropped:
                    record.msg = (f"{record.msg} [and {dropped} more like this in the previous "
                                  f"{self.window:g} s, not logged]")
                return True
            st[1] += 1
            if st[1] <= self.burst:
                return True
            st[2] += 1
            return False


def install(burst: int = 5, window: float = 60.0) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every handler of the root logger (the service's log)."""
    f = RepeatFilter(burst, window)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(x, RepeatFilter) for x in handler.filters):
            handler.addFilter(f)
    return f
