"""Token buckets for AWS IoT Core's per-connection limits (publishes/s and bytes/s)."""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up. Pure: the caller passes time."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait_time(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` tokens are available (0 when they are now)."""
        self._refill(now)
        missing = min(amount, self.burst) - self._tokens
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, amount: float, now: float) -> None:
        """Spend ``amount`` tokens (the balance may go negative for one oversize request)."""
        self._refill(now)
        self._tokens -= amount
