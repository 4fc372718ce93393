"""Opens the database: SQLAlchemy engine, SQLite file safety (parent directories, mode 0600,
WAL, busy timeout), and schema creation that tolerates concurrent jobs."""

from __future__ import annotations

import logging
import os
import stat
import zlib
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from pmp_scrapy.errors import StorageError
from pmp_scrapy.storage.schema import metadata

logger = logging.getLogger(__name__)

_PRIVATE = stat.S_IRUSR | stat.S_IWUSR


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
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError, SQLAlchemyError) as exc:
        raise StorageError(f"cannot open database {safe_url(url)}: {describe_error(exc)}") from None

    if path is not None:
        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            cursor = dbapi_connection.cursor()
            try:
                if create:
                    cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
                cursor.execute("PRAGMA synchronous=NORMAL")
            finally:
                cursor.close()

    if create:
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    # Two jobs starting together would race on CREATE TABLE otherwise.
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                 {"key": zlib.crc32(b"pmp_scrapy schema")})
                metadata.create_all(conn, checkfirst=True)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise StorageError(f"cannot prepare database {safe_url(url)}: {describe_error(exc)}") from None
        if path is not None:
            make_private(path)
    return engine
