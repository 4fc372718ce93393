"""Pace arithmetic for the PMP download slot (pure functions and frozen values, no Scrapy).

Two numbers pace the slot: the spacing of request starts (``delay``) and the requests allowed
in flight (``concurrency``). The spacing never goes below ``DOWNLOAD_DELAY × (1 + margin)``:
the margin keeps timer and connection jitter from putting a fifth arrival in one second. It
rises only when PMP says it is overloaded (429, 5xx, an HTML throttle page with status 200,
latency climbing sharply): doubled per signal up to a cap, then eased back answer by answer.
Slowness alone never lowers the rate; it raises the requests in flight instead, to about
``latency / delay + 1`` (Little's law: the answers then keep coming one per ``delay``), up to
a cap that bounds memory. :mod:`pmp_scrapy.extensions.pacer` wires these to Scrapy's signals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

#: What requests in flight are sized for: the latency ``peak``, which jumps to any slower answer
#: and falls back by this share of the difference per faster one (too few in flight cost
#: rate; too many cost only memory, which the cap bounds).
PEAK_FALL_WEIGHT = 0.1
#: Weights of a new sample in the ``recent`` latency and in the slow ``baseline`` that a climb
#: is measured against.
RECENT_WEIGHT = 0.3
BASELINE_WEIGHT = 0.05
#: Samples before a climb can be judged (the first answers set the level, e.g. a fast
#: inventory answer followed by seconds-long pages is not a climb).
WARMUP_SAMPLES = 5
#: A climb: the recent latency at least this many times the baseline, and this much above it.
CLIMB_RATIO = 2.5
CLIMB_MIN_SECONDS = 1.0
#: A backoff multiplies the delay by this; each good answer afterwards by RECOVERY_FACTOR.
BACKOFF_FACTOR = 2.0
RECOVERY_FACTOR = 0.8

#: The reactor's lag (how late a timer fires: a busy or CPU-starved process) that the spacing of
#: requests as they are written absorbs: a request written that late lands that much closer to
#: the next one. The peak jumps to any larger sample and decays by LAG_DECAY per probe.
LAG_DECAY = 0.95
MAX_LAG_ALLOWANCE = 0.1  # seconds added to one spacing at most

#: Reasons of an overload signal (the ``pmp/pace/backoffs/<reason>`` stats).
RATE_LIMITED, SERVER_ERROR, THROTTLE_PAGE, LATENCY_CLIMB = "429", "5xx", "throttle_page", "latency"


@dataclass(frozen=True)
class PaceLimits:
    """The bounds of one run's pace."""

    base_delay: float  # the shortest spacing ever used: DOWNLOAD_DELAY × (1 + margin)
    max_delay: float  # the longest spacing a backoff reaches
    max_in_flight: int  # the most requests in flight


def paced_delay(download_delay: float, margin: float) -> float:
    """The spacing kept between request starts: the limit's own, plus the margin."""
    return download_delay * (1.0 + margin)


def in_flight_target(latency: float | None, delay: float, cap: int) -> int:
    """Requests in flight that keep one request starting every ``delay`` seconds while answers
    take ``latency`` seconds: ``ceil(latency / delay) + 1``, between 1 and ``cap``. Before any
    latency is known (or without a delay) it is ``cap``: the delay alone paces the starts."""
    if latency is None or delay <= 0:
        return cap
    return max(1, min(cap, math.ceil(latency / delay) + 1))


@dataclass(frozen=True)
class Latency:
    """What the answers' latency looks like: its ``peak`` (sizes the requests in flight),
    ``recent`` and ``baseline`` (EWMAs, fast and slow: a climb is one far above the other) and
    the number of samples seen."""

    peak: float
    recent: float
    baseline: float
    samples: int


def observe_latency(latency: Latency | None, sample: float) -> Latency:
    """The estimate after one more answer that took ``sample`` seconds."""
    if latency is None:
        return Latency(sample, sample, sample, 1)
    peak = sample if sample > latency.peak else latency.peak + PEAK_FALL_WEIGHT * (sample - latency.peak)
    recent = latency.recent + RECENT_WEIGHT * (sample - latency.recent)
    samples = latency.samples + 1
    if samples <= WARMUP_SAMPLES:
        return Latency(peak, recent, recent, samples)
    baseline = latency.baseline + BASELINE_WEIGHT * (sample - latency.baseline)
    return Latency(peak, recent, baseline, samples)


def latency_climbing(latency: Latency | None) -> bool:
    """Whether latency climbed sharply above its baseline (a sign of an overloaded server, not
    of a merely slow one)."""
    return (latency is not None and latency.samples > WARMUP_SAMPLES
            and latency.recent >= CLIMB_RATIO * latency.baseline
            and latency.recent - latency.baseline >= CLIMB_MIN_SECONDS)


def accept_level(latency: Latency) -> Latency:
    """After backing off for a climb, the new level is the baseline: only a further climb
    signals again, so a server that got slow and stayed slow costs one backoff, not many."""
    return replace(latency, baseline=latency.recent)


def is_throttle_page(status: int, body: bytes) -> bool:
    """PMP's throttle answer: status 200 with an HTML body on an endpoint that answers JSON."""
    return status == 200 and body[:512].lstrip()[:1] == b"<"


def overload_reason(status: int, body: bytes) -> str | None:
    """The overload an answer signals (one of the reason constants), or ``None``."""
    if status == 429:
        return RATE_LIMITED
    if 500 <= status <= 599:
        return SERVER_ERROR
    if is_throttle_page(status, body):
        return THROTTLE_PAGE
    return None


@dataclass(frozen=True)
class Pace:
    """The slot's current spacing, when it was last raised and how often."""

    delay: float
    raised_at: float = -math.inf  # monotonic seconds
    backoffs: int = 0


def back_off(pace: Pace, limits: PaceLimits, *, sent_at: float, now: float) -> Pace:
    """The pace after an overload signal from a request sent at ``sent_at``: the delay doubled
    (up to ``max_delay``). An answer to a request sent before the last raise says nothing about
    the raised pace (it left at the old one), so it changes nothing: one burst of throttled
    answers is one backoff, not one per request in flight."""
    if sent_at < pace.raised_at:
        return pace
    delay = min(limits.max_delay, max(limits.base_delay, pace.delay * BACKOFF_FACTOR))
    return Pace(delay, now, pace.backoffs + 1)


def recover(pace: Pace, limits: PaceLimits, *, sent_at: float) -> Pace:
    """The pace after a good answer: a raised delay eases back by ``RECOVERY_FACTOR`` towards
    ``base_delay``, once answers to requests sent at the raised pace come back good."""
    if pace.delay <= limits.base_delay or sent_at < pace.raised_at:
        return pace
    return replace(pace, delay=max(limits.base_delay, pace.delay * RECOVERY_FACTOR))


def observe_lag(peak: float, sample: float) -> float:
    """The reactor-lag peak after one more probe that fired ``sample`` seconds late."""
    return max(sample, peak * LAG_DECAY)


def lag_allowance(peak: float) -> float:
    """Seconds added to the spacing of requests as they are written: a quarter of the lag
    peak (five arrivals in one second need four spacings shortened by one late request),
    at most ``MAX_LAG_ALLOWANCE``. Near 0 on an idle machine (lags of a millisecond)."""
    return min(MAX_LAG_ALLOWANCE, max(0.0, peak) / 4.0)
