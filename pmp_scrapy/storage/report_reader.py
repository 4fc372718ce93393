"""The reading side of ``scrapy report``: opening the database read-only, the scope of an answer,
the errors a form raises and the value conversions every form shares.

Queries read the ``dcapi_v_*`` views, defined once in :mod:`.views` and inlined by
:meth:`Reader.sql` with :func:`~.views.with_views`, so an answer never depends on which version
created the views in the database. Nothing here creates the database, a table or a row: one read
transaction per report (PostgreSQL: REPEATABLE READ; SQLite: one WAL snapshot), so every number
of a report comes from the same moment even while a crawl commits.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, inspect, text
from sqlalchemy.exc import SQLAlchemyError

from pmp_scrapy.errors import PMPError, StorageError
from pmp_scrapy.reporting.sla import parse_sla_days
from pmp_scrapy.storage.engine import describe_error, open_engine, safe_url
from pmp_scrapy.storage.rollup import is_current
from pmp_scrapy.storage.views import with_views

#: Tables the views read; an older database lacks some until a crawl of this version opens it.
REPORT_TABLES = ("patch_system_mapping", "dcapi_systems", "dcapi_snapshots", "dcapi_mapping_history",
                 "dcapi_patch_catalog", "dcapi_patch_cves", "dcapi_mapping_events",
                 "dcapi_extraction_checkpoints", "dcapi_system_rollup", "dcapi_missing_pairs",
                 "dcapi_bulletin_patches")
TOP = 10  # entries of the summary's lists unless --limit says otherwise


class NoExtractionData(StorageError):
    """Raised by :func:`reading` and :func:`pmp_scrapy.storage.status.read_status` when the
    database has none of the extractor's tables."""


class UnknownSubject(PMPError):
    """Raised by a report form when the system, patch, bulletin, CVE or customer asked about is
    not in the database (or a name matches several); its message is the one line to show."""


@dataclass(frozen=True)
class Scope:
    """What an answer covers: one customer ('' is the single-tenant default), optionally only
    some severities, ``limit`` entries per list (``None``: all; the summary's lists: 10)."""

    customer: str = ""
    severities: tuple[str, ...] | None = None
    limit: int | None = None
    sla_days: Mapping[str, int] = field(default_factory=lambda: parse_sla_days(None))

    @property
    def top(self) -> int:
        return self.limit if self.limit is not None else TOP

    def customer_label(self) -> str:
        return f"customer {self.customer!r}" if self.customer else "the default customer"


# --- values -----------------------------------------------------------------------------------------

def utcnow() -> datetime:
    """Naive UTC now, as the TIMESTAMP columns hold it."""
    return datetime.now(UTC).replace(tzinfo=None)


@lru_cache(maxsize=65536)
def _parsed(value: str) -> datetime:
    return datetime.fromisoformat(value)


def as_datetime(value: Any) -> datetime | None:
    """A TIMESTAMP as read (``datetime`` from PostgreSQL, text from SQLite) as naive UTC."""
    if value is None or isinstance(value, datetime):
        return value
    return _parsed(str(value))


def iso(value: Any) -> str | None:
    """A TIMESTAMP as ISO 8601 UTC (``2025-11-26T10:00:00Z``), or ``None``."""
    moment = as_datetime(value)
    return None if moment is None else moment.replace(microsecond=0).isoformat() + "Z"


