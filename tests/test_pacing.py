"""Pace: the rate limit kept busy at any latency and never exceeded (issue 15).

- the download handler: a request on a reused connection that the server closed is never
  re-sent silently (a local server of this module that drops every second request of a
  connection);
- ``pmp_scrapy.pacing``: the pure decisions (in-flight target, backoff, recovery), in ms;
- the ``Pacer`` extension built with ``get_crawler`` and fed signals, no crawl;
- real crawls against the simulator with latency, arrivals counted as the server saw them.

Components are enabled here through settings overrides, so the tests run before settings.py
registers them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import pytest_twisted
from scrapy import Request
from scrapy.core.downloader.handlers.http11 import HTTP11DownloadHandler
from scrapy.exceptions import DownloadFailedError
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.test import get_crawler

from pmp_scrapy.http import NoSilentRetryDownloadHandler

HANDLER = "pmp_scrapy.http.NoSilentRetryDownloadHandler"
HANDLERS = {"http": HANDLER, "https": HANDLER}


# --- the download handler ---------------------------------------------------------------------------

@dataclass
class DroppingServer:
    """Answers the first request of each connection (keep-alive) and closes the connection
    after reading any later one, without answering: a server dropping a reused connection.
    ``arrivals`` records (connection number, request number on it) as requests are read."""

    arrivals: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/"
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        connection = 0
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            connection += 1
            threading.Thread(target=self._serve, args=(conn, connection), daemon=True).start()

    def _serve(self, conn: socket.socket, connection: int) -> None:
        with conn:
            buffer, served = b"", 0
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                served += 1
                with self._lock:
                    self.arrivals.append((connection, served))
                if served > 1:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n{}")

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def dropping_server() -> Iterator[DroppingServer]:
    server = DroppingServer()
    yield server
    server.close()


async def second_request_on_a_reused_connection(
        handler_class: type[HTTP11DownloadHandler], server: DroppingServer) -> BaseException | None:
    """Download twice through one handler; the second goes out on the pooled connection."""
    handler = handler_class(get_crawler(settings_dict={"DOWNLOAD_HANDLERS": HANDLERS}))
    try:
        first = await handler.download_request(Request(server.url))
        assert first.status == 200
        try:
            await handler.download_request(Request(server.url))
        except Exception as exc:  # noqa: BLE001 - the outcome under test
            return exc
        return None
    finally:
        await handler.close()


@deferred_f_from_coro_f
async def test_a_dropped_reused_connection_fails_once_without_a_silent_resend(
        dropping_server: DroppingServer) -> None:
    error = await second_request_on_a_reused_connection(NoSilentRetryDownloadHandler, dropping_server)
    assert isinstance(error, DownloadFailedError), error  # retried by the retry policy
    assert dropping_server.arrivals == [(1, 1), (1, 2)]  # one arrival for the second request


@deferred_f_from_coro_f
async def test_scrapys_stock_handler_resends_silently(dropping_server: DroppingServer) -> None:
    """Why the handler exists: Twisted re-sends the dropped request on a new connection."""
    error = await second_request_on_a_reused_connection(HTTP11DownloadHandler, dropping_server)
    assert error is None  # the re-sent copy was answered, and nobody counted it
    assert dropping_server.arrivals == [(1, 1), (1, 2), (2, 1)]  # two arrivals for one request
