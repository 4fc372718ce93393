"""How the simulated PMP host treats traffic as such: latency, a rate limiter, and dropped
keep-alive connections. Each class keeps its own counters; the Simulator calls them under
its lock, in arrival order."""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass
from typing import Any

from .replies import HTML_TYPE, TOO_MANY_REQUESTS, Reply, json_reply, throttled_html

RATE_LIMIT_REPLIES = ("429", "html_200")
CATALOG_ENTRIES_PER_SYSTEM = 30  # latency_per_system counts 30 catalog entries as one system


@dataclass(frozen=True)
class RateLimit:
    """At most ``max_per_second`` PMP API arrivals in any sliding second; the next is refused
    with ``reply``: "429" (with ``Retry-After: 1``) or "html_200" (PMP's HTML throttling page)."""

    max_per_second: int
    reply: str = "429"

    def __post_init__(self) -> None:
        if isinstance(self.max_per_second, bool) or not isinstance(self.max_per_second, int) \
                or self.max_per_second < 1:
            raise ValueError(f"rate_limit max_per_second must be a positive integer, "
                             f"not {self.max_per_second!r}")
        if self.reply not in RATE_LIMIT_REPLIES:
            raise ValueError(f"rate_limit reply must be one of {', '.join(RATE_LIMIT_REPLIES)}")

    def refusal(self) -> Reply:
        """What a refused request gets."""
        if self.reply == "429":
            return json_reply(429, TOO_MANY_REQUESTS, headers={"Retry-After": "1"},
                              fault="rate_limited")
        return Reply(200, throttled_html(), HTML_TYPE, fault="rate_limited")


@dataclass(frozen=True)
class DropReused:
    """Every ``every``-th PMP API request arriving on an already-used keep-alive connection is
    read, recorded and answered by closing the connection."""

    every: int

    def __post_init__(self) -> None:
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1:
            raise ValueError(f"drop_reused every must be a positive integer, not {self.every!r}")


def parse_rate_limit(value: Any) -> RateLimit | None:
    """``RateLimit`` from its JSON object (or None / a RateLimit); raises ValueError."""
    if value is None or isinstance(value, RateLimit):
        return value
    if not isinstance(value, dict) or set(value) - {"max_per_second", "reply"} \
            or "max_per_second" not in value:
        raise ValueError('rate_limit is {"max_per_second": N, "reply": "429" | "html_200"}')
    return RateLimit(**value)


def parse_drop_reused(value: Any) -> DropReused | None:
    """``DropReused`` from its JSON object (or None / a DropReused); raises ValueError."""
    if value is None or isinstance(value, DropReused):
        return value
    if not isinstance(value, dict) or set(value) != {"every"}:
        raise ValueError('drop_reused is {"every": N}')
    return DropReused(**value)


class SlidingWindowLimiter:
    """Arrival times of the last seconds; an arrival that would make ``max + 1`` arrivals within
    one second (with those before or after it) is refused. Arrivals may be handed in slightly out
    of order (each is stamped when its bytes reached the socket, then handled when its thread
    gets the lock). Refused arrivals count too (a client hammering stays refused)."""

    KEEP = 2.0  # seconds of arrivals kept behind the latest: more than any handling delay

    def __init__(self, limit: RateLimit | None) -> None:
        self.limit = limit
        self.refused = 0
        self._arrivals: list[float] = []  # sorted

    def arrive(self, t: float) -> Reply | None:
        """Record an arrival at monotonic time ``t``; the refusal if it is over the limit."""
        if self.limit is None:
            return None
        arrivals, most = self._arrivals, self.limit.max_per_second
        latest = max(t, arrivals[-1]) if arrivals else t
        del arrivals[:bisect.bisect_left(arrivals, latest - self.KEEP)]
        at = bisect.bisect_right(arrivals, t)
        arrivals.insert(at, t)
        over = any(arrivals[first + most] - arrivals[first] < 1.0
                   for first in range(max(0, at - most), min(at, len(arrivals) - 1 - most) + 1))
        if not over:
            return None
        self.refused += 1
        return self.limit.refusal()


class ReusedConnectionDropper:
    """Counts PMP requests that arrive on an already-used connection; says when to drop one."""

    def __init__(self, rule: DropReused | None) -> None:
        self.rule = rule
        self._reused_arrivals = 0

    def arrive(self, reused: bool) -> Reply | None:
        """Count an arrival (on an already-used connection if ``reused``); the connection-closing
        reply if it is one to drop."""
        if self.rule is None or not reused:
            return None
        self._reused_arrivals += 1
        if self._reused_arrivals % self.rule.every:
            return None
        return Reply(0, drop=True, fault="drop_reused")


class LatencyModel:
    """Seconds before an answer: ``base`` ± uniform ``jitter`` (a sequence fixed by the seed)
    + ``per_system`` × the systems the answer carries; never negative."""

    def __init__(self, base: float, jitter: float, per_system: float, seed: int) -> None:
        self.base, self.jitter, self.per_system = base, jitter, per_system
        self._rng = random.Random(f"{seed}:latency")

    def delay(self, systems: float) -> float:
        """The latency of the next answer, which carries ``systems`` systems' worth of data."""
        jitter = self._rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
        return max(0.0, self.base + jitter + self.per_system * systems)
