"""Opens the database: SQLAlchemy engine, SQLite file safety (parent directories, mode 0600,
WAL, busy timeout), bounded waits, schema creation that tolerates concurrent jobs and the
schema check (:mod:`pmp_scrapy.storage.schema_check`), all before the first page is fetched.

Every wait for the database is bounded by one timeout, ``PMP_DB_TIMEOUT`` (``timeout`` here):

- SQLite: the busy timeout, waited once at open (the WAL switch and the schema transaction
  share it) and once per write transaction after that.
- PostgreSQL: ``connect_timeout``; ``lock_timeout`` (the timeout) and ``statement_timeout``
  (twice the timeout) unless the database or role sets its own; TCP keepalives and
  ``tcp_user_timeout``; and client-side limits (:mod:`pmp_scrapy.storage.watchdog`): a call
  unanswered for a second has the server probed beside it (:mod:`pmp_scrapy.storage.liveness`),
  and is cut once a probe gets no answer within the timeout, or in any case after
  ``statement_timeout`` + the timeout: a server that stops answering while its TCP connection
  stays up ends the run about one timeout after it stopped, not one per remaining call.

A file that is not an SQLite database is refused before anything is changed (not even its
mode), and a directory SQLite cannot create its journal in is named as such.

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

import contextlib
import logging
import time
import zlib
from pathlib import Path
from urllib.parse import unquote, urlsplit

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pmp_scrapy.errors import NoDatabase, StorageError
from pmp_scrapy.storage.sqlite_file import (
    check_sqlite_file,
    directory_problem,
    enable_wal,
    make_private,  # noqa: F401 - re-exported: store and status import it from here
    prepare_sqlite_file,
)
from pmp_scrapy.storage.watchdog import Limits, give_up_after, guard_dialect, postgres_connect_args, postgres_session

logger = logging.getLogger(__name__)


WRITE = "pmp_write"
"""Execution option marking a connection whose transaction will write (SQLite: BEGIN IMMEDIATE)."""
#: SQLite's page cache per connection (its default is 2 MB): the batch commits write index pages
#: the OS caches anyway, and a smaller cache keeps the crawl inside spec NFR-1's 100 MB
#: (see pmp_scrapy.footprint); the reports set their own, larger one
SQLITE_CACHE_KIB = 1024
#: prepared statements the driver keeps per SQLite connection (its default is 128): a commit's
#: statements whose IN lists differ in length are as many statements, and 128 of the roll-ups'
#: compiled CTEs held 3 MB of a re-sweep's peak (100.3 -> 97.4 MB, CPU unchanged)
SQLITE_CACHED_STATEMENTS = 16

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
    """One line naming a database failure's cause, without SQL, parameters or passwords (a
    call the watchdog cut, or one that waited long, says so)."""
    orig = getattr(exc, "orig", None) or exc
    note = getattr(orig, "pmp_note", None)
    if note and "did not answer" in note:
        return note[:300]
    message = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return f"{type(orig).__name__}: {message}{f' ({note})' if note else ''}"[:300]


def safe_url(url: str) -> str:
    """The database URL with any password masked, for logs and messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<invalid database URL>"


def url_without_password(url: str) -> str | None:
    """The database URL with its password removed (not masked: a client can use it with a
    ``.pgpass`` file), or ``None`` when it cannot be read."""
    try:
        return make_url(url)._replace(password=None).render_as_string(hide_password=False)
    except (ArgumentError, ValueError):
        return None


