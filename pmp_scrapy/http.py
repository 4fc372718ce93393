"""The HTTP/1.1 download handler for the PMP host: Scrapy's, minus Twisted's silent re-send, and
telling the pacer when each request really leaves.

Twisted's ``HTTPConnectionPool`` retries an idempotent request once, at once and on a new
connection, when a persistent connection it reused was closed by the server before any
answer (``retryAutomatically``). Scrapy leaves that on, so such a request reaches the server
twice, 1 ms apart, outside ``DOWNLOAD_DELAY``, the retry middleware and every stat: the
contract's "at most 4 a second as the server sees them" breaks. With it off, the request fails
with a connection error (``DownloadFailedError`` wrapping ``ResponseNeverReceived``), which
the retry policy retries, counted and spaced like any other failure.

Scrapy spaces requests when its download slot hands them to the handler; a request is written
only once the pool hands it a connection: a new connection is connected first, and a reactor
busy with a page (parsing, queueing the next hundred requests) delays the hand-over. One late
request followed by one on time lands two arrivals closer than ``DOWNLOAD_DELAY`` (measured:
0.08 s apart right after the first page's answer at 2.5 s latency, then five in one second as
the server saw them, and a throttle page). So the pool also spaces the hand-overs themselves,
per host, by the pacer's current spacing (:meth:`pmp_scrapy.extensions.pacer.Pacer.spacing`):
a request whose turn has not come holds its connection until it has, and each turn is counted
from when the request was really handed over: a request handed over late (or woken late by a
busy reactor) delays the next one instead of crowding it. Hosts the pacer does not pace (the Slack
webhook, the accounts server of a real tenant) pass at once.

Reads the settings of Scrapy's handler, and ``PMP_MAX_IN_FLIGHT``: the pool keeps up to
``max(CONCURRENT_REQUESTS_PER_DOMAIN, PMP_MAX_IN_FLIGHT)`` idle connections per host (Scrapy:
the former alone), so the requests in flight that :mod:`pmp_scrapy.extensions.pacer` allows
the PMP slot reuse their connections instead of opening (and TLS-negotiating) one each.
Listens to no signal; writes no stat.

Enabled with::

    DOWNLOAD_HANDLERS = {"http": "pmp_scrapy.http.NoSilentRetryDownloadHandler",
                         "https": "pmp_scrapy.http.NoSilentRetryDownloadHandler"}
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

from pmp_scrapy.extensions.pacer import Pacer, max_in_flight

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from twisted.internet.interfaces import IStreamClientEndpoint
    from twisted.web._newclient import HTTP11ClientProtocol


def host_of(key: Hashable) -> str:
    """The host a pool key names (Twisted's agent: ``(scheme, host, port)``; Scrapy's adds the
    proxy: ``(scheme, host, port, proxy)``), as Scrapy names a download slot; ``""`` for a key of
    another shape."""
    if isinstance(key, tuple) and len(key) >= 3 and isinstance(key[1], bytes):
        return key[1].decode("ascii", "replace")
    return ""


def next_turn(now: float, reserved: float, spacing: float) -> float:
    """When a request may be written: now, or the host's next free turn if later."""
    return max(now, reserved) if spacing > 0 else now


class SpacedPool(HTTPConnectionPool):
    """A connection pool that hands connections over to requests of one host no closer together
    than ``spacing(host)`` seconds (the agent writes the request as it receives the connection)."""

    def __init__(self, reactor: Any, spacing: Callable[[str], float], persistent: bool = True,
                 clock: Callable[[], float] = monotonic) -> None:
        super().__init__(reactor, persistent=persistent)
        self.spacing = spacing
        self._clock = clock
        self._reserved: dict[str, float] = {}  # host -> its next free turn (monotonic)

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[HTTP11ClientProtocol]:
        return super().getConnection(key, endpoint).addCallback(self._in_turn, host_of(key))

    def _in_turn(self, protocol: HTTP11ClientProtocol, host: str) -> HTTP11ClientProtocol | Deferred[HTTP11ClientProtocol]:
        if self._take_turn(host):
            return protocol
        waiting: Deferred[HTTP11ClientProtocol] = Deferred(lambda _: self._cancelled(pending, protocol))
        pending: list[Any] = []
        self._wait(protocol, host, waiting, pending)
        return waiting

    def _take_turn(self, host: str) -> bool:
        """Whether a request to ``host`` may be written now; if so its turn is taken from now
        (not from when it was due: a reactor late to wake it must not shorten the next spacing)."""
        spacing, now = self.spacing(host), self._clock()
        if spacing <= 0:
            return True
        if now < self._reserved.get(host, -math.inf):
            return False
        self._reserved[host] = now + spacing
        return True

    def _wait(self, protocol: HTTP11ClientProtocol, host: str, waiting: Deferred[HTTP11ClientProtocol],
              pending: list[Any]) -> None:
        def wake() -> None:
            if self._take_turn(host):
                waiting.callback(protocol)
            else:  # another request took the turn first: the next one
                self._wait(protocol, host, waiting, pending)
        due = next_turn(self._clock(), self._reserved.get(host, -math.inf), self.spacing(host))
        pending[:] = [self._reactor.callLater(max(0.0, due - self._clock()), wake)]

    @staticmethod
    def _cancelled(pending: list[Any], protocol: HTTP11ClientProtocol) -> None:
        """Cancelled while waiting for its turn (download timeout, the run stopping): nothing was
        written; the connection is closed rather than left out of the pool."""
        for call in pending:
            if call.active():
                call.cancel()
        protocol.abort()


class NoSilentRetryDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 handler whose connection pool never re-sends a request by itself, keeps
    a connection for each request the pacer may have in flight, and spaces the requests written
    to a paced host."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        from twisted.internet import reactor

        stock = self._pool
        pool = SpacedPool(reactor, self._spacing, persistent=True)
        pool._factory = stock._factory
        pool.retryAutomatically = False
        pool.maxPersistentPerHost = max(stock.maxPersistentPerHost, max_in_flight(crawler.settings))
        self._pool = pool
        self._pacer: Pacer | None = None

    def _spacing(self, host: str) -> float:
        if self._pacer is None:
            self._pacer = self._crawler.get_extension(Pacer)
            if self._pacer is None:
                return 0.0
        return self._pacer.spacing(host)
