"""Keeps the PMP rate limit busy at any latency and never exceeds it (issue 15).

The ``Pacer`` owns the download slot(s) of the project's own requests to PMP (pages,
inventory, catalog, customers; every request without the ``pmp_side_request`` meta marker):

- **spacing**: the slot's ``delay`` is ``DOWNLOAD_DELAY × (1 + PMP_RATE_MARGIN)``, never less,
  with no random jitter (``DOWNLOAD_DELAY_JITTER`` would let two starts come closer than the
  limit); it is raised when PMP is overloaded (429, 5xx, an HTML page with status 200, latency
  climbing sharply: doubled up to ``PMP_PACE_MAX_DELAY``) and eased back as answers come back
  good. A slow PMP never lowers the rate: that is AutoThrottle's behaviour, which this replaces
  (keep ``AUTOTHROTTLE_ENABLED = False``; both adjusting one slot would fight).
- **spacing as the server sees it**: Scrapy spaces a slot's requests when it hands them to the
  download handler; a request is written later, when the connection pool hands it a connection
  (a new one connects first; a reactor busy with a page delays the hand-over), so a late request
  followed by one on time can land closer together than the spacing. The project's download
  handler (:mod:`pmp_scrapy.http`) therefore also spaces the hand-overs to the host, by
  :meth:`Pacer.spacing`: the slot's delay plus an allowance for the reactor's lag (a probe timer
  every ``LAG_PROBE_INTERVAL`` seconds measures how late it fires: on a loaded machine a request
  is written, or its arrival noted, tens of milliseconds late, which the 4 % margin alone does
  not absorb; :func:`pmp_scrapy.pacing.lag_allowance`).
- **requests in flight**: the slot's ``concurrency`` is enough to sustain that spacing at the
  observed latency (``latency / delay + 1``, :func:`pmp_scrapy.pacing.in_flight_target`), at
  most ``PMP_MAX_IN_FLIGHT``. ``CONCURRENT_REQUESTS`` caps the downloader as a whole and must
  leave room above it (requests sleeping out a retry backoff, token calls, Slack posts).
  ``CONCURRENT_REQUESTS_PER_DOMAIN`` stays the concurrency of unpaced slots (side requests, and
  every slot when ``DOWNLOAD_DELAY`` is 0); :mod:`pmp_scrapy.http` keeps enough persistent
  connections for the paced slot.

Side requests (token calls, Slack posts) have their own download slots and are not paced here.

Reads ``DOWNLOAD_DELAY`` (validated by :mod:`pmp_scrapy.config`), ``PMP_RATE_MARGIN`` (default 0.04),
``PMP_MAX_IN_FLIGHT`` (16), ``PMP_PACE_MAX_DELAY`` (8 s), ``CONCURRENT_REQUESTS`` and
``AUTOTHROTTLE_ENABLED`` (both only to warn). Off (``NotConfigured``) when ``DOWNLOAD_DELAY``
is 0: there is no rate to keep.

Listens to ``request_reached_downloader`` (a new slot gets the pace before its first request
leaves) and ``response_downloaded`` (every HTTP answer, including those the retry middleware
will retry, with its ``download_latency``).

Writes stats, as a report only: ``pmp/pace/delay`` (current spacing, s), ``pmp/pace/max_delay``,
``pmp/pace/in_flight_target`` (current), ``pmp/pace/max_in_flight`` (most requests seen in
flight at once), ``pmp/pace/latency`` (recent latency EWMA, s), ``pmp/pace/backoffs`` and
``pmp/pace/backoffs/<429|5xx|throttle_page|latency>``, ``pmp/pace/reactor_lag_max`` (s). Logs ``pace_backoff`` (WARNING) and
``pace_recovered`` (INFO).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured
from scrapy.utils.asyncio import call_later

from pmp_scrapy import pacing
from pmp_scrapy.config import read
from pmp_scrapy.middlewares import SIDE_REQUEST
from pmp_scrapy.values import number

if TYPE_CHECKING:
    from typing import Self

    from scrapy import Request
    from scrapy.core.downloader import Slot
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings

logger = logging.getLogger(__name__)

#: requests admitted to the downloader beyond the paced in-flight target: one waiting for the
#: slot's next turn, one sleeping out a retry backoff, and the token call or a Slack post
QUEUE_HEADROOM = 3
LAG_PROBE_INTERVAL = 0.1  # seconds between reactor-lag probes


def max_in_flight(settings: BaseSettings) -> int:
    """The validated ``PMP_MAX_IN_FLIGHT``."""
    return int(read(settings, "PMP_MAX_IN_FLIGHT"))


def pace_limits(settings: BaseSettings, download_delay: float) -> pacing.PaceLimits:
    """Validate ``PMP_MAX_IN_FLIGHT``, ``PMP_RATE_MARGIN`` and ``PMP_PACE_MAX_DELAY`` into the
    run's :class:`~pmp_scrapy.pacing.PaceLimits`; a bad value is a ConfigError naming it."""
    in_flight = max_in_flight(settings)
    base = pacing.paced_delay(download_delay, float(read(settings, "PMP_RATE_MARGIN")))
    # a positive number of seconds, and no less than the pace itself
    max_delay = number("PMP_PACE_MAX_DELAY", read(settings, "PMP_PACE_MAX_DELAY"), low=base)
    return pacing.PaceLimits(base_delay=base, max_delay=max_delay, max_in_flight=in_flight)


