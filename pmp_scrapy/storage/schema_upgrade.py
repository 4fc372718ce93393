"""Bringing a database made by an earlier version up to this one, in ``open_engine``'s schema
transaction (after ``create_all`` made the absent tables): the project's missing nullable columns
and indexes (:func:`upgrade_schema`), and, once the schema check passed, the report roll-ups built
when they are new or defined otherwise (:func:`build_rollups`). The seed's tables are never altered."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from pmp_scrapy.storage.rollup import ensure_built
from pmp_scrapy.storage.schema import SEED_TABLES, metadata


def add_missing_columns(conn: Connection) -> list[str]:
    """Add the nullable columns a database made by an earlier version of the project lacks, to
    the project's own tables only (the seed's tables are never altered). Returns what was added
    as ``table.column``."""
    inspector = inspect(conn)
    present_tables = set(inspector.get_table_names())
    added: list[str] = []
    for table in metadata.sorted_tables:
        if table.name in SEED_TABLES or table.name not in present_tables:
            continue
        have = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in have or not column.nullable or column.primary_key:
                continue
            kind = column.type.compile(dialect=conn.dialect)
            conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            added.append(f"{table.name}.{column.name}")
    return added


def add_missing_indexes(conn: Connection) -> list[str]:
    """Create the declared indexes of the project's own tables that an earlier version's
    database lacks (``create_all`` makes indexes only with their table). Returns their names."""
    inspector = inspect(conn)
    added: list[str] = []
    for table in metadata.sorted_tables:
        if table.name in SEED_TABLES:
            continue
        have = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name not in have:
                index.create(conn)
                added.append(str(index.name))
    return added


def upgrade_schema(conn: Connection) -> list[str]:
    """The columns and indexes an earlier version's database lacks; returns what was added
    (``table.column`` and index names). Before the schema check."""
    return add_missing_columns(conn) + add_missing_indexes(conn)


def build_rollups(conn: Connection) -> bool:
    """The report roll-ups, built when new or defined otherwise; after the schema check (their
    SQL reads the seed's tables). Returns whether they were built."""
    return ensure_built(conn)