def epoch_ms_iso(value: Any) -> str | None:
    """An epoch-milliseconds text as PMP sends ``installed_time``, as ISO 8601 UTC; ``None``
    when absent or not a number."""
    try:
        moment = datetime.fromtimestamp(int(str(value)) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None
    return moment.replace(microsecond=0, tzinfo=None).isoformat() + "Z"


def days_between(since: Any, now: datetime) -> float | None:
    """Days from ``since`` to ``now``, to one decimal."""
    moment = as_datetime(since)
    return None if moment is None else round((now - moment).total_seconds() / 86400, 1)


def pct(part: int, whole: int | None) -> float | None:
    """``part`` of ``whole`` in percent to one decimal (the views' ROUND(..., 1))."""
    return round(100.0 * part / whole, 1) if whole else None


def number(value: Any) -> float | None:
    """A numeric column as float (PostgreSQL answers NUMERIC as Decimal)."""
    return None if value is None else float(value)


# --- the reader ----------------------------------------------------------------------------------------

class Reader:
    """One read transaction on the database; queries are SQL over the inlined views."""

    def __init__(self, conn: Connection, url: str, notice: str | None = None) -> None:
        self.conn, self.url = conn, url
        self.dialect = conn.dialect.name
        #: one line for the user when opening had to bring the roll-ups up to date first
        self.notice = notice

    def sql(self, query: str, views: tuple[str, ...], params: dict[str, Any]) -> Any:
        """``query``, reading the named ``views``, as a statement; a list or tuple parameter
        becomes an IN list (``IN :ids``)."""
        statement = text((with_views(self.dialect, *views) if views else "") + query)
        lists: list[Any] = [bindparam(name, expanding=True) for name, value in params.items()
                            if isinstance(value, list | tuple)]
        return statement.bindparams(*lists) if lists else statement

    def rows(self, query: str, *views: str, **params: Any) -> list[dict[str, Any]]:
        """Every row of ``query`` (reading ``views``) as a dict."""
        result = self.conn.execute(self.sql(query, views, params), params)
        return [dict(row) for row in result.mappings()]

    def stream(self, query: str, *views: str, **params: Any) -> Iterator[tuple[Any, ...]]:
        """The rows of ``query`` as the driver's tuples, for passes over hundreds of thousands of
        rows that keep none of them. Read through the DBAPI cursor, in this transaction:
        SQLAlchemy's rows cost a second a million. Not a server-side cursor on PostgreSQL: a
        cursor's plan is made for its first rows and never runs in parallel workers (5x slower
        here); the client keeps the result (some 20 MB for 300,000 rows) and converts it in
        chunks."""
        compiled = self.sql(query, views, params).bindparams(**params).compile(
            dialect=self.conn.dialect, compile_kwargs={"render_postcompile": True})
        values = compiled.params
        arguments: Any = [values[name] for name in compiled.positiontup] if compiled.positiontup else values
        raw: Any = self.conn.connection.dbapi_connection
        cursor = raw.cursor()
        try:
            cursor.execute(compiled.string, arguments)
            while chunk := cursor.fetchmany(5000):
                yield from chunk
        finally:
            cursor.close()

    def severity_filter(self, scope: Scope, column: str = "severity_name") -> tuple[str, dict[str, Any]]:
        """A SQL condition (`` AND ...``) and its parameters restricting rows to the scope's
        severities; empty without a filter."""
        if not scope.severities:
            return "", {}
        return f" AND {column} IN :severities", {"severities": list(scope.severities)}

    def customers(self) -> list[str]:
        """Every customer with systems or snapshots, '' (the default) first."""
        return [str(row["customer"]) for row in self.rows(
            "SELECT customer FROM dcapi_systems UNION SELECT customer FROM dcapi_snapshots ORDER BY customer")]

    def has_catalog(self, customer: str) -> bool:
        """Whether the patch catalog (CVE ids) was swept for ``customer``."""
        return bool(self.rows("SELECT 1 AS one FROM dcapi_patch_catalog WHERE customer = :customer LIMIT 1",
                              customer=customer))


@contextmanager
def reading(url: str, *, busy_timeout: float = 15.0) -> Iterator[Reader]:
    """A :class:`Reader` on the database at ``url``, which is never created.

    Raises :class:`StorageError` (no database, unreachable, made by a version without the report
    tables) and :class:`NoExtractionData` (none of the extractor's tables).

    When the roll-ups are not current (absent, another definition's, or stale after a crawl by a
    version that keeps none), the database is first brought up to this version as a crawl's open
    would (:func:`~.engine.open_engine`: schema upgrade, roll-ups rebuilt), the only write a
    report makes; ``Reader.notice`` then says so. Where that is refused (a read-only role), stale
    roll-ups are read as they are, with a notice."""
    engine = open_engine(url, busy_timeout=busy_timeout, create=False)
    try:
        notice = _bring_up_to_date(engine, url, busy_timeout)
    except BaseException:
        engine.dispose()
        raise
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                tables = set(inspect(conn).get_table_names())
                absent = [name for name in REPORT_TABLES if name not in tables]
                if absent:
                    raise StorageError(f"the database {safe_url(url)} was made by an older pmp_scrapy (no "
                                       f"{', '.join(absent)}); run `scrapy crawl dcapi_patches` once to upgrade it")
                _tune(conn)
                yield Reader(conn, url, notice)
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read {safe_url(url)}: {describe_error(exc)}") from None
    finally:
        engine.dispose()


def _bring_up_to_date(engine: Engine, url: str, busy_timeout: float) -> str | None:
    """Check (reading only) that the database holds extraction data and current roll-ups; when
    the roll-ups are not current, open it as a crawl would, which rebuilds them. Returns the
    notice for the user, or ``None`` when nothing was needed."""
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if not tables & {"patch_system_mapping", "dcapi_snapshots", "dcapi_runs"}:
                raise NoExtractionData(f"the database {safe_url(url)} holds no extraction data yet")
            if is_current(conn, tables):
                return None
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot read {safe_url(url)}: {describe_error(exc)}") from None
    started = time.monotonic()
    try:
        open_engine(url, busy_timeout=busy_timeout).dispose()
    except StorageError as exc:
        return f"the report roll-ups are out of date and could not be rebuilt ({exc}); answers may be behind"
    return (f"report roll-ups brought up to date first ({time.monotonic() - started:.1f} s): a crawl by an "
            "older pmp_scrapy wrote since, or this version defines them otherwise")


def _tune(conn: Connection) -> None:
    """Per-connection settings for reading a large database; none is stored in it."""
    if conn.dialect.name == "postgresql":
        # The views' plans are cheap to run but look expensive: JIT compiling them costs ~1 s.
        conn.exec_driver_sql("SET LOCAL jit = off")
    else:
        # Memory-mapped reads and a 256 MB page cache: passes over 1.6 M rows stop paying a
        # system call per page.
        conn.exec_driver_sql("PRAGMA mmap_size = 1073741824")
        conn.exec_driver_sql("PRAGMA cache_size = -262144")