@dataclass
class _PacedSlot:
    """One paced download slot: Scrapy's slot object and its pace."""

    slot: Slot
    pace: pacing.Pace
    latency: pacing.Latency | None = None


class Pacer:
    """Paces the PMP download slot; see the module docstring."""

    def __init__(self, crawler: Crawler, limits: pacing.PaceLimits) -> None:
        self.crawler = crawler
        self.limits = limits
        self._slots: dict[str, _PacedSlot] = {}
        self._lag = 0.0  # the reactor-lag peak (s)
        self._probe: Any = None  # the pending probe timer

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        download_delay = float(read(crawler.settings, "DOWNLOAD_DELAY"))
        if download_delay <= 0:
            raise NotConfigured  # silent: DOWNLOAD_DELAY is 0, no request rate to pace
        settings = crawler.settings
        pacer = cls(crawler, pace_limits(settings, download_delay))
        if settings.getbool("AUTOTHROTTLE_ENABLED"):
            logger.warning("AutoThrottle is enabled alongside the pacer: it lowers the request rate "
                           "whenever PMP is slow; set AUTOTHROTTLE_ENABLED = False",
                           extra={"event_type": "pace_config"})
        crawler.signals.connect(pacer.request_reached_downloader, signal=signals.request_reached_downloader)
        crawler.signals.connect(pacer.response_downloaded, signal=signals.response_downloaded)
        crawler.signals.connect(pacer.engine_started, signal=signals.engine_started)
        crawler.signals.connect(pacer.engine_stopped, signal=signals.engine_stopped)
        return pacer

    # --- signals -----------------------------------------------------------------------------------
    def engine_started(self) -> None:
        """Start probing the reactor's lag."""
        self._schedule_probe()

    def engine_stopped(self) -> None:
        """Stop probing."""
        if self._probe is not None:
            self._probe.cancel()
        self._probe = None

    def _schedule_probe(self) -> None:
        self._probe = call_later(LAG_PROBE_INTERVAL, self._probed, monotonic() + LAG_PROBE_INTERVAL)

    def _probed(self, due: float) -> None:
        self._lag = pacing.observe_lag(self._lag, max(0.0, monotonic() - due))
        self.crawler.stats.max_value("pmp/pace/reactor_lag_max", round(self._lag, 4))
        self._schedule_probe()

    def request_reached_downloader(self, request: Request, spider: Any = None) -> None:
        """Give the request's slot the pace before its first request leaves (and again if
        Scrapy dropped an idle slot and made a new one)."""
        if request.meta.get(SIDE_REQUEST):
            return
        key: str | None = request.meta.get("download_slot")  # set by the downloader before the signal
        slot = self.crawler.engine.downloader.slots.get(key) if key is not None else None
        if key is None or slot is None:
            return
        paced = self._slots.get(key)
        if paced is None:
            paced = self._slots[key] = _PacedSlot(slot, pacing.Pace(self.limits.base_delay))
        elif paced.slot is not slot:
            paced.slot = slot
        else:
            return
        slot.jitter = 0.0
        self._apply(paced)

    def response_downloaded(self, response: Response, request: Request, spider: Any = None) -> None:
        """Learn latency and overload from one answer; adjust the slot."""
        if request.meta.get(SIDE_REQUEST):
            return
        paced = self._slots.get(request.meta.get("download_slot", ""))
        if paced is None:
            return
        now = monotonic()
        seconds = request.meta.get("download_latency")
        sent_at = now - seconds if seconds is not None else now
        reason = self._overload(paced, response, seconds)
        if reason is None:
            self._recover(paced, sent_at)
        else:
            self._back_off(paced, reason, sent_at, now)
        self.crawler.stats.max_value("pmp/pace/max_in_flight", len(paced.slot.transferring))
        self._apply(paced)

    def spacing(self, host: str) -> float:
        """The spacing (s) kept between requests written to ``host`` (read by
        :mod:`pmp_scrapy.http` at each connection hand-over): the paced slot's current delay plus
        the reactor-lag allowance, 0 for a host this pacer does not pace."""
        paced = self._slots.get(host)
        return paced.pace.delay + pacing.lag_allowance(self._lag) if paced is not None else 0.0

    # --- helpers ---------------------------------------------------------------------------------
    def _overload(self, paced: _PacedSlot, response: Response, seconds: float | None) -> str | None:
        """What overload the answer signals; a good answer's latency feeds the estimate."""
        reason = pacing.overload_reason(response.status, response.body)
        if reason is None and seconds is not None:
            paced.latency = pacing.observe_latency(paced.latency, seconds)
            if pacing.latency_climbing(paced.latency):
                paced.latency = pacing.accept_level(paced.latency)
                return pacing.LATENCY_CLIMB
        return reason

    def _back_off(self, paced: _PacedSlot, reason: str, sent_at: float, now: float) -> None:
        before = paced.pace
        paced.pace = pacing.back_off(before, self.limits, sent_at=sent_at, now=now)
        if paced.pace is before:
            return
        self.crawler.stats.inc_value("pmp/pace/backoffs")
        self.crawler.stats.inc_value(f"pmp/pace/backoffs/{reason}")
        logger.warning("PMP signals overload (%s): one request every %.2f s instead of %.2f s",
                       reason, paced.pace.delay, before.delay,
                       extra={"event_type": "pace_backoff", "reason": reason,
                              "delay_s": round(paced.pace.delay, 3), "previous_delay_s": round(before.delay, 3)})

    def _recover(self, paced: _PacedSlot, sent_at: float) -> None:
        before = paced.pace
        paced.pace = pacing.recover(before, self.limits, sent_at=sent_at)
        if paced.pace.delay <= self.limits.base_delay < before.delay:
            logger.info("PMP answers normally again: back to one request every %.2f s", paced.pace.delay,
                        extra={"event_type": "pace_recovered", "delay_s": round(paced.pace.delay, 3)})

    def _admit(self, target: int) -> None:
        """Let only a few requests more than the target into the downloader: a request gets its
        token when it enters, so a long queue in the slot would send tokens old (and memory)."""
        # CONCURRENT_REQUESTS stays small for unpaced runs (memory); the pace admits what it needs.
        self.crawler.engine.downloader.total_concurrency = min(target, self.limits.max_in_flight) + QUEUE_HEADROOM

    def _apply(self, paced: _PacedSlot) -> None:
        peak = paced.latency.peak if paced.latency is not None else None
        target = pacing.in_flight_target(peak, paced.pace.delay, self.limits.max_in_flight)
        paced.slot.delay = paced.pace.delay
        paced.slot.concurrency = target
        self._admit(target)
        stats = self.crawler.stats
        stats.set_value("pmp/pace/delay", round(paced.pace.delay, 4))
        stats.max_value("pmp/pace/max_delay", round(paced.pace.delay, 4))
        stats.set_value("pmp/pace/in_flight_target", target)
        if paced.latency is not None:
            stats.set_value("pmp/pace/latency", round(paced.latency.recent, 3))
