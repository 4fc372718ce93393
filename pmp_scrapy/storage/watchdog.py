"""Bounded database calls: every statement, commit, rollback and ping the driver makes runs under
a watchdog (one daemon thread for the process).

- After :data:`SLOW_AFTER` seconds without an answer, one ``db_waiting`` WARNING says the run is
  waiting for the database, and for how long it will (a lock held by another job is the usual
  cause; the wait itself is silent otherwise).
- On PostgreSQL, a call still unanswered ``give_up`` seconds after it began has its socket shut
  down: the driver fails at once with a connection error, the store turns it into one line
  naming the server (never the password), and the run stops with exit code 1. The server's own
  ``statement_timeout`` and ``lock_timeout`` fire first when the server answers; this catches
  the server (or a proxy, or the network) that stops answering while the TCP connection stays
  up, which no keepalive notices because the peer's kernel still acknowledges.
- SQLite needs no give-up: its busy timeout bounds every lock wait.

:func:`guard_dialect` wraps the dialect's ``do_execute``, ``do_executemany``,
``do_execute_no_params``, ``do_commit``, ``do_rollback`` and ``do_ping`` of one engine. A failure
of a call that waited at least :data:`SLOW_AFTER` seconds carries ``pmp_note`` (read by
:func:`pmp_scrapy.storage.engine.describe_error`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import make_url

from pmp_scrapy.storage.liveness import DEAD, watch

logger = logging.getLogger(__name__)

SLOW_AFTER = 2.0  # seconds without an answer before the run says it is waiting for the database
PROBE_AFTER = 1.0  # seconds without an answer before the server is probed (see liveness)
DEAD_GRACE = 0.5  # seconds call_within still waits once a database was found not answering
GRANULARITY = 0.05  # seconds: how late an alarm may run (the deadlines are seconds long)
_GUARDED = ("do_execute", "do_executemany", "do_execute_no_params", "do_commit", "do_rollback", "do_ping")


@dataclass(order=True)
class _Alarm:
    when: float
    seq: int
    action: Callable[[], None] = field(compare=False)
    armed: bool = field(default=True, compare=False)


class Watchdog:
    """Runs actions at deadlines unless they are disarmed first. An action runs under the
    watchdog's lock, so once :meth:`disarm` has returned, its action cannot run any more."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[_Alarm] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, delay: float, action: Callable[[], None]) -> _Alarm:
        alarm = _Alarm(time.monotonic() + delay, next(self._seq), action)
        with self._cond:
            heapq.heappush(self._heap, alarm)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="pmp-db-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0] is alarm:  # otherwise the thread already wakes before this deadline
                self._cond.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> None:
        with self._cond:
            alarm.armed = False

    def _loop(self) -> None:
        with self._cond:
            while True:
                while self._heap and not self._heap[0].armed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait(60)
                    continue
                delay = self._heap[0].when - time.monotonic()
                if delay > 0:
                    # at least GRANULARITY: thousands of statements a second arm as many alarms,
                    # and the thread wakes a few times a second, not once for each
                    self._cond.wait(max(delay, GRANULARITY))
                    continue
                alarm = heapq.heappop(self._heap)
                alarm.armed = False
                try:
                    alarm.action()
                except Exception:  # the watchdog must outlive any action
                    logger.debug("database watchdog action failed", exc_info=True)


WATCHDOG = Watchdog()


@dataclass
class Limits:
    """What one engine's calls may take: ``give_up`` None never cuts a connection (SQLite);
    ``address`` is the PostgreSQL server's TCP address to probe (None: not probed)."""

    server: str  # "PostgreSQL at host:5432" or "the SQLite database"
    timeout: float  # PMP_DB_TIMEOUT, for messages
    give_up: float | None
    hint: str  # what a long wait usually means
    address: tuple[str, int] | None = None
    #: the driver's error class for a call refused because the server was just found not answering
    refused: type[Exception] = ConnectionError


