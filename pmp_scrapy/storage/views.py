"""The ``dcapi_v_*`` SQL views: the compliance answers for anyone with psql, sqlite3, Grafana or
Metabase, and the one definition ``scrapy report`` queries too (see :func:`with_views`), so the
views and every report form give the same numbers.

Semantics (contract, "Compliance answers"): a system is *present* when ``dcapi_systems`` has it
with ``retired_at`` NULL; its mappings are the ``patch_system_mapping`` rows of its
``resource_id``. It *misses* a patch when ``patch_status`` is Missing or 202 (trimmed,
case-insensitive); installed: Installed or 201. Counts are of systems, never of rows. Severity
codes 0-4 become names here (:mod:`pmp_scrapy.reporting.codes`); the tables keep what the
server sent.

=================================  ============================================================
view                               one row per
=================================  ============================================================
``dcapi_v_mappings``               mapping of a present system, with ``severity_name``,
                                   ``status_name``, ``is_missing``, ``missing_since``,
                                   ``days_missing``
``dcapi_v_missing``                missing (system, patch) of a present system
``dcapi_v_system_compliance``      present system: installed/missing counts, missing by
                                   severity, oldest missing since / days
``dcapi_v_patch_compliance``       (customer, patch): systems installed / missing / covered
``dcapi_v_bulletin_compliance``    (customer, bulletin): systems affected / covered / missing
``dcapi_v_cve_compliance``         (customer, CVE of the patch catalog): the same
``dcapi_v_severity_summary``       (customer, severity): systems and patches missing
``dcapi_v_customers``              customer: systems, managed total, coverage, data as of
=================================  ============================================================

"missing since" is ``dcapi_mapping_history.status_since`` while the history holds the mapping as
missing, else the mapping's ``created_at`` (first seen). Ages are days as a fraction, in UTC.

:func:`pmp_scrapy.storage.view_setup.create_views` puts them in the database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pmp_scrapy.reporting.codes import INSTALLED, MISSING, SEVERITY_RANKS
from pmp_scrapy.storage.report_sql import (
    age_days_sql,
    pct_sql,
    severity_name_sql,
    severity_rank_sql,
    status_is_sql,
    status_name_sql,
)

logger = logging.getLogger(__name__)



# --- the views -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class View:
    """One ``dcapi_v_*`` view: its name, the views it reads and its SELECT for a dialect."""

    name: str
    depends: tuple[str, ...]
    select: Callable[[str], str]


def _history_match(dialect: str) -> str:
    """The history row that dates mapping ``m`` of system ``s``: same key, and still missing."""
    return ("h.customer = s.customer AND h.resource_id = m.resource_id AND h.patch_id = m.patch_id "
            f"AND {status_is_sql(dialect, 'h.patch_status', MISSING)}")


def _mapping_columns(dialect: str) -> str:
    return f"""s.customer AS customer, s.resource_id AS resource_id, s.resource_name AS resource_name,
  m.patch_id AS patch_id, m.patchname AS patchname,
  m.severity AS severity, {severity_name_sql(dialect, 'm.severity')} AS severity_name,
  {severity_rank_sql(dialect, 'm.severity')} AS severity_rank,
  m.patch_status AS patch_status, {status_name_sql(dialect, 'm.patch_status')} AS status_name,
  m.bulletinid AS bulletinid, m.vendor_name AS vendor_name, m.installed_time AS installed_time,
  m.created_at AS first_seen_at"""


def _missing_since(dialect: str) -> tuple[str, str]:
    """How a mapping view dates a missing row: ``(join, expression)``; NULL unless missing.

    SQLite: a correlated subquery inside the CASE, no join, so the history is probed for the
    missing rows only (a fifth), where a LEFT JOIN is probed for every row. PostgreSQL: a LEFT
    JOIN, which it hashes in parallel workers (a correlated subplan runs in the leader alone,
    five times slower) and drops altogether from queries that do not read the date."""
    missing = status_is_sql(dialect, "m.patch_status", MISSING)
    if dialect == "postgresql":
        return (f"LEFT JOIN dcapi_mapping_history h ON {_history_match(dialect)}",
                f"CASE WHEN {missing} THEN COALESCE(h.status_since, m.created_at) END")
    history = f"SELECT h.status_since FROM dcapi_mapping_history h WHERE {_history_match(dialect)}"
    return "", f"CASE WHEN {missing} THEN COALESCE(({history}), m.created_at) END"


def _mappings(dialect: str) -> str:
    missing = status_is_sql(dialect, "m.patch_status", MISSING)
    history, since = _missing_since(dialect)
    return f"""SELECT {_mapping_columns(dialect)},
  CASE WHEN {missing} THEN 1 ELSE 0 END AS is_missing,
  CASE WHEN {status_is_sql(dialect, 'm.patch_status', INSTALLED)} THEN 1 ELSE 0 END AS is_installed,
  {since} AS missing_since
