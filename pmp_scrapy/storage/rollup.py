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
roll-ups, or by a version that defined them otherwise, or when a crawl that keeps no roll-ups
(an older version) wrote since they were last brought up to date: each refresh records, per
customer, the latest ``last_seen_at`` and ``retired_at`` of ``dcapi_systems`` in
``dcapi_rollup_sources`` (every page a crawl commits moves the first, every retirement the
second), and other values at open mean they are stale (:func:`stale_customers`). The count of a
customer's ``dcapi_system_rollup`` rows is its coverage (:func:`coverage`).

``dcapi_bulletin_patches`` holds the (folded bulletin id, patch id) of every mapping row that
carries a bulletin: ``--bulletin`` goes from it to its patches' rows by ``idx_psm_patch``
instead of reading every mapping. It only grows between rebuilds (a superset is harmless: the
answer filters the rows on the bulletin itself).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import Connection, bindparam, text, update

from pmp_scrapy.reporting.codes import SEVERITIES
from pmp_scrapy.storage.schema import rollup_sources
from pmp_scrapy.storage.views import with_views

logger = logging.getLogger(__name__)

STATE_NAME = "report"
_CHUNK = 500  # systems a refresh statement (a page reports ~30; a retirement up to thousands)
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


def _inserts(dialect: str, where: str) -> tuple[str, str, str]:
    """The three statements that fill the roll-ups for the systems ``where`` selects (a condition
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
    return systems, pairs, bulletins_insert(where)


def bulletins_insert(where: str) -> str:
    """The statement adding the (folded bulletin, patch) pairs of the mapping rows ``where``
    selects (a condition on ``resource_id``) to ``dcapi_bulletin_patches``. ``lower()`` is the
    fold ``--bulletin`` compares with on both databases (SQLite's folds ASCII, as NOCASE does)."""
    return ("INSERT INTO dcapi_bulletin_patches (bulletin_key, patch_id) SELECT DISTINCT lower(bulletinid), patch_id "
            f"FROM patch_system_mapping WHERE {where} AND bulletinid IS NOT NULL AND bulletinid <> '' "
            "ON CONFLICT DO NOTHING")


def definition(dialect: str) -> str:
    """A fingerprint of the roll-ups' definition on ``dialect`` (kept in ``dcapi_rollup_state``)."""
    return hashlib.sha256("\n".join(_inserts(dialect, "resource_id IN :ids")).encode()).hexdigest()[:16]


def _chunks(values: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


def refresh(conn: Connection, system_ids: Iterable[str], *, seen: tuple[str, datetime] | None = None) -> None:
    """Rebuild the roll-up rows of these resource ids (every customer's: mappings carry no
    customer) from ``patch_system_mapping``, ``dcapi_systems`` and ``dcapi_mapping_history``.
    Writes ``dcapi_system_rollup``, ``dcapi_missing_pairs``, ``dcapi_bulletin_patches`` and
    ``dcapi_rollup_sources``; the caller's transaction. Called by every batch commit (with no
    ids when it wrote no mapping), after the commit wrote ``dcapi_systems``."""
    ids = sorted(set(system_ids))
    if not ids:
        record_sources(conn, seen=seen)  # a commit that wrote no mapping still moved last_seen_at
        return
    systems, pairs, bulletins = (text(sql).bindparams(bindparam("ids", expanding=True))
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
        conn.execute(bulletins, {"ids": chunk})
    record_sources(conn, seen=seen)


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


def coverage_all(conn: Connection) -> int:
    """Rows of ``dcapi_system_rollup`` over every customer."""
    return int(conn.execute(text("SELECT COUNT(*) FROM dcapi_system_rollup")).scalar_one())


# --- what the roll-ups were brought up to ----------------------------------------------------------

def _changed_sources(dialect: str) -> str:
    differs = "IS DISTINCT FROM" if dialect == "postgresql" else "IS NOT"
    return ("SELECT c.customer FROM (SELECT customer, MAX(last_seen_at) AS seen, MAX(retired_at) AS retired "
            "FROM dcapi_systems GROUP BY customer) c LEFT JOIN dcapi_rollup_sources r ON r.customer = c.customer "
            f"WHERE r.customer IS NULL OR r.last_seen_at {differs} c.seen OR r.retired_at {differs} c.retired")


def stale_customers(conn: Connection) -> list[str]:
    """Customers whose ``dcapi_systems`` maxima differ from what ``dcapi_rollup_sources`` says the
    roll-ups were brought up to: something that keeps no roll-ups wrote since. One pass over
    ``dcapi_systems`` (~N rows, milliseconds); reads only."""
    return [row[0] for row in conn.execute(text(_changed_sources(conn.dialect.name)))]


def record_sources(conn: Connection, *, seen: tuple[str, datetime] | None = None) -> None:
    """Record, for the customers whose ``dcapi_systems`` maxima moved, the values the roll-ups are
    now up to (``dcapi_rollup_sources``). Only rows that differ are written: concurrent commits of
    other customers never wait on each other here.

    ``seen`` ``(customer, at)`` says the only change since the last record is that customer's
    systems seen ``at`` (a batch commit that retired and brought back none): its
    ``last_seen_at`` is then the new maximum, written without the pass over ``dcapi_systems``
    (8 ms a commit at 99,510 systems). A clock set back since an earlier run makes that value
    lower than the real maximum, which the next open reads as stale: a rebuild, never a
    stale answer."""
    if seen is not None and conn.execute(update(rollup_sources).where(rollup_sources.c.customer == seen[0])
                                         .values(last_seen_at=seen[1])).rowcount == 1:
        return
    changed = stale_customers(conn)
    if not changed:
        return
    conn.execute(text("DELETE FROM dcapi_rollup_sources WHERE customer IN :customers").bindparams(
        bindparam("customers", expanding=True)), {"customers": changed})
    conn.execute(text("INSERT INTO dcapi_rollup_sources (customer, last_seen_at, retired_at) SELECT customer, "
                      "MAX(last_seen_at), MAX(retired_at) FROM dcapi_systems WHERE customer IN :customers "
                      "GROUP BY customer").bindparams(bindparam("customers", expanding=True)), {"customers": changed})


def is_current(conn: Connection, tables: set[str]) -> bool:
    """Whether the roll-ups can be read as the views' answer: their tables are in ``tables``, built
    by this version's definition and not stale. Reads only."""
    if not {"dcapi_system_rollup", "dcapi_missing_pairs", "dcapi_rollup_state", "dcapi_rollup_sources",
            "dcapi_bulletin_patches"} <= tables:
        return False
    stored = conn.execute(text("SELECT definition FROM dcapi_rollup_state WHERE name = :name"),
                          {"name": STATE_NAME}).scalar()
    return stored == definition(conn.dialect.name) and not stale_customers(conn)


def build(conn: Connection) -> int:
    """Build every roll-up from scratch (:func:`.rollup_build.build`) and record what they are up
    to; the caller's transaction. Returns the number of systems rolled up."""
    from pmp_scrapy.storage.rollup_build import build as build_all  # the full build: only when needed

    built = build_all(conn)
    record_sources(conn)
    return built


def ensure_built(conn: Connection) -> bool:
    """Build the roll-ups when ``dcapi_rollup_state`` does not name this version's definition, or
    when they are stale (:func:`stale_customers`); returns whether it built them. Reads and writes
    the roll-up tables, their state row and their sources."""
    wanted = definition(conn.dialect.name)
    stored = conn.execute(text("SELECT definition FROM dcapi_rollup_state WHERE name = :name"),
                          {"name": STATE_NAME}).scalar()
    stale = stale_customers(conn) if stored == wanted else []
    if stored == wanted and not stale:
        return False
    if stale:
        logger.info("report roll-ups are behind dcapi_systems for %s (a crawl by a version that keeps no "
                       "roll-ups wrote since): rebuilding them", ", ".join(repr(c) for c in stale),
                       extra={"event_type": "rollups_stale", "customers": stale})
    started = time.monotonic()
    built = build(conn)
    conn.execute(text("DELETE FROM dcapi_rollup_state WHERE name = :name"), {"name": STATE_NAME})
    conn.execute(text("INSERT INTO dcapi_rollup_state (name, definition) VALUES (:name, :definition)"),
                 {"name": STATE_NAME, "definition": wanted})
    if built:
        logger.info("report roll-ups built for %d systems in %.1f s", built, time.monotonic() - started,
                    extra={"event_type": "rollups_built", "systems": built})
    return True