def _shutdown_socket(target: Any) -> bool:
    """Shut the PostgreSQL connection's socket down: the driver's blocked read returns at once."""
    pgconn = getattr(target, "pgconn", None) or getattr(getattr(target, "connection", None), "pgconn", None)
    try:
        fd = pgconn.socket  # type: ignore[union-attr]  # a cursor's or a connection's (psycopg 3)
    except Exception:  # noqa: BLE001 - closed already, or not psycopg
        return False
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
    return True


def _refuse_if_dead(limits: Limits) -> None:
    """Fail at once, without a round trip, while ``limits.server`` is remembered as not answering."""
    note = DEAD.note(limits.server) if limits.address else None
    if note is not None:
        exc = limits.refused(note)
        exc.pmp_note = note  # type: ignore[attr-defined]
        raise exc


def _guarded(method: Callable[..., Any], limits: Limits) -> Callable[..., Any]:
    def call(target: Any, *args: Any, **kwargs: Any) -> Any:
        _refuse_if_dead(limits)
        started = time.monotonic()
        cut: list[str] = []  # why the connection was cut, once it is
        finished = threading.Event()
        said: list[bool] = []
        lock = threading.Lock()  # a cut and the call's end never cross

        def slow() -> None:
            if said:
                return
            said.append(True)
            logger.warning("waiting for the database: %s has not answered for %.0f s (%s); %s",
                           limits.server, time.monotonic() - started, limits.hint,
                           f"giving up after {limits.give_up:.0f} s, or once it does not answer a probe "
                           f"within {limits.timeout:g} s" if limits.give_up
                           else f"waiting up to {limits.timeout:g} s (PMP_DB_TIMEOUT)",
                           extra={"event_type": "db_waiting", "waited_s": SLOW_AFTER,
                                  "timeout_s": limits.timeout})

        def give_up(why: str) -> None:
            with lock:
                if finished.is_set() or cut:
                    return
                waited = time.monotonic() - started
                cut.append(f"{limits.server} did not answer within {waited:.0f} s{why}; the connection was closed "
                           f"(PMP_DB_TIMEOUT={limits.timeout:g})")
                _shutdown_socket(target)

        def silent() -> None:  # the probe got no answer either: the server, not this call, is stuck
            slow()
            give_up(f", nor a probe within {limits.timeout:g} s")
            if cut:  # the calls the stopping run still makes fail at once, saying the same
                DEAD.mark(limits.server, limits.timeout, cut[0])

        def probe() -> None:
            if limits.address is not None and not finished.is_set():
                watch(limits.address, limits.timeout, finished, silent)

        # said only when the wait can go on well past it
        alarms = [WATCHDOG.arm(SLOW_AFTER, slow)] if (limits.give_up or limits.timeout) > SLOW_AFTER + 0.2 else []
        if limits.give_up:
            alarms.append(WATCHDOG.arm(limits.give_up, lambda: give_up("")))
        if limits.address is not None:
            alarms.append(WATCHDOG.arm(min(PROBE_AFTER, limits.timeout), probe))
        try:
            return method(target, *args, **kwargs)
        except Exception as exc:
            waited = time.monotonic() - started
            if cut:
                exc.pmp_note = cut[0]  # type: ignore[attr-defined]
            elif waited >= SLOW_AFTER:
                exc.pmp_note = (f"waited {waited:.1f}".rstrip("0").rstrip(".")  # type: ignore[attr-defined]
                                + f" s, PMP_DB_TIMEOUT={limits.timeout:g}")
            raise
        finally:
            with lock:
                finished.set()
            for alarm in alarms:
                WATCHDOG.disarm(alarm)

    return call


