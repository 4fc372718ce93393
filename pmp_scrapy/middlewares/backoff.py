"""Backoff and Retry-After arithmetic (pure functions, no Scrapy)."""

from __future__ import annotations

from datetime import datetime, timezone
from email.utils import parsedate_to_datetime


def backoff_delay(base: float, attempt: int) -> float:
    """Wait after failed ``attempt`` (1-based): base, 2×base, 4×base …"""
    return base * (2 ** max(attempt - 1, 0))


def parse_retry_after(value: bytes | str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or
    ``None`` if absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1", errors="replace")
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        now = now or datetime.now(timezone.utc)
        seconds = (when - now).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(seconds, 0.0)


def retry_wait(status: int | None, retry_after: bytes | str | None, *, attempt: int, base: float,
               cap: float, now: datetime | None = None) -> float:
    """The wait before the next attempt: a 429's Retry-After (capped), else exponential backoff."""
    if status == 429:
        seconds = parse_retry_after(retry_after, now)
        if seconds is not None:
            return min(seconds, cap)
    return min(backoff_delay(base, attempt), cap) if cap > 0 else backoff_delay(base, attempt)
