"""A page's mappings against what is stored: upsert what is new or changed, retire what the page
no longer lists for a system it reported, and write history only for what changed.

``patch_system_mapping`` always shows the present. ``dcapi_mapping_history`` gets a row per
(system, patch) the first time something happens to it after it was first seen (its first
sighting is ``patch_system_mapping.created_at``, so a sweep of an unchanged tenant writes no
history at all); ``dcapi_mapping_events`` keeps every change (status changed, retired, returned,
system retired, system returned) with the snapshot and time it was observed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, select, tuple_, update

from pmp_scrapy.rows import MAPPING_FIELDS, MAPPING_ROW_FIELDS, MappingRow
from pmp_scrapy.storage.rollup import refresh
from pmp_scrapy.storage.schema import mapping_events, mapping_history, patch_system_mapping, systems
from pmp_scrapy.storage.upserts import upsert_rows

_CHUNK = 500  # rows a statement: SQLAlchemy's parameter copies stay small (NFR-1)
_STATUS = MAPPING_ROW_FIELDS.index("patch_status")
_PSM = patch_system_mapping.c


@dataclass
class Changes:
    """What one page changed (counted in stats by the pipeline)."""

    new: int = 0
    changed: int = 0
    status_changes: int = 0
    retired: int = 0
    returned: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    #: systems whose mappings were written or retired (their roll-ups are rebuilt)
    touched: set[str] = field(default_factory=set)
    #: systems reported with mappings (stored or listed): rolled up unless they already are
    with_mappings: set[str] = field(default_factory=set)

    def add(self, other: Changes) -> None:
        self.new += other.new
        self.changed += other.changed
        self.status_changes += other.status_changes
        self.retired += other.retired
        self.returned += other.returned
        self.touched |= other.touched
        self.with_mappings |= other.with_mappings


@dataclass(frozen=True)
class Context:
    """Who and when: the customer, the snapshot and the time of the commit."""

    customer: str
    snapshot_id: int
    now: datetime


def _stored_rows(conn: Connection, system_ids: list[str]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The stored mapping rows of these systems: key -> (row values..., created_at)."""
    columns = [getattr(_PSM, name) for name in MAPPING_ROW_FIELDS]
    stored: dict[tuple[str, str], tuple[Any, ...]] = {}
    for start in range(0, len(system_ids), _CHUNK):
        chunk = system_ids[start:start + _CHUNK]
        for row in conn.execute(select(*columns, _PSM.created_at).where(_PSM.resource_id.in_(chunk))):
            stored[(row[0], row[1])] = tuple(row)
    return stored


def _retired_keys(conn: Connection, ctx: Context, system_ids: list[str]) -> set[tuple[str, str]]:
    """Keys of these systems that were retired earlier (so a sighting now is a return)."""
    h = mapping_history.c
    found: set[tuple[str, str]] = set()
    for start in range(0, len(system_ids), _CHUNK):
        chunk = system_ids[start:start + _CHUNK]
        found.update((r[0], r[1]) for r in conn.execute(select(h.resource_id, h.patch_id).where(
            h.customer == ctx.customer, h.resource_id.in_(chunk), h.retired_snapshot.is_not(None))))
    return found


def _event(ctx: Context, resource_id: str, patch_id: str | None, event: str, old: Any = None,
           new: Any = None) -> dict[str, Any]:
    return {"customer": ctx.customer, "resource_id": resource_id, "patch_id": patch_id,
            "snapshot_id": ctx.snapshot_id, "observed_at": ctx.now, "event": event,
            "old_status": old, "new_status": new}


def _history_upsert(conn: Connection, dialect_insert: Any, values: list[dict[str, Any]], set_: tuple[str, ...]) -> None:
    if not values:
        return
    stmt = dialect_insert(mapping_history)
    stmt = stmt.on_conflict_do_update(index_elements=["customer", "resource_id", "patch_id"],
                                      set_={name: stmt.excluded[name] for name in set_})
    for start in range(0, len(values), _CHUNK):
        conn.execute(stmt, values[start:start + _CHUNK])


