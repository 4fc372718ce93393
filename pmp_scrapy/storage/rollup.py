"""The report's roll-ups of ``patch_system_mapping``, kept in the batch-commit transaction.

``dcapi_system_rollup`` holds, per present system with at least one mapping, what
``dcapi_v_mappings`` aggregates to for it (mappings, installed, missing by severity, the oldest
"missing since" overall and per severity); ``dcapi_missing_pairs`` holds ``dcapi_v_missing``'s
(system, patch) pairs with their severity name and "missing since". Both are built by the views'
own SQL (:mod:`.views`), for the systems a commit touched: :func:`refresh` deletes their rows and
inserts the aggregate again, so a roll-up is always exactly what the views say for those systems,
with no delta arithmetic to drift. A commit touches the systems whose mappings it wrote or
retired, the systems it retired, and any system it reported with mappings but no roll-up row
(mappings an earlier tool left, a system back from retirement).

:func:`ensure_built` (at open, in the schema transaction) builds both from scratch when
``dcapi_rollup_state`` does not name this version's definition: a database made before the
roll-ups, or by a version that defined them otherwise. The count of a customer's
``dcapi_system_rollup`` rows is its coverage (:func:`coverage`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable

from sqlalchemy import Connection, bindparam, text

from pmp_scrapy.reporting.codes import SEVERITIES
from pmp_scrapy.storage.views import with_views

logger = logging.getLogger(__name__)

STATE_NAME = "report"
_CHUNK = 500  # systems a refresh statement (a page reports ~30; a retirement up to thousands)
_BUILD_CHUNK = 5000  # systems a statement of a full build: each well inside PostgreSQL's statement timeout
_KNOWN = ", ".join(f"'{name}'" for name in SEVERITIES)


def column_of(severity: str) -> str:
    """The roll-up column suffix of a severity name (``Critical`` -> ``critical``)."""
    return severity.lower()


def _system_columns() -> list[tuple[str, str]]:
    """(column, aggregate over dcapi_v_mappings) of ``dcapi_system_rollup``, in order."""
    columns = [("customer", "customer"), ("resource_id", "resource_id"), ("mappings", "COUNT(*)"),
               ("installed", "SUM(is_installed)"), ("missing", "SUM(is_missing)")]
    columns += [(f"missing_{column_of(name)}",
                 f"SUM(CASE WHEN is_missing = 1 AND severity_name = '{name}' THEN 1 ELSE 0 END)") for name in SEVERITIES]
    columns.append(("missing_other", f"SUM(CASE WHEN is_missing = 1 AND severity_name NOT IN ({_KNOWN}) THEN 1 ELSE 0 END)"))
    columns.append(("oldest_missing_since", "MIN(missing_since)"))
    columns += [(f"oldest_{column_of(name)}_since", f"MIN(CASE WHEN severity_name = '{name}' THEN missing_since END)")
                for name in SEVERITIES]
    return columns


def _inserts(dialect: str, where: str) -> tuple[str, str]:
    """The two statements that fill the roll-ups for the systems ``where`` selects (a condition
    on ``resource_id``)."""
    columns = _system_columns()
    # The rows picked once (MATERIALIZED): inlined, "missing since" (a history lookup) would be
    # evaluated once per aggregate naming it, six times a missing row.
    picked = ("picked AS MATERIALIZED (SELECT customer, resource_id, is_installed, is_missing, severity_name, "
              f"missing_since FROM dcapi_v_mappings WHERE {where})")
    systems = (with_views(dialect, "dcapi_v_mappings").rstrip() + f",\n{picked}\n"
               + f"INSERT INTO dcapi_system_rollup ({', '.join(name for name, _ in columns)})\n"
               + f"SELECT {', '.join(expression for _, expression in columns)}\n"
               + "FROM picked GROUP BY customer, resource_id")
    pairs = (with_views(dialect, "dcapi_v_missing")
             + "INSERT INTO dcapi_missing_pairs (customer, resource_id, patch_id, severity_name, missing_since)\n"
             + f"SELECT customer, resource_id, patch_id, severity_name, missing_since FROM dcapi_v_missing WHERE {where}")
    return systems, pairs


def definition(dialect: str) -> str:
    """A fingerprint of the roll-ups' definition on ``dialect`` (kept in ``dcapi_rollup_state``)."""
    return hashlib.sha256("\n".join(_inserts(dialect, "resource_id IN :ids")).encode()).hexdigest()[:16]


