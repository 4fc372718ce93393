"""The schema checked at open: the tables the extractor writes have the shape it writes them in.

``open_engine`` creates absent tables and adds the project's missing nullable columns, then calls
:func:`schema_problems` in the same transaction, before any page is fetched. A table that an
earlier tool (or a person) made differently is refused there, in one line naming the table and
the column, instead of failing at the first commit with the driver's message:

- a declared column is absent (``select(table)`` and the upserts name every column);
- a column is NOT NULL without a default while the extractor may leave it empty (one of ours
  declared nullable, or one the extractor does not know at all);
- a primary key or unique key the upserts conflict on (``ON CONFLICT (resource_id, patch_id)`` …)
  is absent.

Column types are not compared (SQLite stores any value in any column).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, PrimaryKeyConstraint, Table, UniqueConstraint, inspect

from pmp_scrapy.storage.schema import metadata

MAX_LISTED = 3


def _keys(inspector: Any, name: str) -> list[frozenset[str]]:
    """Every column set the database keeps unique in table ``name``."""
    keys = []
    primary = inspector.get_pk_constraint(name).get("constrained_columns") or []
    if primary:
        keys.append(frozenset(primary))
    keys += [frozenset(u["column_names"]) for u in inspector.get_unique_constraints(name)]
    keys += [frozenset(i["column_names"]) for i in inspector.get_indexes(name)
             if i.get("unique") and all(i.get("column_names") or [None])]
    return keys


def _fills_itself(column: dict[str, Any]) -> bool:
    """Whether the database fills a column an INSERT leaves out."""
    return column.get("default") is not None or bool(column.get("computed")) or bool(column.get("identity"))


def table_problems(inspector: Any, table: Table) -> list[str]:
    """What keeps the extractor from writing ``table`` as it is in the database."""
    present = {c["name"]: c for c in inspector.get_columns(table.name)}
    primary = set(inspector.get_pk_constraint(table.name).get("constrained_columns") or [])
    problems = []
    for column in table.columns:
        found = present.get(column.name)
        if found is None:
            problems.append(f"table {table.name} has no column {column.name}")
        elif (column.nullable and not found.get("nullable", True) and column.name not in primary
              and not _fills_itself(found)):
            problems.append(f"table {table.name}: column {column.name} is NOT NULL without a default, "
                            "but the extractor may leave it empty")
    for name, found in present.items():
        if name not in table.columns and not found.get("nullable", True) and name not in primary \
                and not _fills_itself(found):
            problems.append(f"table {table.name}: column {name} is NOT NULL without a default, "
                            "and the extractor does not write it")
    keys = _keys(inspector, table.name)
    for constraint in table.constraints:
        if isinstance(constraint, (PrimaryKeyConstraint, UniqueConstraint)):
            wanted = frozenset(c.name for c in constraint.columns)
            if wanted and wanted not in keys and wanted <= present.keys():
                problems.append(f"table {table.name} has no unique key on ({', '.join(c.name for c in constraint.columns)}), "
                                "which the extractor's upserts need")
    return problems


def schema_problems(conn: Connection) -> str | None:
    """One line naming what is wrong with the extractor's tables, or ``None`` when all is well."""
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    problems = []
    for table in metadata.sorted_tables:
        if table.name not in tables:
            problems.append(f"table {table.name} is missing")
            continue
        problems += table_problems(inspector, table)
    if not problems:
        return None
    more = len(problems) - MAX_LISTED
    return "; ".join(problems[:MAX_LISTED]) + (f"; and {more} more problem(s)" if more > 0 else "")
