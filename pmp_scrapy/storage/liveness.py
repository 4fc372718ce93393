"""Is the PostgreSQL server still there? A probe beside a call that has gone unanswered, and the
servers found not answering.

A statement may legitimately run for up to ``statement_timeout`` (twice ``PMP_DB_TIMEOUT``), and
while it runs the server sends nothing, so silence on the connection proves nothing. A second,
tiny conversation does: :func:`server_answers` opens a TCP connection and sends PostgreSQL's
8-byte SSLRequest, which the server (its postmaster, or a pooler in front of it) answers with one
byte at once however busy it is, before any authentication and without an entry in its log. No
answer within ``PMP_DB_TIMEOUT``: the server, a proxy or the network path stopped answering, and
the call can be given up at once instead of after its full limit.

A server found not answering is remembered (:data:`DEAD`) for ``PMP_DB_TIMEOUT`` seconds, so the
calls a stopping run still makes (a reconnect after the cut, recording the run, releasing the run
lock) fail at once instead of each waiting the timeout again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")  # length, then the SSLRequest code


def server_answers(address: tuple[str, int], timeout: float) -> bool:
    """Whether a PostgreSQL server at ``address`` answers an SSLRequest within ``timeout`` seconds
    in all (connecting included). Reads nothing but that one byte and closes the connection."""
    deadline = time.monotonic() + timeout
    try:
        with socket.create_connection(address, timeout=timeout) as sock:
            sock.sendall(SSL_REQUEST)
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            return len(sock.recv(1)) == 1
    except OSError:  # refused, unreachable, reset, or no answer in time
        return False


class DeadServers:
    """Servers found not answering, each for ``hold`` seconds from when it was found."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._until: dict[str, tuple[float, str]] = {}  # server -> (until, what was found)

    def mark(self, server: str, hold: float, note: str) -> None:
        """Remember that ``server`` did not answer (``note`` says how), for ``hold`` seconds."""
        with self._lock:
            self._until[server] = (time.monotonic() + hold, note)

    def note(self, server: str) -> str | None:
        """How ``server`` was found not answering, while that is remembered; else ``None``."""
        with self._lock:
            found = self._until.get(server)
            if found is None or found[0] < time.monotonic():
                self._until.pop(server, None)
                return None
            return found[1]

    def any(self) -> bool:
        """Whether any server is remembered as not answering now."""
        with self._lock:
            now = time.monotonic()
            return any(until >= now for until, _ in self._until.values())

    def clear(self) -> None:
        with self._lock:
            self._until.clear()


DEAD = DeadServers()


def watch(address: tuple[str, int], timeout: float, finished: threading.Event, on_silence: Callable[[], None],
          every: float | None = None) -> threading.Thread:
    """Probe ``address`` until ``finished`` is set, in a daemon thread: each probe waits up to
    ``timeout``; a probe that gets no answer calls ``on_silence`` (once) and ends the watch. A
    server that answers is probed again ``every`` seconds (default: half the timeout, at least 1 s)."""
    pause = every if every is not None else max(timeout / 2, 1.0)

    def loop() -> None:
        while not finished.is_set():
            if not server_answers(address, timeout):
                if not finished.is_set():
                    on_silence()
                return
            finished.wait(pause)

    thread = threading.Thread(target=loop, name="pmp-db-probe", daemon=True)
    thread.start()
    return thread