def _chunks(values: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def refresh(conn: Connection, system_ids: Iterable[str]) -> None:
    """Rebuild the roll-up rows of these resource ids (every customer's: mappings carry no
    customer) from ``patch_system_mapping``, ``dcapi_systems`` and ``dcapi_mapping_history``.
    Writes ``dcapi_system_rollup`` and ``dcapi_missing_pairs``; the caller's transaction."""
    ids = sorted(set(system_ids))
    if not ids:
        return
    systems, pairs = (text(sql).bindparams(bindparam("ids", expanding=True))
                      for sql in _inserts(conn.dialect.name, "resource_id IN :ids"))
    owners = text("SELECT DISTINCT customer FROM dcapi_systems WHERE resource_id IN :ids").bindparams(
        bindparam("ids", expanding=True))
    for chunk in _chunks(ids, _CHUNK):
        customers = [row[0] for row in conn.execute(owners, {"ids": chunk})]
        if customers:
            for table in ("dcapi_system_rollup", "dcapi_missing_pairs"):
                conn.execute(text(f"DELETE FROM {table} WHERE customer IN :customers AND resource_id IN :ids")
                             .bindparams(bindparam("customers", expanding=True), bindparam("ids", expanding=True)),
                             {"customers": customers, "ids": chunk})
        conn.execute(systems, {"ids": chunk})
        conn.execute(pairs, {"ids": chunk})


def without_rollup(conn: Connection, customer: str, system_ids: Iterable[str]) -> list[str]:
    """Of these systems of ``customer``, those without a ``dcapi_system_rollup`` row."""
    ids = sorted(set(system_ids))
    have: set[str] = set()
    query = text("SELECT resource_id FROM dcapi_system_rollup WHERE customer = :customer AND resource_id IN :ids"
                 ).bindparams(bindparam("ids", expanding=True))
    for chunk in _chunks(ids, _CHUNK):
        have.update(row[0] for row in conn.execute(query, {"customer": customer, "ids": chunk}))
    return [rid for rid in ids if rid not in have]


def coverage(conn: Connection, customer: str) -> int:
    """Present systems of ``customer`` with at least one mapping: what
    :func:`pmp_scrapy.storage.commit.coverage_query` counts, read from the roll-up's primary key."""
    return int(conn.execute(text("SELECT COUNT(*) FROM dcapi_system_rollup WHERE customer = :customer"),
                            {"customer": customer}).scalar_one())


def build(conn: Connection) -> int:
    """Build both roll-ups from scratch, a range of present systems a statement. Returns the
    number of systems rolled up."""
    conn.execute(text("DELETE FROM dcapi_system_rollup"))
    conn.execute(text("DELETE FROM dcapi_missing_pairs"))
    ids = [row[0] for row in conn.execute(text(
        "SELECT DISTINCT resource_id FROM dcapi_systems WHERE retired_at IS NULL ORDER BY resource_id"))]
    statements = [text(sql) for sql in _inserts(conn.dialect.name, "resource_id BETWEEN :low AND :high")]
    for chunk in _chunks(ids, _BUILD_CHUNK):
        for statement in statements:
            conn.execute(statement, {"low": chunk[0], "high": chunk[-1]})
    return coverage_all(conn)


def coverage_all(conn: Connection) -> int:
    """Rows of ``dcapi_system_rollup`` over every customer."""
    return int(conn.execute(text("SELECT COUNT(*) FROM dcapi_system_rollup")).scalar_one())


def ensure_built(conn: Connection) -> bool:
    """Build the roll-ups when ``dcapi_rollup_state`` does not name this version's definition;
    returns whether it built them. Reads and writes the roll-up tables and their state row."""
    wanted = definition(conn.dialect.name)
    stored = conn.execute(text("SELECT definition FROM dcapi_rollup_state WHERE name = :name"),
                          {"name": STATE_NAME}).scalar()
    if stored == wanted:
        return False
    started = time.monotonic()
    built = build(conn)
    conn.execute(text("DELETE FROM dcapi_rollup_state WHERE name = :name"), {"name": STATE_NAME})
    conn.execute(text("INSERT INTO dcapi_rollup_state (name, definition) VALUES (:name, :definition)"),
                 {"name": STATE_NAME, "definition": wanted})
    if built:
        logger.info("report roll-ups built for %d systems in %.1f s", built, time.monotonic() - started,
                    extra={"event_type": "rollups_built", "systems": built})
    return True