def apply_page(conn: Connection, dialect_insert: Any, ctx: Context, rows: list[MappingRow],
               reported: list[str]) -> Changes:
    """Write one page: ``rows`` (one per key, key order) and the ids of the systems it reported."""
    changes = Changes()
    system_ids = sorted(set(reported) | {row[0] for row in rows if row[0]})
    stored = _stored_rows(conn, system_ids) if system_ids else {}
    retired_before = _retired_keys(conn, ctx, system_ids) if system_ids else set()
    upserts: list[MappingRow] = []
    status_history: list[dict[str, Any]] = []
    returned_history: list[dict[str, Any]] = []
    listed: set[tuple[str, str]] = set()
    for row in rows:
        key = (str(row[0]), str(row[1]))  # rows have both ids: systems and patches without one are skipped
        listed.add(key)
        old = stored.get(key)
        if old is not None and old[:len(row)] == row:
            continue  # unchanged: nothing to write
        upserts.append(row)
        if old is None:
            changes.new += 1
            if key in retired_before:
                changes.returned += 1
                changes.events.append(_event(ctx, key[0], key[1], "returned", None, row[_STATUS]))
                returned_history.append({"customer": ctx.customer, "resource_id": key[0], "patch_id": key[1],
                                         "retired_snapshot": None, "retired_at": None,
                                         "patch_status": row[_STATUS], "status_since": ctx.now,
                                         "status_snapshot": ctx.snapshot_id})
            continue
        changes.changed += 1
        if old[_STATUS] != row[_STATUS]:
            changes.status_changes += 1
            changes.events.append(_event(ctx, key[0], key[1], "status_changed", old[_STATUS], row[_STATUS]))
            status_history.append({"customer": ctx.customer, "resource_id": key[0], "patch_id": key[1],
                                   "first_seen_at": old[-1], "patch_status": row[_STATUS],
                                   "status_since": ctx.now, "status_snapshot": ctx.snapshot_id})
    changes.touched.update(str(row[0]) for row in upserts)
    changes.with_mappings.update(key[0] for key in listed)
    changes.with_mappings.update(key[0] for key in stored)
    upsert_rows(conn, patch_system_mapping, MAPPING_ROW_FIELDS, upserts, conflict=("resource_id", "patch_id"),
                update=MAPPING_FIELDS, chunk=_CHUNK)
    _history_upsert(conn, dialect_insert, status_history, ("patch_status", "status_since", "status_snapshot"))
    _history_upsert(conn, dialect_insert, returned_history,
                    ("retired_snapshot", "retired_at", "patch_status", "status_since", "status_snapshot"))
    seen_systems = set(reported)
    gone = [key for key in stored if key[0] in seen_systems and key not in listed]
    if gone:
        retire(conn, dialect_insert, ctx, [stored[key] for key in gone], changes)
    return changes


def retire(conn: Connection, dialect_insert: Any, ctx: Context, stored: list[tuple[Any, ...]],
           changes: Changes, *, last_seen: dict[str, int | None] | None = None) -> None:
    """Move stored rows (``_stored_rows`` values) to history and out of ``patch_system_mapping``."""
    history = []
    for old in stored:
        values = dict(zip(MAPPING_ROW_FIELDS, old))
        history.append({
            "customer": ctx.customer, "resource_id": values["resource_id"], "patch_id": values["patch_id"],
            "first_seen_at": old[-1], "patch_status": values["patch_status"],
            "last_seen_snapshot": (last_seen or {}).get(values["resource_id"]),
            "retired_snapshot": ctx.snapshot_id, "retired_at": ctx.now,
            **{name: values[name] for name in ("patchname", "severity", "bulletinid", "vendor_name",
                                                "installed_time")}})
        changes.events.append(_event(ctx, values["resource_id"], values["patch_id"], "retired",
                                     values["patch_status"], None))
    _history_upsert(conn, dialect_insert, history,
                    ("patch_status", "last_seen_snapshot", "retired_snapshot", "retired_at", "patchname", "severity",
                     "bulletinid", "vendor_name", "installed_time"))
    keys = [(row[0], row[1]) for row in stored]
    for start in range(0, len(keys), _CHUNK):
        conn.execute(delete(patch_system_mapping).where(
            tuple_(_PSM.resource_id, _PSM.patch_id).in_(keys[start:start + _CHUNK])))
    changes.retired += len(stored)
    changes.touched.update(str(row[0]) for row in stored)


def write_events(conn: Connection, events: list[dict[str, Any]]) -> None:
    """Append events to ``dcapi_mapping_events``."""
    for start in range(0, len(events), _CHUNK):
        conn.execute(insert(mapping_events), events[start:start + _CHUNK])


def returned_systems(conn: Connection, ctx: Context, system_ids: list[str]) -> list[str]:
    """Of these systems, those retired earlier (about to be seen again)."""
    s = systems.c
    found: list[str] = []
    for start in range(0, len(system_ids), _CHUNK):
        chunk = system_ids[start:start + _CHUNK]
        found.extend(r[0] for r in conn.execute(select(s.resource_id).where(
            and_(s.customer == ctx.customer, s.resource_id.in_(chunk), s.retired_at.is_not(None)))))
    return found


def retire_systems(conn: Connection, dialect_insert: Any, ctx: Context, system_ids: list[str]) -> int:
    """Retire whole systems: their mappings to history, the systems marked retired. Returns the
    number of mappings retired."""
    changes = Changes()
    s = systems.c
    for start in range(0, len(system_ids), _CHUNK):
        chunk = system_ids[start:start + _CHUNK]
        last_seen = dict(conn.execute(select(s.resource_id, s.last_seen_snapshot).where(
            s.customer == ctx.customer, s.resource_id.in_(chunk))).all())
        stored = list(_stored_rows(conn, chunk).values())
        if stored:
            retire(conn, dialect_insert, ctx, stored, changes, last_seen=last_seen)
        conn.execute(update(systems).where(s.customer == ctx.customer, s.resource_id.in_(chunk))
                     .values(retired_snapshot=ctx.snapshot_id, retired_at=ctx.now))
        refresh(conn, chunk)
        changes.events.extend(_event(ctx, rid, None, "system_retired") for rid in chunk)
    write_events(conn, changes.events)
    return changes.retired