FROM dcapi_systems s
JOIN patch_system_mapping m ON m.resource_id = s.resource_id
{history}
WHERE s.retired_at IS NULL"""


def _missing(dialect: str) -> str:
    # Filtered on the status itself, not on is_missing = 1: PostgreSQL estimates the condition
    # from the column's statistics, never through a CASE.
    return f"""SELECT customer, resource_id, resource_name, patch_id, patchname, severity, severity_name,
  severity_rank, bulletinid, vendor_name, missing_since, {age_days_sql(dialect, 'missing_since')} AS days_missing
FROM dcapi_v_mappings WHERE {status_is_sql(dialect, 'patch_status', MISSING)}"""


def _missing_by(rank: int) -> str:
    return f"SUM(CASE WHEN is_missing = 1 AND severity_rank = {rank} THEN 1 ELSE 0 END)"


def _system(dialect: str) -> str:
    by_severity = ",\n    ".join(f"{_missing_by(rank)} AS missing_{name.lower()}"
                                for name, rank in SEVERITY_RANKS.items())
    # Grouped by (customer, resource_id) alone, the order of dcapi_systems' primary key: SQLite
    # then aggregates as it reads, without sorting 1.6 million rows.
    return f"""SELECT customer, resource_id, resource_name, patches, installed_count, missing_count,
  {', '.join(f'missing_{name.lower()}' for name in SEVERITY_RANKS)},
  oldest_missing_since, {age_days_sql(dialect, 'oldest_missing_since')} AS oldest_missing_days
FROM (SELECT customer, resource_id, MAX(resource_name) AS resource_name,
    COUNT(*) AS patches, SUM(is_installed) AS installed_count, SUM(is_missing) AS missing_count,
    {by_severity},
    MIN(missing_since) AS oldest_missing_since
  FROM dcapi_v_mappings GROUP BY customer, resource_id) g"""


def _patch(_dialect: str) -> str:
    return f"""SELECT customer, patch_id, MAX(patchname) AS patchname, MAX(severity_name) AS severity_name,
  MAX(severity_rank) AS severity_rank, MAX(bulletinid) AS bulletinid, MAX(vendor_name) AS vendor_name,
  COUNT(*) AS systems, SUM(is_installed) AS systems_installed, SUM(is_missing) AS systems_missing,
  COUNT(*) - SUM(is_missing) AS systems_covered,
  {pct_sql('COUNT(*) - SUM(is_missing)', 'COUNT(*)')} AS coverage_pct
FROM dcapi_v_mappings GROUP BY customer, patch_id"""


def _reach(resource: str, missing: str) -> str:
    """Systems affected, covered and missing, and the covered share, over the rows in scope."""
    affected = f"COUNT(DISTINCT {resource})"
    missed = f"COUNT(DISTINCT CASE WHEN {missing} THEN {resource} END)"
    return f"""{affected} AS systems_affected,
  {affected} - {missed} AS systems_covered,
  {missed} AS systems_missing,
  {pct_sql(f'{affected} - {missed}', affected)} AS coverage_pct"""


def _bulletin(_dialect: str) -> str:
    return f"""SELECT customer, bulletinid AS bulletin, COUNT(DISTINCT patch_id) AS patches,
  {_reach('resource_id', 'is_missing = 1')}
FROM dcapi_v_mappings WHERE bulletinid IS NOT NULL AND bulletinid <> ''
GROUP BY customer, bulletinid"""


def _cve(dialect: str) -> str:
    # From the catalog's (patch, CVE) rows to the patches' mappings by patch id, then to their
    # present systems by primary key. Spelled out with SQLite's CROSS JOIN, which keeps that
    # order: left to itself SQLite pairs every catalog row with every system of the customer
    # (one customer value matches all), minutes instead of seconds. A CVE that no present
    # system has a patch for has no row; ``patches`` counts the catalog's patches carrying it.
    join = "CROSS JOIN" if dialect == "sqlite" else "JOIN"
    return f"""SELECT c.customer AS customer, c.cve_id AS cve,
  (SELECT COUNT(*) FROM dcapi_patch_cves k WHERE k.customer = c.customer AND k.cve_id = c.cve_id) AS patches,
  {_reach('m.resource_id', status_is_sql(dialect, 'm.patch_status', MISSING))}
