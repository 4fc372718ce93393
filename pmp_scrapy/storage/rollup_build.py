"""Building the report roll-ups (:mod:`.rollup`) from scratch: at open, for a database that lacks
them, holds another definition's, or was written since by a crawl that keeps none.

Set-based, one statement per table over the whole estate, where a refresh works a page's
systems at a time:

- ``dcapi_missing_pairs`` first: ``dcapi_v_missing``'s rows (the missing fifth of the mappings,
  each dated once from the history), inserted in primary-key order with the table's two
  covering indexes dropped and made again afterwards (a sort each, instead of 300,000 random
  inserts into three B-trees).
- ``dcapi_system_rollup`` from two aggregates joined per system: the counts over
  ``dcapi_v_mappings`` without its "missing since" (so no history lookup for any row), and the
  oldest "missing since" overall and per severity over the pairs just made. The same numbers as
  :func:`.rollup.refresh`'s single aggregate: "missing since" is NULL unless the row is missing,
  and the pairs are exactly the missing rows with their dates.
- ``dcapi_bulletin_patches`` in one pass over the mappings.

Before this (a range of 5,000 systems a statement, each hashing the whole history table) a
build of 33,000 systems took 52 s on PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from pmp_scrapy.reporting.codes import INSTALLED, MISSING, SEVERITIES
from pmp_scrapy.storage.report_sql import severity_name_sql, status_is_sql
from pmp_scrapy.storage.rollup import _system_columns, bulletins_insert, column_of, coverage_all
from pmp_scrapy.storage.schema import missing_pairs
from pmp_scrapy.storage.views import with_views


def pairs_sql(dialect: str) -> str:
    """Every missing (system, patch) of ``dcapi_v_missing`` into ``dcapi_missing_pairs``."""
    return (with_views(dialect, "dcapi_v_missing")
            + "INSERT INTO dcapi_missing_pairs (customer, resource_id, patch_id, severity_name, missing_since)\n"
            + "SELECT customer, resource_id, patch_id, severity_name, missing_since FROM dcapi_v_missing "
            + "WHERE 1 = 1 ORDER BY customer, resource_id, patch_id")


def _counts(dialect: str) -> str:
    """Per present system: its mappings, installed, missing and missing per severity name. The
    mappings are counted per raw (severity, status) first and named afterwards: the severity
    and status expressions then run once a group (~10 a system), not once a mapping (1.6
    million: most of a build's time on PostgreSQL). SQLite aggregates the mappings as it reads
    them in ``dcapi_systems``' key order, which the two-step grouping (sorted twice) is slower
    than."""
    if dialect != "postgresql":
        counted = [(name, e) for name, e in _system_columns() if name not in ("customer", "resource_id")
                   and not name.startswith("oldest_")]
        return (f"SELECT customer, resource_id, {', '.join(f'{e} AS {name}' for name, e in counted)} "
                "FROM dcapi_v_mappings GROUP BY customer, resource_id")
    missing, installed = (status_is_sql(dialect, "patch_status", name) for name in (MISSING, INSTALLED))
    named = (f"SELECT customer, resource_id, n, CASE WHEN {missing} THEN n ELSE 0 END AS missing_n, "
             f"CASE WHEN {installed} THEN n ELSE 0 END AS installed_n, "
             f"{severity_name_sql(dialect, 'severity')} AS severity_name FROM (SELECT customer, resource_id, "
             "severity, patch_status, COUNT(*) AS n FROM dcapi_v_mappings "
             "GROUP BY customer, resource_id, severity, patch_status) r")
    by_severity = [f"SUM(CASE WHEN severity_name = '{name}' THEN missing_n ELSE 0 END) AS missing_{column_of(name)}"
                   for name in SEVERITIES]
    known = ", ".join(f"'{name}'" for name in SEVERITIES)
    return ("SELECT customer, resource_id, SUM(n) AS mappings, SUM(installed_n) AS installed, "
            f"SUM(missing_n) AS missing, {', '.join(by_severity)}, "
            f"SUM(CASE WHEN severity_name NOT IN ({known}) THEN missing_n ELSE 0 END) AS missing_other "
            f"FROM ({named}) g GROUP BY customer, resource_id")


def systems_sql(dialect: str) -> str:
    """Every present system's ``dcapi_system_rollup`` row: counts from the mappings, dates from
    ``dcapi_missing_pairs`` (which must be built first)."""
    columns = _system_columns()
    dated = [(name, expression) for name, expression in columns if name.startswith("oldest_")]
    return (with_views(dialect, "dcapi_v_mappings")
            + f"INSERT INTO dcapi_system_rollup ({', '.join(name for name, _ in columns)})\n"
            + "SELECT " + ", ".join(f"{'o' if name.startswith('oldest_') else 'a'}.{name}" for name, _ in columns)
            + f"\nFROM ({_counts(dialect)}) a\n"
            + "LEFT JOIN (SELECT customer, resource_id, " + ", ".join(f"{e} AS {name}" for name, e in dated)
            + " FROM dcapi_missing_pairs GROUP BY customer, resource_id) o\n"
            + "ON o.customer = a.customer AND o.resource_id = a.resource_id")


def build(conn: Connection) -> int:
    """Empty the roll-ups and build them for every present system, in the caller's transaction.
    Reads ``patch_system_mapping``, ``dcapi_systems`` and ``dcapi_mapping_history``; writes
    ``dcapi_missing_pairs``, ``dcapi_system_rollup`` and ``dcapi_bulletin_patches``. Returns the
    number of systems rolled up."""
    dialect = conn.dialect.name
    if dialect == "postgresql":  # the aggregates' hash tables in memory, not spilled (this transaction only)
        conn.execute(text("SET LOCAL work_mem = '128MB'"))
    for table in ("dcapi_system_rollup", "dcapi_missing_pairs", "dcapi_bulletin_patches"):
        conn.execute(text(f"DELETE FROM {table}"))
    indexes = sorted(missing_pairs.indexes, key=lambda index: str(index.name))
    for index in indexes:
        index.drop(conn, checkfirst=True)
    conn.execute(text(pairs_sql(dialect)))
    for index in indexes:
        index.create(conn)
    conn.execute(text(systems_sql(dialect)))
    conn.execute(text(bulletins_insert("1 = 1")))
    if dialect == "postgresql":  # the planner's statistics of tables that just changed wholesale
        conn.execute(text("ANALYZE dcapi_system_rollup, dcapi_missing_pairs, dcapi_bulletin_patches"))
    return coverage_all(conn)