def _connecting(connect: Callable[..., Any], limits: Limits) -> Callable[..., Any]:
    """A connection attempt that times out names the server (the driver's message does not),
    and the server is then remembered as not answering; while it is, no attempt is made."""
    def call(*args: Any, **kwargs: Any) -> Any:
        _refuse_if_dead(limits)
        try:
            return connect(*args, **kwargs)
        except Exception as exc:
            if "timeout" in type(exc).__name__.lower() or "timeout expired" in str(exc):
                exc.pmp_note = (f"{limits.server} did not answer within {limits.timeout:g} s while connecting "  # type: ignore[attr-defined]
                                f"(PMP_DB_TIMEOUT={limits.timeout:g})")
                if limits.address is not None:
                    DEAD.mark(limits.server, limits.timeout, exc.pmp_note)  # type: ignore[attr-defined]
            raise

    return call


def guard_dialect(dialect: Any, limits: Limits) -> None:
    """Put every driver call of ``dialect`` (one engine's own instance) under the watchdog."""
    dbapi = getattr(dialect, "loaded_dbapi", None)
    limits.refused = getattr(dbapi, "OperationalError", None) or limits.refused
    for name in _GUARDED:
        method = getattr(dialect, name, None)
        if method is not None:
            setattr(dialect, name, _guarded(method, limits))
    if limits.give_up:
        dialect.connect = _connecting(dialect.connect, limits)


# --- PostgreSQL's own limits, set per session -------------------------------------------------------------

def postgres_connect_args(url: str, timeout: float) -> dict:
    """Session settings and socket limits for psycopg; what the URL sets itself wins."""
    given = set(make_url(url).query)
    wait = max(round(timeout), 1)
    args: dict = {"application_name": "pmp_scrapy", "connect_timeout": max(wait, 2),
                  "keepalives": 1, "keepalives_idle": wait, "keepalives_interval": max(wait // 3, 1),
                  "keepalives_count": 3, "tcp_user_timeout": int(give_up_after(timeout) * 1000)}
    args = {key: value for key, value in args.items() if key not in given}
    args["options"] = "-c timezone=UTC"
    return args


def give_up_after(timeout: float) -> float:
    """Seconds a PostgreSQL call may go unanswered before its connection is cut: the statement
    timeout (twice ``timeout``) plus ``timeout``."""
    return 3 * timeout


def postgres_session(dbapi_connection, timeout: float, limits: Limits) -> None:  # type: ignore[no-untyped-def]
    """lock_timeout and statement_timeout for this session, unless the database or role sets
    its own (not 0); a longer statement_timeout of theirs also lengthens the client's limit."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SELECT name, setting FROM pg_settings WHERE name IN ('lock_timeout', 'statement_timeout')")
        settings = {name: int(value) for name, value in cursor.fetchall()}  # milliseconds
        if not settings.get("lock_timeout"):
            cursor.execute(f"SET lock_timeout = {int(timeout * 1000)}")
        statement_ms = settings.get("statement_timeout") or 0
        if not statement_ms:
            cursor.execute(f"SET statement_timeout = {int(2 * timeout * 1000)}")
        elif limits.give_up is not None:
            limits.give_up = max(limits.give_up, statement_ms / 1000 + timeout)
    finally:
        cursor.close()
    dbapi_connection.commit()


def call_within(fn: Callable[[], Any], seconds: float) -> bool:
    """Run ``fn`` in a daemon thread and wait at most ``seconds`` for it: ``True`` when it returned
    (its exception, if any, is raised here), ``False`` when it is still waiting (for a database
    that stopped answering, say; the thread is left to the process's exit). While a database of
    this process is remembered as not answering (:data:`~pmp_scrapy.storage.liveness.DEAD`), the
    wait is cut to :data:`DEAD_GRACE` seconds: that database would not answer ``fn`` either."""
    started = time.monotonic()
    done = threading.Event()
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="pmp-bounded-call", daemon=True).start()
    while not done.wait(0.05):
        waited = time.monotonic() - started
        if waited >= seconds or (waited >= DEAD_GRACE and DEAD.any()):
            return False
    if failure:
        raise failure[0]
    return True
