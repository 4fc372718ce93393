"""The moment a request is written: its bytes flushed to the socket at once, and a hook just
before (the token) and just after (the next request's turn).

Twisted's transports buffer what a protocol writes and send it when the reactor next finds the
socket writable, after whatever else that iteration handles (a page's answer to parse, other
timers). On a loaded machine that is tens, at times hundreds, of milliseconds after the
connection pool gave the request its turn (measured against the kernel's receive stamps of the
simulator: up to 213 ms at load 10 on 2 CPUs, five PMP arrivals in 0.964 s). So a request
whose turn has come is written *and flushed* in the same call, and the next turn is counted
from after the flush (:class:`pmp_scrapy.http.SpacedPool`).

Not covered: a request on a new TLS connection leaves once its handshake is done, whenever
that is (its bytes wait in the TLS layer); the pool keeps persistent connections, so that is
the first requests of a run and those after a dropped connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.abstract import FileDescriptor

try:  # Scrapy's protocol (lenient header parsing) when it has one, else Twisted's
    from scrapy.core.downloader.handlers.http11 import _LenientHTTP11ClientFactory as _BaseFactory
    from scrapy.core.downloader.handlers.http11 import _LenientHTTP11ClientProtocol as _BaseProtocol
except ImportError:  # pragma: no cover - another Scrapy
    from twisted.web._newclient import HTTP11ClientProtocol as _BaseProtocol  # type: ignore[assignment]
    from twisted.web.client import _HTTP11ClientFactory as _BaseFactory  # type: ignore[assignment]

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred
    from twisted.internet.interfaces import IAddress
    from twisted.web._newclient import Request as TxRequest
    from twisted.web.iweb import IResponse

MAX_TRANSPORT_DEPTH = 4  # HTTP protocol -> TLS wrapper -> TCP connection, with room to spare


class WriteHooks(Protocol):
    """What a connection asks of its pool around writing a request."""

    def before_write(self, host: str, request: TxRequest) -> None:
        """Last changes to the request (its headers), after its turn came, before it is written."""
        ...

    def written(self, host: str) -> None:
        """The request was written and flushed."""
        ...


def flush(transport: Any) -> bool:
    """Send what ``transport`` (or the socket under it) buffered, now; whether nothing is left
    unsent. A send that fails is left for the reactor, which meets the same error and closes
    the connection as usual."""
    for _ in range(MAX_TRANSPORT_DEPTH):
        if transport is None:
            return False
        if isinstance(transport, FileDescriptor):
            if transport._tempDataLen or len(transport.dataBuffer) > transport.offset:
                transport.doWrite()
            return not transport._tempDataLen and len(transport.dataBuffer) <= transport.offset
        transport = getattr(transport, "transport", None)
    return False


class WriteTimeProtocol(_BaseProtocol):  # type: ignore[misc,valid-type]
    """Scrapy's HTTP/1.1 client protocol that, for a request the pool armed it for (``arm``),
    runs the pool's hooks around writing it and flushes it to the socket in between."""

    _hooks: WriteHooks | None = None
    _host = ""

    def arm(self, hooks: WriteHooks, host: str) -> None:
        """Run ``hooks`` around the next request written on this connection."""
        self._hooks, self._host = hooks, host

    def request(self, request: TxRequest) -> Deferred[IResponse]:
        hooks, self._hooks = self._hooks, None
        if hooks is None:
            return super().request(request)  # type: ignore[no-any-return]
        hooks.before_write(self._host, request)
        result = super().request(request)
        flush(self.transport)
        hooks.written(self._host)
        return result  # type: ignore[no-any-return]


class WriteTimeFactory(_BaseFactory):  # type: ignore[misc,valid-type]
    """Builds :class:`WriteTimeProtocol` connections for the pool."""

    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> WriteTimeProtocol:
        return WriteTimeProtocol(self._quiescentCallback)
