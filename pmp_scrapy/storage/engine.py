"""Opens the database: SQLAlchemy engine, SQLite file safety (parent directories, mode 0600,
WAL, busy timeout), and schema creation that tolerates concurrent jobs.

Concurrency (several jobs, e.g. one per MSP customer, writing one database):

- SQLite: pysqlite's own transaction handling is switched off and every transaction is begun
  explicitly. Write transactions (``WRITE`` execution option, see :func:`writer`) start with
  ``BEGIN IMMEDIATE``: they take SQLite's single write lock up front and wait for it up to the
  busy timeout, instead of starting as readers and failing with "database is locked" when
  they try to upgrade (the busy timeout does not apply to that upgrade in WAL mode). Readers
  never wait (WAL). Schema creation runs in one such transaction, so two jobs creating a new
  file at once do not race on ``CREATE TABLE``.
- PostgreSQL: sessions run in UTC (server-side ``CURRENT_TIMESTAMP`` defaults match the naive
  UTC the code writes), schema creation is serialised by a transaction-scoped advisory lock,
  and ``application_name`` names the job in ``pg_stat_activity``.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
import zlib
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage.schema import add_missing_columns, metadata
from pmp_scrapy.storage.views import create_views

logger = logging.getLogger(__name__)

_PRIVATE = stat.S_IRUSR | stat.S_IWUSR

WRITE = "pmp_write"
"""Execution option marking a connection whose transaction will write (SQLite: BEGIN IMMEDIATE)."""

SCHEMA_LOCK_KEY = zlib.crc32(b"pmp_scrapy schema")
SNAPSHOT_LOCK_KEY = zlib.crc32(b"pmp_scrapy snapshot ids")


def writer(engine: Engine) -> Engine:
    """A view of ``engine`` whose transactions are write transactions (same pool)."""
    return engine.execution_options(**{WRITE: True})


def is_transient(exc: BaseException) -> bool:
    """Whether a database error is a concurrency conflict that a fresh transaction can clear:
    a PostgreSQL deadlock, serialisation failure or lock timeout. (A locked SQLite database is
    not: the busy timeout has already been waited out, and that wait is the user's setting.)"""
    orig = getattr(exc, "orig", None) or exc
    return getattr(orig, "sqlstate", None) in ("40P01", "40001", "55P03")


def describe_error(exc: BaseException) -> str:
    """One line naming a database failure's cause, without SQL, parameters or passwords."""
    orig = getattr(exc, "orig", None) or exc
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}: {message}"[:300]


def safe_url(url: str) -> str:
    """The database URL with any password masked, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL, or ``None`` for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().resolve()


def make_private(path: Path) -> None:
    """chmod 0600 the SQLite file and its -wal/-shm companions that exist."""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            if candidate.exists() and stat.S_IMODE(candidate.stat().st_mode) != _PRIVATE:
                os.chmod(candidate, _PRIVATE)
        except OSError as exc:
            logger.warning("could not make %s private: %s", candidate.name, exc.strerror)


def _enable_wal(cursor: sqlite3.Cursor, busy_timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried within the busy timeout: while another job switches
    the same new file to WAL, SQLite answers "database is locked" at once, without waiting."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.05)


def _prepare_sqlite_file(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, _PRIVATE))
    except OSError as exc:
        raise StorageError(f"cannot create the database file {path}: {exc.strerror}") from None
    make_private(path)


def open_engine(url: str, *, busy_timeout: float = 15.0, create: bool = True) -> Engine:
    """Create the engine and, with ``create``, the tables that are absent.

    Raises :class:`StorageError` with a one-line cause when the database cannot be reached,
    created or written."""
    path = sqlite_path(url)
    if path is not None:
        if create:
            _prepare_sqlite_file(path)
        elif not path.exists():
            raise StorageError(f"no database at {path}")
    try:
        kwargs: dict = {"future": True}
        if path is not None:
            kwargs["connect_args"] = {"timeout": busy_timeout}
        else:
            kwargs["pool_pre_ping"] = True
            if make_url(url).get_backend_name() == "postgresql":
                kwargs["connect_args"] = {"options": "-c timezone=UTC", "application_name": "pmp_scrapy",
                                          "connect_timeout": 10}
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise StorageError(f"cannot open database {safe_url(url)}: {describe_error(exc)}") from None

    if path is not None:
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # Transactions are begun by _sqlite_begin, not implicitly by the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                if create:
                    _enable_wal(cursor, busy_timeout)
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                cursor.execute("PRAGMA synchronous=NORMAL")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    if create:
        try:
            with writer(engine).begin() as conn:
                if engine.dialect.name == "postgresql":
                    # Two jobs starting together would race on CREATE TABLE otherwise.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                metadata.create_all(conn, checkfirst=True)
                add_missing_columns(conn)
                create_views(conn)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StorageError(f"cannot prepare database {safe_url(url)}: {describe_error(exc)}") from None
        if path is not None:
            make_private(path)
    return engine
