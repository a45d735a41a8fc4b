"""A token bucket: at most `burst` at once, then one every `every` seconds. Pure: the
caller passes the time (any monotonic clock)."""

from __future__ import annotations


class TokenBucket:
    def __init__(self, burst: float, every: float, now: float) -> None:
        self.burst, self.every = burst, every
        self.tokens, self.at = burst, now

    def take(self, now: float) -> bool:
        """One token if there is one (refilled for the time since the last call)."""
        if now > self.at:
            self.tokens = min(self.burst, self.tokens + (now - self.at) / self.every)
            self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
