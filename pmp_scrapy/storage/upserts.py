"""Many-row upserts at the cost of the driver, not of the statement builder.

A sweep writes some 160,000 mapping rows per 3,317 systems. Handed to SQLAlchemy as dicts, each
row costs more in parameter processing (``construct_params``, a dict per row) than SQLite takes
to store it. :func:`upsert_rows` builds each upsert once per dialect and, where the driver takes
positional parameters in the statement's column order (SQLite's ``?``) and no column converts
its values, hands it the row tuples as they are; elsewhere (psycopg) it keeps SQLAlchemy's path, whose "insertmanyvalues" batching is
what makes PostgreSQL fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Table

Row = Sequence[Any]


def dialect_insert(dialect_name: str) -> Any:
    """The dialect's ``insert`` (with ``on_conflict_do_update``)."""
    # Imported on first use: an SQLite run need not carry PostgreSQL's dialect (3 MB, NFR-1).
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


@lru_cache(maxsize=64)
def _statement(dialect_name: str, table: Table, fields: tuple[str, ...], conflict: tuple[str, ...],
               update: tuple[str, ...]) -> Any:
    stmt = dialect_insert(dialect_name)(table)
    if not update:
        return stmt.on_conflict_do_nothing(index_elements=list(conflict))
    return stmt.on_conflict_do_update(index_elements=list(conflict),
                                      set_={name: stmt.excluded[name] for name in update})


_PLAIN: dict[tuple[Any, ...], str | None] = {}


def _positional_sql(conn: Connection, key: tuple[Any, ...], stmt: Any, fields: tuple[str, ...]) -> str | None:
    """The statement's SQL when the driver takes its parameters as ``fields``-ordered tuples."""
    if key not in _PLAIN:
        sql: str | None = None
        # a column whose type converts values (a TIMESTAMP's datetime to SQLite's text) keeps
        # SQLAlchemy's path: the driver would store its own format
        plain_types = all(stmt.table.c[name].type._cached_bind_processor(conn.dialect) is None for name in fields)
        if conn.dialect.positional and plain_types:
            compiled = stmt.compile(dialect=conn.dialect, column_keys=list(fields))
            if tuple(compiled.positiontup or ()) == fields:
                sql = str(compiled)
        _PLAIN[key] = sql
    return _PLAIN[key]


def upsert_rows(conn: Connection, table: Table, fields: tuple[str, ...], rows: Sequence[Row], *,
                conflict: tuple[str, ...], update: tuple[str, ...], chunk: int = 500) -> None:
    """Insert ``rows`` (values in ``fields`` order) into ``table``; a row whose ``conflict`` key
    exists updates the ``update`` columns to the new values (``update`` empty: left as it is).
    Written ``chunk`` rows a statement (the driver's parameter copies stay small, NFR-1)."""
    if not rows:
        return
    dialect_name = conn.dialect.name
    stmt = _statement(dialect_name, table, fields, conflict, update)
    sql = _positional_sql(conn, (dialect_name, table.name, fields, conflict, update), stmt, fields)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        if sql is not None:
            conn.exec_driver_sql(sql, [tuple(row) for row in part])
        else:
            conn.execute(stmt, [dict(zip(fields, row, strict=True)) for row in part])
