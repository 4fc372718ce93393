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
busy reactor) delays the next one instead of crowding it. A paced request is written and flushed
to the socket in the same call as its turn comes, and the next turn counts from after the flush
(:mod:`pmp_scrapy.http_write`: Twisted would send it at the reactor's next iteration, up to
213 ms later on a loaded machine, which put five arrivals in 0.964 s). Hosts the pacer does not
pace (the Slack webhook, the accounts server of a real tenant) pass at once.

**The token goes on at write time.** A request's OAuth token is the token middleware's current
one *when the request is written*, after its pace wait, not the one it was given when it entered
the downloader (a pacer backing off made requests already holding a token wait past its
expiry). The middleware (:class:`pmp_scrapy.middlewares.auth.TokenMiddleware`) still owns the
token and still sets the header (so another handler works as before); this handler marks each
such request, and just before it is written asks the middleware for the header
(:meth:`~pmp_scrapy.middlewares.auth.TokenMiddleware.header_at_write`, which also records the
token's generation on the request for the 401 path). The mark (``WRITE_MARK``, a serial number,
no secret) never leaves the process.

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

import itertools
import math
from collections.abc import Callable, Hashable
from time import monotonic
from typing import TYPE_CHECKING, Any

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from twisted.internet.defer import Deferred
from twisted.web.client import HTTPConnectionPool

from pmp_scrapy.extensions.pacer import Pacer, max_in_flight
from pmp_scrapy.http_write import WriteTimeFactory, WriteTimeProtocol

if TYPE_CHECKING:
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from twisted.internet.interfaces import IStreamClientEndpoint
    from twisted.web._newclient import HTTP11ClientProtocol
    from twisted.web._newclient import Request as TxRequest

    from pmp_scrapy.middlewares.auth import TokenMiddleware

#: the header that tells the write-time hook which Scrapy request it is writing (removed before)
WRITE_MARK = b"X-Pmp-Write-Mark"


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

    _factory = WriteTimeFactory

    def __init__(self, reactor: Any, spacing: Callable[[str], float], persistent: bool = True,
                 clock: Callable[[], float] = monotonic,
                 before_write: Callable[[TxRequest], None] | None = None) -> None:
        super().__init__(reactor, persistent=persistent)
        self.spacing = spacing
        self._clock = clock
        self._before_write = before_write
        self._reserved: dict[str, float] = {}  # host -> its next free turn (monotonic)

    def getConnection(self, key: Hashable, endpoint: IStreamClientEndpoint) -> Deferred[HTTP11ClientProtocol]:
        return super().getConnection(key, endpoint).addCallback(self._in_turn, host_of(key))

    def _in_turn(self, protocol: HTTP11ClientProtocol, host: str) -> HTTP11ClientProtocol | Deferred[HTTP11ClientProtocol]:
        if self._take_turn(host):
            return self._armed(protocol, host)
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
                waiting.callback(self._armed(protocol, host))
            else:  # another request took the turn first: the next one
                self._wait(protocol, host, waiting, pending)
        due = next_turn(self._clock(), self._reserved.get(host, -math.inf), self.spacing(host))
        pending[:] = [self._reactor.callLater(max(0.0, due - self._clock()), wake)]

    def _armed(self, protocol: HTTP11ClientProtocol, host: str) -> HTTP11ClientProtocol:
        """``protocol``, set to run :meth:`before_write` and :meth:`written` around its request
        (a paced host's: the agent writes the request as it receives the connection)."""
        if isinstance(protocol, WriteTimeProtocol) and self.spacing(host) > 0:
            protocol.arm(self, host)
        return protocol

    def before_write(self, host: str, request: TxRequest) -> None:
        """After the request's turn came, just before it is written: the handler's last word."""
        if self._before_write is not None:
            self._before_write(request)

    def written(self, host: str) -> None:
        """The request was written and flushed: the next turn is one spacing from now (later than
        the turn's own reservation if the write took time)."""
        spacing = self.spacing(host)
        if spacing > 0:
            self._reserved[host] = max(self._reserved.get(host, -math.inf), self._clock() + spacing)

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
        pool = SpacedPool(reactor, self._spacing, persistent=True, before_write=self._before_write)
        pool.retryAutomatically = False
        pool.maxPersistentPerHost = max(stock.maxPersistentPerHost, max_in_flight(crawler.settings))
        self._pool = pool
        self._pacer: Pacer | None = None
        self._tokens: TokenMiddleware | None = None
        self._marks = itertools.count(1)
        self._writing: dict[bytes, Request] = {}  # WRITE_MARK -> the request it marks

    async def download_request(self, request: Request) -> Response:
        tokens = self._token_middleware()
        if tokens is None or not tokens.attaches(request):
            return await super().download_request(request)
        mark = str(next(self._marks)).encode("ascii")
        self._writing[mark] = request
        request.headers[WRITE_MARK] = mark  # copied into the request the agent writes
        try:
            return await super().download_request(request)
        finally:
            self._writing.pop(mark, None)
            request.headers.pop(WRITE_MARK, None)

    def _before_write(self, request: TxRequest) -> None:
        marks = request.headers.getRawHeaders(WRITE_MARK)
        if not marks:
            return
        request.headers.removeHeader(WRITE_MARK)
        marked = self._writing.pop(marks[0], None)
        header = self._tokens.header_at_write(marked) if marked is not None and self._tokens else None
        if header is not None:
            request.headers.setRawHeaders(b"Authorization", [header])

    def _token_middleware(self) -> TokenMiddleware | None:
        """The crawl's token middleware (``None`` without one: PMP_AUTH=apikey)."""
        if self._tokens is None:
            from pmp_scrapy.middlewares.auth import TokenMiddleware

            try:
                engine = self._crawler.engine
            except RuntimeError:  # no crawl (a handler used on its own): no token to attach
                return None
            downloader = getattr(engine, "downloader", None)
            manager = getattr(downloader, "middleware", None)
            self._tokens = next((m for m in getattr(manager, "middlewares", ())
                                 if isinstance(m, TokenMiddleware)), None)
        return self._tokens

    def _spacing(self, host: str) -> float:
        if self._pacer is None:
            self._pacer = self._crawler.get_extension(Pacer)
            if self._pacer is None:
                return 0.0
        return self._pacer.spacing(host)
