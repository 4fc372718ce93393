"""One sweeping run per tenant: a lock held for the run's life, freed by the OS or the database
when the process dies (contract, "One run per tenant").

A tenant is one PMP server with one set of credentials; :func:`tenant_key` names it by host and
a fingerprint of the client id or API key, never the secret itself.

- **PostgreSQL**: a session-level advisory lock (``pg_try_advisory_lock(namespace, key)``) on a
  dedicated connection kept open, in autocommit, for the run. The holder is described by that
  connection itself: its ``application_name`` (``pmp_scrapy lock <pid>@<host>``) and
  ``backend_start`` in ``pg_stat_activity``, found through ``pg_locks``; no table is needed.
  The session asks for TCP keepalives so the server frees the lock within about 90 s when the
  holder's host vanishes (a process that dies closes its socket: the lock goes at once).
- **SQLite**: ``fcntl.flock`` on a file beside the database, one per tenant
  (``<db>.<tenant digest>.lock``, mode 0600; several tenants may share one database), holding
  the holder's tenant, host, pid and start time (ISO UTC) as JSON. The file is never deleted:
  unlinking a lock file races with the next process opening it.
- In-memory SQLite: nothing to share, the lock is always free.

Reads nothing from Scrapy; writes no table (PostgreSQL) or only the lock file (SQLite).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage.engine import describe_error, safe_url, sqlite_path

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self

    from sqlalchemy import Connection, Engine

APPLICATION_PREFIX = "pmp_scrapy lock "
_PG_NAME_MAX = 63  # PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes


def fingerprint(value: str) -> str:
    """A stable, non-reversible name for a credential: 16 hex digits of its SHA-256."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()[:16]


def tenant_key(base_url: str, client_id_or_api_key: str) -> str:
    """``host[:port]/fingerprint``: one PMP server with one set of credentials."""
    parts = urlsplit(base_url.strip())
    host = (parts.hostname or "").lower()
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{host}/{fingerprint(client_id_or_api_key)}"


def advisory_key(namespace: str, value: str) -> tuple[int, int]:
    """The two non-negative int4 keys of a PostgreSQL advisory lock on ``value`` within
    ``namespace`` (non-negative: ``pg_locks`` shows them as unsigned oids)."""
    def key(name: str) -> int:
        return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF
    return key(namespace), key(value)


@dataclass(frozen=True)
class LockHeld:
    """Another run holds the tenant's lock. Fields are ``None`` where the holder cannot be read
    (it is still writing its record, or the database hides another role's session)."""

    since: datetime | None
    host: str | None
    pid: int | None

    def describe(self) -> str:
        """One line naming the holder, for the ``run_skipped`` log event."""
        since = self.since.strftime("%Y-%m-%dT%H:%M:%SZ") if self.since else "an unknown time"
        who = f"pid {self.pid}" if self.pid is not None else "an unknown process"
        return f"held since {since} by {who} on {self.host or 'an unknown host'}"


class TenantLock:
    """The tenant's lock, held until :meth:`release` (or the process's death). A context
    manager; releasing twice is harmless."""

    def __init__(self, release: Any = None) -> None:
        self._release = release

    def release(self) -> None:
        """Give the lock up (the next run may start)."""
        release, self._release = self._release, None
        if release is not None:
            release()

    @property
    def held(self) -> bool:
        """Whether this object still holds the lock."""
        return self._release is not None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()


def acquire_tenant_lock(database_url: str, tenant: str) -> TenantLock | LockHeld:
    """Take ``tenant``'s lock without waiting: a :class:`TenantLock`, or :class:`LockHeld`
    describing the run that has it. Raises :class:`StorageError` (one line) when the database
    or the lock file cannot be reached."""
    if make_url(database_url).get_backend_name() == "sqlite":
        path = sqlite_path(database_url)
        return TenantLock() if path is None else _acquire_file(lock_path(path, tenant), tenant)
    return _acquire_advisory(database_url, tenant)


def _holder() -> tuple[str, int]:
    return socket.gethostname(), os.getpid()


# --- SQLite: a file lock -------------------------------------------------------------------------

def lock_path(database: Path, tenant: str) -> Path:
    """The lock file of ``tenant`` beside the SQLite ``database``."""
    return database.with_name(f"{database.name}.{fingerprint(tenant)[:12]}.lock")


