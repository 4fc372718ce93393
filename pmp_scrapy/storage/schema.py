"""The only place tables and indexes are declared.

The seed's three tables are declared exactly as the requirements spec defines them and are
created only if absent, so a database from earlier tools keeps working. Everything the project
adds lives in tables of its own whose names start ``dcapi_``; each carries a ``customer``
column ('' for a single-tenant PMP) so MSP tenants share one database.
"""

from __future__ import annotations

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
    PrimaryKeyConstraint("customer", "resource_id"),
)
Index("idx_dcapi_systems_snapshot", systems.c.customer, systems.c.last_seen_snapshot)

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

MAPPING_FIELDS: tuple[str, ...] = (
    "patchname",
    "severity",
    "patch_status",
    "bulletinid",
    "vendor_name",
    "installed_time",
)

#: The order of values in a mapping row tuple (``rows.MappingRow``).
MAPPING_ROW_FIELDS: tuple[str, ...] = ("resource_id", "patch_id", *MAPPING_FIELDS)