FROM dcapi_patch_cves c
{join} patch_system_mapping m ON m.patch_id = c.patch_id
{join} dcapi_systems s ON s.customer = c.customer AND s.resource_id = m.resource_id
WHERE s.retired_at IS NULL
GROUP BY c.customer, c.cve_id"""


def _severity(_dialect: str) -> str:
    return """SELECT customer, severity_name, MAX(severity_rank) AS severity_rank,
  COUNT(DISTINCT resource_id) AS systems_missing, COUNT(DISTINCT patch_id) AS patches_missing
FROM dcapi_v_missing GROUP BY customer, severity_name"""


def _customers(_dialect: str) -> str:
    latest = "FROM dcapi_snapshots x WHERE x.customer = c.customer"
    systems = "COALESCE(n.systems, 0)"
    return f"""SELECT k.customer AS customer, {systems} AS systems, k.managed_total AS managed_total,
  {pct_sql(systems, 'k.managed_total')} AS coverage_pct,
  k.data_as_of AS data_as_of, k.latest_snapshot_id AS latest_snapshot_id,
  k.latest_snapshot_state AS latest_snapshot_state
FROM (SELECT c.customer AS customer,
    (SELECT x.managed_total {latest} AND x.managed_total IS NOT NULL
       ORDER BY x.snapshot_id DESC LIMIT 1) AS managed_total,
    (SELECT x.completed_at {latest} AND x.state = 'complete'
       ORDER BY x.snapshot_id DESC LIMIT 1) AS data_as_of,
    (SELECT x.snapshot_id {latest} ORDER BY x.snapshot_id DESC LIMIT 1) AS latest_snapshot_id,
    (SELECT x.state {latest} ORDER BY x.snapshot_id DESC LIMIT 1) AS latest_snapshot_state
  FROM (SELECT DISTINCT customer FROM dcapi_systems UNION SELECT DISTINCT customer FROM dcapi_snapshots) c) k
LEFT JOIN (SELECT s.customer AS customer, COUNT(*) AS systems FROM dcapi_systems s
    WHERE s.retired_at IS NULL
      AND EXISTS (SELECT 1 FROM patch_system_mapping m WHERE m.resource_id = s.resource_id)
    GROUP BY s.customer) n ON n.customer = k.customer"""


#: Every view, each after the views it reads.
VIEWS: tuple[View, ...] = (
    View("dcapi_v_mappings", (), _mappings),
    View("dcapi_v_missing", ("dcapi_v_mappings",), _missing),
    View("dcapi_v_system_compliance", ("dcapi_v_mappings",), _system),
    View("dcapi_v_patch_compliance", ("dcapi_v_mappings",), _patch),
    View("dcapi_v_bulletin_compliance", ("dcapi_v_mappings",), _bulletin),
    View("dcapi_v_cve_compliance", (), _cve),
    View("dcapi_v_severity_summary", ("dcapi_v_missing",), _severity),
    View("dcapi_v_customers", (), _customers),
)
_BY_NAME = {view.name: view for view in VIEWS}


def with_views(dialect: str, *names: str) -> str:
    """A ``WITH`` clause defining ``names`` (and the views they read) under the views' own
    names, for a query that must not depend on the views in the database being this version's.
    ``NOT MATERIALIZED``: each is expanded where used, so filters reach the tables' indexes."""
    needed: list[str] = []

    def add(name: str) -> None:
        for dependency in _BY_NAME[name].depends:
            add(dependency)
        if name not in needed:
            needed.append(name)

    for name in names:
        add(name)
    parts = [f"{name} AS NOT MATERIALIZED (\n{_BY_NAME[name].select(dialect)}\n)" for name in needed]
    return "WITH " + ",\n".join(parts) + "\n"


def view_ddl(view: View, dialect: str) -> str:
    """The ``CREATE VIEW`` statement of ``view``."""
    return f"CREATE VIEW {view.name} AS\n{view.select(dialect)}"