def _acquire_file(path: Path, tenant: str) -> TenantLock | LockHeld:
    """``flock`` the lock file, which the holder removes when it lets go (nothing is left beside
    the database); a lock taken on a file another run removed meanwhile is taken again."""
    for _ in range(5):
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot open the run lock {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with os.fdopen(fd, "rb") as held:
                return _file_holder(held.read(4096))
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed this file as we opened it: lock the one now there
    else:
        raise StorageError(f"cannot take the run lock {path}: it keeps being replaced")
    host, pid = _holder()
    record = {"tenant": tenant, "host": host, "pid": pid,
              "since": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode("utf-8") + b"\n", 0)
    os.fchmod(fd, 0o600)

    def release() -> None:
        with contextlib.suppress(OSError):
            path.unlink()  # before the flock goes: a run that opens it now sees it replaced
        os.close(fd)  # closing the only descriptor drops the flock

    return TenantLock(release)


def _file_holder(raw: bytes) -> LockHeld:
    try:
        record = json.loads(raw)
    except ValueError:
        record = {}
    if not isinstance(record, dict):
        record = {}
    since = _parse_time(record.get("since"))
    pid = record.get("pid")
    host = record.get("host")
    return LockHeld(since, host if isinstance(host, str) else None, pid if isinstance(pid, int) else None)


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value)  # Python 3.11 reads the trailing Z
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


# --- PostgreSQL: a session advisory lock ----------------------------------------------------------

TENANT_NAMESPACE = "pmp_scrapy tenant run"

_HOLDER_SQL = text(
    "SELECT a.application_name, a.backend_start FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :ns AND l.objid = :key "
    "AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def application_name(host: str, pid: int) -> str:
    """How the lock's session names its holder in ``pg_stat_activity``."""
    return f"{APPLICATION_PREFIX}{pid}@{host}"[:_PG_NAME_MAX]


def _acquire_advisory(database_url: str, tenant: str) -> TenantLock | LockHeld:
    params = dict(zip(("ns", "key"), advisory_key(TENANT_NAMESPACE, tenant)))
    host, pid = _holder()
    engine = create_engine(database_url, poolclass=NullPool, connect_args={
        "application_name": application_name(host, pid), "connect_timeout": 10,
        # the server drops the session (and the lock) ~90 s after the holder's host vanishes
        "options": "-c tcp_keepalives_idle=60 -c tcp_keepalives_interval=10 -c tcp_keepalives_count=3",
    })
    conn: Connection | None = None
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        # an idle session timeout (PostgreSQL 14+) set by the DBA would end the lock early
        conn.execute(text("SELECT set_config('idle_session_timeout', '0', false) "
                          "WHERE current_setting('server_version_num')::int >= 140000"))
        if conn.execute(text("SELECT pg_try_advisory_lock(:ns, :key)"), params).scalar():
            return TenantLock(lambda: _release_advisory(engine, conn, params))
        row = conn.execute(_HOLDER_SQL, params).first()
    except SQLAlchemyError as exc:
        _close(engine, conn)
        raise StorageError(f"cannot take the run lock in {safe_url(database_url)}: {describe_error(exc)}") from None
    _close(engine, conn)
    return _session_holder(row)


def _close(engine: Engine, conn: Connection | None) -> None:
    if conn is not None:
        with contextlib.suppress(SQLAlchemyError):
            conn.close()
    engine.dispose()


def _release_advisory(engine: Engine, conn: Connection, params: dict[str, int]) -> None:
    with contextlib.suppress(SQLAlchemyError):  # a lost connection has freed the lock already
        conn.execute(text("SELECT pg_advisory_unlock(:ns, :key)"), params)
    _close(engine, conn)


def _session_holder(row: Any) -> LockHeld:
    if row is None:  # released between the try and the look-up
        return LockHeld(None, None, None)
    name, started = row
    host, pid = None, None
    if isinstance(name, str) and name.startswith(APPLICATION_PREFIX):
        who = name[len(APPLICATION_PREFIX):]
        pid_text, _, host = who.partition("@")
        pid = int(pid_text) if pid_text.isdigit() else None
    since = started.astimezone(UTC) if isinstance(started, datetime) else None
    return LockHeld(since, host or None, pid)
