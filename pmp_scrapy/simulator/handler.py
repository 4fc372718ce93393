"""The HTTP side: a ThreadingHTTPServer whose handler parses requests, lets the Simulator
answer them, sleeps out the answer's latency in its own thread, records and sends it."""

from __future__ import annotations

import contextlib
import io
import itertools
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .api import route_kind
from .arrivals import StampedReader, enable_receive_stamps
from .records import Incoming, Meta, RecordedRequest, record_of
from .replies import Reply


class Answerer(Protocol):
    """What the handler needs of the Simulator."""

    def handle(self, inc: Incoming) -> tuple[Reply, Meta]:
        """Answer one recorded request."""
        ...

    def control(self, method: str, path: str, body: bytes) -> Reply:
        """Answer one unrecorded /_sim/ request."""
        ...

    def record(self, rec: RecordedRequest) -> None:
        """Append to the request record."""
        ...


class SimulatorHTTPServer(ThreadingHTTPServer):
    """One thread per connection; knows its open connections so ``stop`` can end them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # socketserver's 5 would make a burst of connects wait a second

    def __init__(self, address: tuple[str, int], sim: Answerer) -> None:
        self.sim = sim
        self.open_connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        self._serials = itertools.count(1)
        super().__init__(address, _Handler)
        enable_receive_stamps(self.socket)  # from the first byte of every accepted connection on

    def next_connection_serial(self) -> int:
        """1, 2, 3 ... for each accepted connection."""
        with self.conn_lock:
            return next(self._serials)

    def close_all_connections(self) -> None:
        """Shut down every keep-alive connection so handler threads end promptly."""
        with self.conn_lock:
            conns = list(self.open_connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "PMP-Simulator/1.0"
    sys_version = ""
    timeout = 120  # idle keep-alive connections are closed after this many seconds
    server: SimulatorHTTPServer

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the stock reader: replaced by one that knows when each request arrived
        self.reader = StampedReader(self.connection)
        self.rfile = io.BufferedReader(self.reader)
        self.connection_serial = self.server.next_connection_serial()
        self.served = 0  # requests read on this connection so far
        with self.server.conn_lock:
            self.server.open_connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.conn_lock:
                self.server.open_connections.discard(self.connection)

    def handle_one_request(self) -> None:
        """Read and serve one request; its arrival is when its first bytes reached the socket."""
        self.reader.mark()
        super().handle_one_request()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default per-request stderr logging."""

    def do_GET(self) -> None:
        """Serve a GET."""
        self._dispatch("GET")

    def do_POST(self) -> None:
        """Serve a POST."""
        self._dispatch("POST")

    def do_PUT(self) -> None:
        """Refuse a PUT (405)."""
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        """Refuse a DELETE (405)."""
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = 0
        body = self.rfile.read(length) if length > 0 else b""
        reused = self.served > 0
        self.served += 1
        sim = self.server.sim
        if split.path.startswith("/_sim/"):
            self._write(sim.control(method, split.path, body))
            return
        form: dict[str, str] = {}
        if body and "application/x-www-form-urlencoded" in self.headers.get("Content-Type", ""):
            form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace"),
                                                  keep_blank_values=True).items()}
        incoming = Incoming(method, split.path, query, {k.lower(): v for k, v in self.headers.items()},
                            form, route_kind(method, split.path), self.connection_serial, reused,
                            self.reader.arrival)
        reply, meta = sim.handle(incoming)
        if reply.delay > 0:
            time.sleep(reply.delay)  # in this connection's thread: other requests overlap
        # Recorded before the client can see the answer, so a client reading the record right
        # after its answer finds its request there.
        sim.record(record_of(incoming, meta, reply, time.monotonic()))
        self._write(reply)

    def _write(self, reply: Reply) -> None:
        """Send ``reply``, or close the connection without an answer if the reply says so."""
        if reply.drop:
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)
        except OSError:  # the client went away; nothing to answer
            self.close_connection = True


def serve(sim: Answerer, host: str, port: int) -> tuple[SimulatorHTTPServer, threading.Thread]:
    """Bind ``host:port`` and serve ``sim`` in a daemon thread."""
    server = SimulatorHTTPServer((host, port), sim)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"pmp-simulator-{server.server_address[1]}", daemon=True)
    thread.start()
    return server, thread
