"""The HTTP/1.1 download handler for the PMP host: Scrapy's, minus Twisted's silent re-send.

Twisted's ``HTTPConnectionPool`` retries an idempotent request once, at once and on a new
connection, when a persistent connection it reused was closed by the server before any
answer (``retryAutomatically``). Scrapy leaves that on, so such a request reaches the server
twice, 1 ms apart, outside ``DOWNLOAD_DELAY``, the retry middleware and every stat: the
contract's "at most 4 a second as the server sees them" breaks. With it off, the request fails
with a connection error (``DownloadFailedError`` wrapping ``ResponseNeverReceived``), which
the retry policy retries, counted and spaced like any other failure.

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

from typing import TYPE_CHECKING

from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler

from pmp_scrapy.extensions.pacer import max_in_flight

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


class NoSilentRetryDownloadHandler(HTTP11DownloadHandler):
    """Scrapy's HTTP/1.1 handler whose connection pool never re-sends a request by itself and
    keeps a connection for each request the pacer may have in flight."""

    def __init__(self, crawler: Crawler) -> None:
        super().__init__(crawler)
        self._pool.retryAutomatically = False
        self._pool.maxPersistentPerHost = max(self._pool.maxPersistentPerHost, max_in_flight(crawler.settings))