def without_password(text: str, url: str) -> str:
    """``text`` with the password of ``url`` taken out, however the URL was (mis)read."""
    candidates = set()
    with contextlib.suppress(ArgumentError, ValueError):
        candidates.add(make_url(url).password or "")
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        candidates.update({parts.password or "", unquote(parts.password or "")})
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in authority and ":" in authority.split("@", 1)[0]:
        candidates.add(authority.rsplit("@", 1)[0].split(":", 1)[1])  # everything between user: and the last @
        candidates.add(authority.split("@", 1)[0].split(":", 1)[1])
        candidates.add(authority.split("@", 1)[1].rpartition("@")[0])  # what a driver may take for the host
    for secret in sorted(filter(None, candidates), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def check_url(url: str) -> None:
    """Refuse, without repeating it, a URL whose password would be misread: an unencoded ``@``
    in the password (the driver would take the rest of the password for the host), or a
    PostgreSQL URL naming no database (the tables would land in the maintenance database)."""
    if "://" not in url or url.startswith("sqlite"):
        return
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if authority.count("@") > 1:
        raise StorageError("PMP_DATABASE_URL holds more than one @ before the host: percent-encode an @ in "
                           "the user name or password as %40")
    try:
        database = make_url(url).database
    except (ArgumentError, ValueError):
        raise StorageError("PMP_DATABASE_URL is not a valid database URL (a password holding @ : / or % "
                           "must be percent-encoded)") from None
    if not database:
        raise StorageError("PMP_DATABASE_URL names no database (postgresql://user@host/DATABASE): "
                           "the tables would land in the server's maintenance database")


def database_host(url: str) -> str | None:
    """The database server's host named in ``url`` (None for SQLite or an unreadable URL)."""
    try:
        return make_url(url).host
    except ArgumentError:
        return None


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL, or ``None`` for other databases and in-memory SQLite."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser().resolve()


def _explain(url: str, path: Path | None, exc: BaseException, timeout: float) -> str:
    """The one-line cause of a failed open."""
    cause = describe_error(exc)
    if path is not None and any(s in cause for s in ("unable to open", "readonly database", "read-only")):
        cause = directory_problem(path) or cause
    elif path is not None and "database is locked" in cause:
        cause = cause.replace("database is locked", "database is locked: another job holds its write lock", 1)
        if "waited" not in cause:
            cause += f" (waited {timeout:g} s, PMP_DB_TIMEOUT={timeout:g})"
    return cause


def open_engine(url: str, *, busy_timeout: float = 15.0, create: bool = True) -> Engine:
    """Create the engine and, with ``create``, the tables that are absent.

    Raises :class:`StorageError` with a one-line cause when the database cannot be reached,
    created or written."""
    started = time.monotonic()
    pg_timeout = max(busy_timeout, 1.0)  # 0 would switch PostgreSQL's timeouts off, not make them instant
    check_url(url)
    path = sqlite_path(url)
    if path is not None:
        if create:
            prepare_sqlite_file(path)
        elif not path.exists():
            raise NoDatabase(f"no database at {path}")
        else:
            check_sqlite_file(path)
    try:
        kwargs: dict = {"future": True}
        if path is not None:
            kwargs["connect_args"] = {"timeout": busy_timeout, "cached_statements": SQLITE_CACHED_STATEMENTS}
        else:
            kwargs["pool_pre_ping"] = True
            if make_url(url).get_backend_name() == "postgresql":
                kwargs["connect_args"] = postgres_connect_args(url, pg_timeout)
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError, SQLAlchemyError, ValueError) as exc:
        raise StorageError(f"cannot open database {safe_url(url)}: {describe_error(exc)}") from None

    if path is not None:
        guard_dialect(engine.dialect, Limits("the SQLite database", busy_timeout, None,
                                             "another job may hold its write lock"))

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            # Transactions are begun by _sqlite_begin, not implicitly by the driver.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                if create and cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    enable_wal(cursor, max(busy_timeout - (time.monotonic() - started), 0.0))
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
            finally:
                cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn) -> None:  # type: ignore[no-untyped-def]
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")
    elif engine.dialect.name == "postgresql":
        url_parts = make_url(url)
        host = url_parts.host or ""
        # a socket path or a list of hosts is not probed (only the give-up bounds a wait there)
        address = (host, url_parts.port or 5432) if host and not host.startswith("/") and "," not in host else None
        limits = Limits(f"PostgreSQL at {host or 'localhost'}:{url_parts.port or 5432}", pg_timeout,
                        give_up_after(pg_timeout), "a lock held by another session, or a server that stopped answering",
                        address)
        guard_dialect(engine.dialect, limits)

        @event.listens_for(engine, "connect")
        def _postgres_timeouts(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            postgres_session(dbapi_connection, pg_timeout, limits)

    if create:
        try:
            _create_schema(engine, path, started, busy_timeout)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StorageError(f"cannot prepare database {safe_url(url)}: "
                               f"{_explain(url, path, exc, busy_timeout)}") from None
        except StorageError as exc:
            engine.dispose()
            raise StorageError(f"cannot use database {safe_url(url)}: {exc}") from None
    # The file was made private before any connection (prepare_sqlite_file), and SQLite creates
    # -wal and -shm with its mode: nothing here may open it again while the pool holds connections.
    return engine


def _create_schema(engine: Engine, path: Path | None, started: float, busy_timeout: float) -> None:
    """Absent tables and columns, the schema check and the views, in one write transaction. On
    SQLite the transaction waits only what is left of the busy timeout (open waits it once)."""
    # Imported here: a reader's open (create=False: scrapy status, scrapy report) needs none of them.
    from pmp_scrapy.storage.schema import metadata
    from pmp_scrapy.storage.schema_check import schema_problems
    from pmp_scrapy.storage.schema_upgrade import build_rollups, upgrade_schema
    from pmp_scrapy.storage.view_setup import create_views

    with engine.connect() as conn:
        raw = conn.connection.driver_connection if path is not None else None
        if raw is not None:
            remaining = max(busy_timeout - (time.monotonic() - started), 0.0)
            raw.execute(f"PRAGMA busy_timeout={int(remaining * 1000)}")
        try:
            with conn.execution_options(**{WRITE: True}).begin():
                if engine.dialect.name == "postgresql":
                    # Two jobs starting together would race on CREATE TABLE otherwise.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                metadata.create_all(conn, checkfirst=True)
                upgrade_schema(conn)
                problem = schema_problems(conn)
                if problem is not None:
                    raise StorageError(problem)
                create_views(conn)
                build_rollups(conn)
        finally:
            if raw is not None:
                raw.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
