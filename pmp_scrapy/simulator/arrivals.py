"""When a request reached the simulated host: the kernel's receive time of its first bytes.

The simulator serves each connection in its own thread. Stamping a request once that thread
has woken, read and parsed its headers and taken the simulator's lock stamps it late by however
long a busy machine (CPU-starved threads, the GIL handed between a dozen of them) took to get
there: measured at up to tens of milliseconds under CPU load, enough to crowd one arrival into
the one-second window of the next four and refuse it though the client spaced them fine. So
the connection's reader asks the kernel, for every ``recv``, when the data it returns arrived
(``SO_TIMESTAMPNS``: the time the loopback delivered it, i.e. when the client's write reached
the socket), and a request's arrival is the receive time of the first read that brought its
bytes. Where the kernel gives no timestamp (another OS), the read's own time stands in.

Arrivals are monotonic seconds (the kernel's stamp is wall-clock time, converted at once).
"""

from __future__ import annotations

import socket
import struct
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if hasattr(socket, "SO_TIMESTAMP") else None)
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


def enable_receive_stamps(sock: socket.socket) -> bool:
    """Ask the kernel to stamp what ``sock`` receives (on a listening socket: every connection
    it accepts inherits it); whether it could."""
    if SO_TIMESTAMPNS is None or not hasattr(sock, "recvmsg_into"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


def kernel_stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    """The receive time (monotonic) in a ``recvmsg`` answer's ancillary data, if any."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            sec, nsec = _TIMESPEC.unpack_from(data)
            if sec or nsec:
                return time.monotonic() - (time.time() - (sec + nsec / 1e9))
    return None


class StampedReader(socket.SocketIO):
    """A socket's raw reader that notes when the data of each read arrived. ``mark`` starts a
    request; ``arrival`` is then the receive time of the first read since, or of the last read
    before it when the request's bytes were already buffered (read with the previous one)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, "rb")
        sock._io_refs += 1  # type: ignore[attr-defined]  # as socket.makefile does: close() drops it
        self._stamps = _ANCILLARY > 0 and enable_receive_stamps(sock)
        self._last: float | None = None
        self._first_since_mark: float | None = None

    def mark(self) -> None:
        """A new request starts here."""
        self._first_since_mark = None

    @property
    def arrival(self) -> float | None:
        """When the current request's first bytes arrived (monotonic), if any were read."""
        return self._first_since_mark if self._first_since_mark is not None else self._last

    def readinto(self, b: bytearray | memoryview) -> int | None:  # type: ignore[override]
        """Read as ``SocketIO`` does, noting when the bytes reached the socket: the kernel's
        receive stamp where it gives one, else the time of the read."""
        if not self._stamps:
            n = super().readinto(b)
            if n:
                self._note(time.monotonic())
            return n
        self._checkClosed()  # type: ignore[attr-defined]
        self._checkReadable()  # type: ignore[attr-defined]
        if self._timeout_occurred:  # type: ignore[attr-defined,has-type]
            raise OSError("cannot read from timed out object")
        try:
            n, ancillary, _flags, _addr = self._sock.recvmsg_into([b], _ANCILLARY)  # type: ignore[attr-defined]
        except TimeoutError:
            self._timeout_occurred = True
            raise
        except BlockingIOError:
            return None
        if n:
            stamp = kernel_stamp(ancillary)
            self._note(stamp if stamp is not None else time.monotonic())
        return n

    def _note(self, stamp: float) -> None:
        self._last = stamp
        if self._first_since_mark is None:
            self._first_since_mark = stamp
