"""The query plans the report benchmark prints (``report.py``): SQLite's EXPLAIN QUERY PLAN and
PostgreSQL's EXPLAIN ANALYZE of the queries each ``scrapy report`` form, ``scrapy status``, the
open and the batch commit spend their time in."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa


def plan_queries(picked: dict[str, str], dialect: str) -> list[tuple[str, str, tuple[str, ...], dict[str, Any]]]:
    """(label, query, views, parameters) of the queries the forms spend their time in."""
    from pmp_scrapy.storage.report_sql import equals_folded_sql
    from pmp_scrapy.storage.rollup import _changed_sources, _inserts

    moment = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=15)
    since: Any = moment if dialect == "postgresql" else moment.isoformat(sep=" ")
    pairs = "FROM dcapi_missing_pairs WHERE customer = ''"
    refresh = _inserts(dialect, "resource_id IN (" + ", ".join(f"'{20001 + i}'" for i in range(30)) + ")")
    return [
        ("summary: the systems' roll-up rows", "SELECT * FROM dcapi_system_rollup WHERE customer = '' AND missing > 0",
         (), {}),
        ("summary: missing systems per (patch, severity)", (f"SELECT patch_id, severity_name, COUNT(*), "
         f"MIN(missing_since) {pairs} GROUP BY patch_id, severity_name"), (), {}),
        ("summary: pairs past their SLA, per severity", (f"SELECT severity_name, COUNT(*) {pairs} AND ("
         "(severity_name = 'Critical' AND missing_since < :since) OR (severity_name = 'Important' AND missing_since "
         "< :since) OR (severity_name = 'Moderate' AND missing_since < :since) OR (severity_name = 'Low' AND "
         "missing_since < :since)) GROUP BY severity_name"), (), {"since": since}),
        ("summary: the oldest Critical breaches", (f"SELECT missing_since, resource_id, patch_id {pairs} AND "
         "severity_name = 'Critical' AND missing_since < :since ORDER BY missing_since, resource_id, patch_id "
         "LIMIT 10"), (), {"since": since}),
        ("checkpoint: coverage", "SELECT COUNT(*) FROM dcapi_system_rollup WHERE customer = ''", (), {}),
        ("commit: a page's systems rolled up again", refresh[0], (), {}),
        ("commit: a page's missing pairs again", refresh[1], (), {}),
        ("commit: a page's bulletin patches", refresh[2], (), {}),
        ("html: systems missing a CVE several patches fix", (f"SELECT patch_id, resource_id {pairs} "
         "AND patch_id IN (SELECT patch_id FROM dcapi_patch_cves WHERE cve_id = :cve)"), (), {"cve": picked["cve"]}),
        ("summary: coverage and freshness", "SELECT * FROM dcapi_v_customers WHERE customer = ''",
         ("dcapi_v_customers",), {}),
        ("--system: its missing patches", "SELECT * FROM dcapi_v_missing WHERE customer = '' AND resource_id = :rid",
         ("dcapi_v_missing",), {"rid": picked["system_id"]}),
        ("--patch: its systems", ("SELECT resource_id, status_name, missing_since FROM dcapi_v_mappings "
         "WHERE customer = '' AND patch_id = :pid"), ("dcapi_v_mappings",), {"pid": picked["patch"]}),
        ("--bulletin: its patches' rows", ("SELECT resource_id, resource_name, patch_id, bulletinid, is_missing "
         "FROM dcapi_v_mappings WHERE customer = '' AND patch_id IN (SELECT patch_id FROM dcapi_bulletin_patches "
         f"WHERE bulletin_key = lower(:b)) AND {equals_folded_sql(dialect, 'bulletinid', ':b')}"),
         ("dcapi_v_mappings",), {"b": picked["bulletin"]}),
        ("status: coverage and mappings", ("SELECT COUNT(*), COALESCE(SUM(mappings), 0) FROM dcapi_system_rollup "
         "WHERE customer = ''"), (), {}),
        ("open: are the roll-ups stale?", _changed_sources(dialect), (), {}),
        ("csv: pairs past their SLA per system", (f"SELECT resource_id, COUNT(*) {pairs} AND severity_name = "
         "'Critical' AND missing_since < :since GROUP BY resource_id"), (), {"since": since}),
        ("--cve: the rows of its patches", ("SELECT resource_id, patch_id, is_missing FROM dcapi_v_mappings "
         "WHERE customer = '' AND patch_id IN (SELECT patch_id FROM dcapi_patch_cves WHERE cve_id = :cve)"),
         ("dcapi_v_mappings",), {"cve": picked["cve"]}),
        ("html: CVEs that concern present systems", ("SELECT COUNT(DISTINCT c.cve_id) FROM dcapi_patch_cves c "
         "WHERE c.customer = '' AND EXISTS (SELECT 1 FROM dcapi_v_mappings v WHERE v.customer = c.customer "
         "AND v.patch_id = c.patch_id)"), ("dcapi_v_mappings",), {}),
        ("html: the trend's status changes", ("SELECT snapshot_id, COUNT(*) FROM dcapi_mapping_events "
         "WHERE customer = '' AND patch_id IS NOT NULL AND snapshot_id > 1 GROUP BY snapshot_id"), (), {}),
    ]


def print_plans(url: str, picked: dict[str, str]) -> None:
    from pmp_scrapy.storage.views import with_views

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        postgres = conn.dialect.name == "postgresql"
        # PostgreSQL: the plan as run, with its times (the commit's statements run in a savepoint
        # rolled back afterwards, their systems' rows deleted first as the refresh does).
        explain = "EXPLAIN (ANALYZE, COSTS OFF)" if postgres else "EXPLAIN QUERY PLAN"
        if postgres:
            conn.exec_driver_sql("SET jit = off")  # as the report reader runs
        for label, query, views, params in plan_queries(picked, conn.dialect.name):
            sql = (with_views(conn.dialect.name, *views) if views else "") + query
            savepoint = conn.begin_nested()
            if postgres and label.startswith("commit: a page's"):
                ids = ", ".join(f"'{20001 + i}'" for i in range(30))
                for table in ("dcapi_system_rollup", "dcapi_missing_pairs"):
                    conn.exec_driver_sql(f"DELETE FROM {table} WHERE resource_id IN ({ids})")
            rows = conn.execute(sa.text(f"{explain} {sql}"), params).fetchall()
            savepoint.rollback()
            print(f"  -- {label}")
            for row in rows:
                print("     " + (str(row[0]) if postgres else f"{'  ' * (row[1] != 0)}{row[3]}"))
    engine.dispose()
