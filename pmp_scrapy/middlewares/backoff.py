"""Backoff and Retry-After arithmetic (pure functions, no Scrapy). Every wait between attempts,
of pages and of token calls, comes from :func:`retry_wait`."""

from __future__ import annotations

import math
from datetime import UTC, datetime
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
            when = when.replace(tzinfo=UTC)
        now = now or datetime.now(UTC)
        seconds = (when - now).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def retry_wait(status: int | None, retry_after: bytes | str | None, *, attempt: int, base: float,
               cap: float, now: datetime | None = None) -> float:
    """The wait before the next attempt: a 429's Retry-After, else exponential backoff; never
    more than ``cap`` (``PMP_MAX_RETRY_AFTER``), for HTTP and exception retries alike."""
    seconds = parse_retry_after(retry_after, now) if status == 429 else None
    if seconds is None:
        seconds = backoff_delay(base, attempt)
    return min(seconds, max(cap, 0.0))
