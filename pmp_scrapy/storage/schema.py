"""The only place tables and indexes are declared.

The seed's three tables are declared exactly as the requirements spec defines them and are
created only if absent, so a database from earlier tools keeps working. Everything the project
adds lives in tables of its own whose names start ``dcapi_``; each carries a ``customer``
column ('' for a single-tenant PMP) so MSP tenants share one database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    REAL,
    TIMESTAMP,
    Column,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

if TYPE_CHECKING:
    from pmp_scrapy.rows import MAPPING_FIELDS, MAPPING_ROW_FIELDS

__all__ = ["MAPPING_FIELDS", "MAPPING_ROW_FIELDS", "metadata"]


def __getattr__(name: str) -> Any:
    """The column order of the rows (:mod:`pmp_scrapy.rows`), imported when asked for."""
    if name in ("MAPPING_FIELDS", "MAPPING_ROW_FIELDS"):
        from pmp_scrapy import rows

        return getattr(rows, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

metadata = MetaData()
_now = text("CURRENT_TIMESTAMP")

# --- the seed's tables (spec "Database Schema"): do not change ----------------------------
patch_system_mapping = Table(
    "patch_system_mapping",
    metadata,
    Column("mapping_id", Integer, primary_key=True, autoincrement=True),
    Column("resource_id", Text, nullable=False),
    Column("patch_id", Text, nullable=False),
    Column("patchname", Text),
    Column("severity", Text),
    Column("patch_status", Text),
    Column("bulletinid", Text),
    Column("vendor_name", Text),
    Column("installed_time", Text),
    Column("created_at", TIMESTAMP, server_default=_now),
    UniqueConstraint("resource_id", "patch_id"),
    sqlite_autoincrement=True,
)
Index("idx_psm_resource", patch_system_mapping.c.resource_id)
Index("idx_psm_patch", patch_system_mapping.c.patch_id)
Index("idx_psm_status", patch_system_mapping.c.patch_status)
Index("idx_psm_severity", patch_system_mapping.c.severity)

checkpoints = Table(
    "dcapi_extraction_checkpoints",
    metadata,
    Column("checkpoint_id", Integer, primary_key=True, autoincrement=True),
    Column("snapshot_id", Integer, nullable=False),
    Column("last_page", Integer, nullable=False),
    Column("systems_extracted", Integer, nullable=False),
    Column("patches_extracted", Integer, nullable=False),
    Column("coverage_pct", REAL, nullable=False),
    Column("created_at", TIMESTAMP, server_default=_now),
    Column("updated_at", TIMESTAMP, server_default=_now),
    UniqueConstraint("snapshot_id"),
    sqlite_autoincrement=True,
)
Index("idx_dcapi_checkpoints_snapshot", checkpoints.c.snapshot_id)

gaps = Table(
    "dcapi_extraction_gaps",
    metadata,
    Column("gap_id", Integer, primary_key=True, autoincrement=True),
    Column("snapshot_id", Integer, nullable=False),
    Column("page_num", Integer, nullable=False),
    Column("error_type", Text, nullable=False),
    Column("error_message", Text),
    Column("response_sample", Text),
    Column("attempts", Integer, nullable=False),
    Column("created_at", TIMESTAMP, server_default=_now),
    UniqueConstraint("snapshot_id", "page_num"),
    sqlite_autoincrement=True,
)
Index("idx_dcapi_gaps_snapshot", gaps.c.snapshot_id)

# --- the project's own tables ------------------------------------------------------------------
snapshots = Table(
    "dcapi_snapshots",
    metadata,
    Column("snapshot_id", Integer, primary_key=True, autoincrement=False),
    Column("customer", Text, nullable=False, server_default=""),
    # running -> complete (the sweep reached the last page) | abandoned (reset or corrupt)
    Column("state", Text, nullable=False, server_default="running"),
    Column("page_limit", Integer),
    Column("total_pages", Integer),
    Column("total_records", Integer),
    Column("managed_total", Integer),
    Column("started_at", TIMESTAMP, server_default=_now),
    Column("completed_at", TIMESTAMP),
    # The patch catalog's sweep in this snapshot: NULL (not yet), complete, partial, unavailable
    Column("catalog_state", Text),
    # Reconciliation at completion: reconciled | refused (guard tripped) | skipped (gaps open)
    Column("reconcile_state", Text),
    Column("retired_systems", Integer),
    Column("retired_mappings", Integer),
    Column("source", Text),  # "demo" for the built-in simulator's data, else "pmp"
)
Index("idx_dcapi_snapshots_customer", snapshots.c.customer, snapshots.c.snapshot_id)

systems = Table(
    "dcapi_systems",
    metadata,
    Column("customer", Text, nullable=False, server_default=""),
    Column("resource_id", Text, nullable=False),
    Column("resource_name", Text),
    Column("patch_count", Integer, nullable=False, server_default="0"),
    Column("first_seen_snapshot", Integer),
    Column("last_seen_snapshot", Integer),
    Column("last_seen_page", Integer),
    Column("last_seen_at", TIMESTAMP, server_default=_now),
    # Set when a complete, gap-free snapshot no longer reports the system (its mappings are
    # then gone from patch_system_mapping and kept in dcapi_mapping_history); NULL: present.
    Column("retired_snapshot", Integer),
    Column("retired_at", TIMESTAMP),
    # totalRecords of the answer the system was last seen in: tells a system seen in the tenant's
    # final state of a snapshot from one seen only before the tenant changed mid-sweep
    Column("last_seen_records", Integer),
    PrimaryKeyConstraint("customer", "resource_id"),
)
Index("idx_dcapi_systems_present", systems.c.customer, systems.c.retired_at)
Index("idx_dcapi_systems_snapshot_patches",  # covers the checkpoint's counts: no row lookups
      systems.c.customer, systems.c.last_seen_snapshot, systems.c.patch_count)
Index("idx_dcapi_systems_resource", systems.c.resource_id)  # mappings carry no customer: the roll-ups' way in

# The totalRecords each page of a snapshot was last answered with: pages answered before the
# tenant changed mid-sweep are read again before the snapshot counts as complete.
snapshot_pages = Table(
    "dcapi_snapshot_pages",
    metadata,
    Column("snapshot_id", Integer, nullable=False),
    Column("page_num", Integer, nullable=False),
    Column("total_records", Integer),
    Column("reads", Integer, nullable=False, server_default="1"),
    Column("read_at", TIMESTAMP, server_default=_now),
    PrimaryKeyConstraint("snapshot_id", "page_num"),
)

gap_state = Table(
    "dcapi_gap_state",
    metadata,
    Column("snapshot_id", Integer, nullable=False),
    Column("page_num", Integer, nullable=False),
    Column("http_status", Integer),
    Column("runs_attempted", Integer, nullable=False, server_default="1"),
    Column("last_attempt_at", TIMESTAMP, server_default=_now),
    Column("resolved_at", TIMESTAMP),  # NULL while the gap is open
    PrimaryKeyConstraint("snapshot_id", "page_num"),
)

runs = Table(
    "dcapi_runs",
    metadata,
    Column("run_id", Integer, primary_key=True, autoincrement=True),
    Column("customer", Text, nullable=False, server_default=""),
    Column("snapshot_id", Integer),
    Column("started_at", TIMESTAMP),
    Column("finished_at", TIMESTAMP, server_default=_now),
    Column("close_reason", Text),
    Column("exit_code", Integer),
    Column("pages_committed", Integer),
    Column("gaps_opened", Integer),
    Column("gaps_resolved", Integer),
    Column("mappings_upserted", Integer),
    Column("systems_with_mappings", Integer),
    Column("coverage_pct", REAL),
    Column("message", Text),
    sqlite_autoincrement=True,
)
Index("idx_dcapi_runs_customer", runs.c.customer, runs.c.run_id)

# --- history: written only when something changes (first seen, status change, retirement) ------
mapping_history = Table(
    "dcapi_mapping_history",
    metadata,
    Column("customer", Text, nullable=False, server_default=""),
    Column("resource_id", Text, nullable=False),
    Column("patch_id", Text, nullable=False),
    Column("first_seen_snapshot", Integer),
    Column("first_seen_at", TIMESTAMP),
    Column("patch_status", Text),  # the last status observed, as the server sent it
    Column("status_since", TIMESTAMP),  # when that status was first observed ("missing since")
    Column("status_snapshot", Integer),
    Column("last_seen_snapshot", Integer),  # filled in at retirement
    Column("retired_snapshot", Integer),  # NULL while the mapping is present
    Column("retired_at", TIMESTAMP),
    # the mapping's fields as they were when it was retired (patch_system_mapping keeps the present)
    Column("patchname", Text),
    Column("severity", Text),
    Column("bulletinid", Text),
    Column("vendor_name", Text),
    Column("installed_time", Text),
    PrimaryKeyConstraint("customer", "resource_id", "patch_id"),
)
Index("idx_dcapi_history_patch", mapping_history.c.patch_id)

mapping_events = Table(
    "dcapi_mapping_events",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("customer", Text, nullable=False, server_default=""),
    Column("resource_id", Text, nullable=False),
    Column("patch_id", Text),  # NULL for a system-level event
    Column("snapshot_id", Integer, nullable=False),
    Column("observed_at", TIMESTAMP, nullable=False),
    # first_seen | status_changed | retired | returned | system_retired | system_returned
    Column("event", Text, nullable=False),
    Column("old_status", Text),
    Column("new_status", Text),
    sqlite_autoincrement=True,
)
Index("idx_dcapi_events_key", mapping_events.c.customer, mapping_events.c.resource_id, mapping_events.c.patch_id)
Index("idx_dcapi_events_snapshot", mapping_events.c.snapshot_id)
Index("idx_dcapi_events_customer_snapshot", mapping_events.c.customer, mapping_events.c.snapshot_id)  # report trend

# --- the patch catalog (/dcapi/threats/patches): CVE ids per patch --------------------------------
patch_catalog = Table(
    "dcapi_patch_catalog",
    metadata,
    Column("customer", Text, nullable=False, server_default=""),
    Column("patch_id", Text, nullable=False),
    Column("patch_name", Text),
    Column("bulletinid", Text),
    Column("severity", Text),
    Column("vendor_name", Text),
    Column("kb_number", Text),
    Column("reboot_required", Integer),  # 1/0, NULL when not sent
    Column("released_time", Text),  # epoch milliseconds as sent
    Column("installed_system_count", Integer),
    Column("missing_system_count", Integer),
    Column("snapshot_id", Integer),
    Column("updated_at", TIMESTAMP, server_default=_now),
    PrimaryKeyConstraint("customer", "patch_id"),
)

patch_cves = Table(
    "dcapi_patch_cves", metadata, Column("customer", Text, nullable=False, server_default=""),
    Column("patch_id", Text, nullable=False), Column("cve_id", Text, nullable=False),
    PrimaryKeyConstraint("customer", "patch_id", "cve_id"))
Index("idx_dcapi_patch_cves_cve", patch_cves.c.cve_id)

# --- roll-ups (pmp_scrapy.storage.rollup keeps them in the batch-commit transaction) -------------
# dcapi_v_mappings per present system with a mapping (their count is the coverage); dcapi_v_missing's pairs
_SEVERITY_COLUMNS = ("critical", "important", "moderate", "low", "unrated")
system_rollup = Table(
    "dcapi_system_rollup", metadata, Column("customer", Text, nullable=False, server_default=""),
    Column("resource_id", Text, nullable=False),
    *(Column(name, Integer, nullable=False) for name in ("mappings", "installed", "missing")),
    *(Column(f"missing_{name}", Integer, nullable=False) for name in (*_SEVERITY_COLUMNS, "other")),
    *(Column(f"oldest_{name}_since", TIMESTAMP) for name in ("missing", *_SEVERITY_COLUMNS)),
    PrimaryKeyConstraint("customer", "resource_id"))
missing_pairs = Table(
    "dcapi_missing_pairs", metadata, Column("customer", Text, nullable=False, server_default=""),
    *(Column(name, Text, nullable=False) for name in ("resource_id", "patch_id", "severity_name")),
    Column("missing_since", TIMESTAMP), PrimaryKeyConstraint("customer", "resource_id", "patch_id"))
# Covering ranges: per patch (most missed, SLA per patch) and per severity by age (SLA counts, breaches)
_MP = missing_pairs.c
Index("idx_dcapi_missing_patch", _MP.customer, _MP.patch_id, _MP.severity_name, _MP.missing_since, _MP.resource_id)
Index("idx_dcapi_missing_age", _MP.customer, _MP.severity_name, _MP.missing_since, _MP.resource_id, _MP.patch_id)
rollup_state = Table(  # which definition built the roll-ups: another one (or none) rebuilds them at open
    "dcapi_rollup_state", metadata, Column("name", Text, primary_key=True),
    Column("definition", Text, nullable=False), Column("built_at", TIMESTAMP, server_default=_now))
# Per customer, the dcapi_systems maxima the roll-ups are up to: others at open mean stale (rollup.py)
rollup_sources = Table(
    "dcapi_rollup_sources", metadata, Column("customer", Text, primary_key=True),
    Column("last_seen_at", TIMESTAMP), Column("retired_at", TIMESTAMP))
# (folded bulletin, patch) of every mapping row with one (a superset until a rebuild): --bulletin's way in
bulletin_patches = Table(
    "dcapi_bulletin_patches", metadata, Column("bulletin_key", Text, nullable=False),
    Column("patch_id", Text, nullable=False), PrimaryKeyConstraint("bulletin_key", "patch_id"))

# --- shared limits of one tenant across runs ------------------------------------------------------
token_mints = Table(
    "dcapi_token_mints", metadata, Column("mint_id", Integer, primary_key=True, autoincrement=True),
    Column("client_key", Text, nullable=False),  # a fingerprint of the client id, never a secret
    Column("minted_at", REAL, nullable=False),  # epoch seconds
    sqlite_autoincrement=True)
Index("idx_dcapi_token_mints_client", token_mints.c.client_key, token_mints.c.minted_at)

SEED_TABLES = frozenset({patch_system_mapping.name, checkpoints.name, gaps.name})
