"""A per-key rate limit: one token bucket per key, in this worker process's memory.

Each key may make ``burst`` requests at once and ``per_minute`` a minute after that; a request
beyond it is refused (429) with the seconds until the next token as ``Retry-After``. Buckets
live in one worker's memory: with N workers a key's limit is N times the setting (documented
in docs/security.md). Imports nothing of OnTrack.
"""

from __future__ import annotations

import math
import threading
import time


class RateLimiter:
    def __init__(self, per_minute: int, burst: int, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0  # tokens a second
        self.burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str) -> int:
        """0 when ``key`` may go ahead (a token is spent), else the whole seconds to wait."""
        if not self.enabled:
            return 0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))
