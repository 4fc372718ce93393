"""The report benchmark's database: 33,000 present systems (about 1.6 million mappings, the
simulator's mix of severities, vendors and bulletins), a patch catalog with CVE ids, five complete
snapshots with their runs and checkpoints, the mapping history and status-change events, bulk
inserted straight into the tables (see ``report.py``). Used by ``report.py`` and ``startup.py``."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa

from pmp_scrapy.storage.engine import open_engine

CATALOG_SIZE = 3302
SNAPSHOTS = 5
SEVERITIES = (("Critical", 0.30), ("Important", 0.70), ("Moderate", 0.90), ("Low", 1.0))
VENDORS = (("Microsoft", 0.60), ("Mozilla", 0.68), ("Google", 0.76), ("Adobe", 0.83), ("Oracle", 0.88),
           ("VideoLAN", 0.94), ("Zoom Video Communications", 0.97), ("Citrix", 1.0))


# --- the data --------------------------------------------------------------------------------------

def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    return next((value for value, cumulative in table if r < cumulative), table[-1][0])


def catalog(rng: random.Random) -> list[dict[str, Any]]:
    """Patches with the simulator's mix: Microsoft KBs with MS or CVE bulletins, third parties;
    each with 0-3 CVE ids, about one CVE in ten shared by two patches (fixed by either)."""
    patches: list[dict[str, Any]] = []
    shared: list[str] = []
    for j in range(CATALOG_SIZE):
        vendor = _pick(rng, VENDORS)
        year = rng.randint(2018, 2025)
        kb: str | None
        bulletin: str | None
        if vendor == "Microsoft":
            kb = f"KB{rng.randint(2500000, 5050000)}"
            name = f"Windows10.0-{kb}-x64.msu" if rng.random() < 0.6 else f"office2016-{kb.lower()}-x64.exe"
            bulletin = f"MS{rng.randint(10, 17)}-{rng.randint(1, 130):03d}" if rng.random() < 0.35 \
                else f"CVE-{year}-{rng.randint(20000, 49999)}"
        else:
            kb = None
            name = f"{vendor.split()[0].lower()}-{rng.randint(1, 140)}.{j}-x64.exe"
            bulletin = None if rng.random() < 0.25 else f"{vendor[:4].upper()}-{year}-{j % 90:02d}"
        cves = [f"CVE-{year}-{rng.randint(1000, 99999)}" for _ in range(rng.choice((0, 1, 1, 2, 3)))]
        if bulletin and bulletin.startswith("CVE-"):
            cves.append(bulletin)
        if shared and rng.random() < 0.1:
            cves.append(shared.pop())
        elif cves and rng.random() < 0.1:
            shared.append(cves[0])
        patches.append({"patch_id": str(10001 + 3 * j + rng.randrange(3)), "patchname": name,
                        "severity": _pick(rng, SEVERITIES), "bulletinid": bulletin, "vendor_name": vendor,
                        "kb_number": kb, "cves": sorted(set(cves))})
    return patches


def patch_count(rng: random.Random, server: bool) -> int:
    if server:
        return int(rng.triangular(200, 500, 300))
    return int(rng.triangular(10, 75, 15)) if rng.random() < 0.93 else int(rng.triangular(80, 200, 85))


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class Estate:
    """The benchmark's rows, generated deterministically and streamed table by table."""

    def __init__(self, systems: int, seed: int = 7) -> None:
        self.systems, self.seed = systems, seed
        self.now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        self.patches = catalog(random.Random(f"{seed}:catalog"))
        self.snapshot_times = [self.now - timedelta(days=SNAPSHOTS - i, hours=1) for i in range(SNAPSHOTS)]

    def system_rows(self) -> Iterator[tuple[Any, ...]]:
        for i in range(self.systems):
            rng = random.Random(f"{self.seed}:{i}")
            server = rng.random() < 0.035
            name = f"SRV-{i:05d}" if server else f"PC-{['Zurich', 'Sydney', 'Koeln', 'Perth'][i % 4]}-{i:05d}"
            yield ("", str(20001 + i), name, 0, 1, SNAPSHOTS, 1 + i // 30, ts(self.now - timedelta(hours=2)), None, None)
        for i in range(self.systems // 100):  # retired systems: kept, never counted
            yield ("", str(900001 + i), f"OLD-{i:04d}", 0, 1, 2, 1, ts(self.now - timedelta(days=4)), 3,
                   ts(self.snapshot_times[2]))

    def mappings(self) -> Iterator[tuple[str, dict[str, Any], str, str | None, int]]:
        """``(resource_id, patch, status, installed_time, missing_days)`` for every mapping."""
        for i in range(self.systems):
            rng = random.Random(f"{self.seed}:{i}")
            server = rng.random() < 0.035
            installed_rate = rng.uniform(0.65, 0.95)
            for j in sorted(rng.sample(range(CATALOG_SIZE), patch_count(rng, server))):
                installed = rng.random() < installed_rate
                when = str(rng.randrange(1_672_531_200_000, 1_763_596_800_000)) if installed else None
                yield (str(20001 + i), self.patches[j], "Installed" if installed else "Missing", when,
                       0 if installed else int(rng.triangular(0, 400, 10)))


def _copy_rows(conn: Any, table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> int:
    """Bulk insert: COPY on PostgreSQL, executemany on SQLite."""
    count = 0
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
    cursor = raw.cursor()
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == 20000:
            cursor.executemany(sql, batch)
            count += len(batch)
            batch = []
    cursor.executemany(sql, batch)
    return count + len(batch)


def build(url: str, estate: Estate) -> dict[str, int]:
    """Create the schema (``open_engine``: tables, views) and fill it; returns row counts. The
    rows go through a plain engine: the project's sessions carry statement timeouts made for
    batches of 500 rows, not for a COPY of 1.6 million."""
    open_engine(url).dispose()
    engine = sa.create_engine(url)
    counts: dict[str, int] = {}
    first_seen = estate.snapshot_times[0]
    with engine.begin() as conn:
        counts["dcapi_systems"] = _copy_rows(conn, "dcapi_systems", (
            "customer", "resource_id", "resource_name", "patch_count", "first_seen_snapshot", "last_seen_snapshot",
            "last_seen_page", "last_seen_at", "retired_snapshot", "retired_at"), estate.system_rows())

        def first_seen_of(status: str, days: int) -> datetime:
            # The extractor has run for a year: a missing patch was first seen when it went missing
            # (up to 400 days back); installed ones at the first kept snapshot.
            return estate.now - timedelta(days=days, hours=3) if status == "Missing" else first_seen

        def mapping_rows() -> Iterator[tuple[Any, ...]]:
            for rid, patch, status, when, days in estate.mappings():
                yield (rid, patch["patch_id"], patch["patchname"], patch["severity"], status, patch["bulletinid"],
                       patch["vendor_name"], when, ts(first_seen_of(status, days)))

        counts["patch_system_mapping"] = _copy_rows(conn, "patch_system_mapping", (
            "resource_id", "patch_id", "patchname", "severity", "patch_status", "bulletinid", "vendor_name",
            "installed_time", "created_at"), mapping_rows())

        def history_rows() -> Iterator[tuple[Any, ...]]:
            for rid, patch, status, _when, days in estate.mappings():
                since = ts(first_seen_of(status, days))
                yield ("", rid, patch["patch_id"], 1, since, status, since, 1)

        counts["dcapi_mapping_history"] = _copy_rows(conn, "dcapi_mapping_history", (
            "customer", "resource_id", "patch_id", "first_seen_snapshot", "first_seen_at", "patch_status",
            "status_since", "status_snapshot"), history_rows())

        def event_rows() -> Iterator[tuple[Any, ...]]:
            rng = random.Random(f"{estate.seed}:events")
            for rid, patch, status, _when, _days in estate.mappings():
                yield ("", rid, patch["patch_id"], 1, ts(first_seen), "first_seen", None, status)
                if status == "Installed" and rng.random() < 0.1:  # installed during the kept snapshots
                    snapshot = rng.randint(2, SNAPSHOTS)
                    yield ("", rid, patch["patch_id"], snapshot, ts(estate.snapshot_times[snapshot - 1]),
                           "status_changed", "Missing", "Installed")

        counts["dcapi_mapping_events"] = _copy_rows(conn, "dcapi_mapping_events", (
            "customer", "resource_id", "patch_id", "snapshot_id", "observed_at", "event", "old_status",
            "new_status"), event_rows())

        counts["dcapi_patch_catalog"] = _copy_rows(conn, "dcapi_patch_catalog", (
            "customer", "patch_id", "patch_name", "bulletinid", "severity", "vendor_name", "kb_number",
            "snapshot_id"), (("", p["patch_id"], p["patchname"], p["bulletinid"], p["severity"],
                               p["vendor_name"], p["kb_number"], SNAPSHOTS) for p in estate.patches))
        counts["dcapi_patch_cves"] = _copy_rows(conn, "dcapi_patch_cves", ("customer", "patch_id", "cve_id"), (
            ("", p["patch_id"], cve) for p in estate.patches for cve in p["cves"]))

        managed = estate.systems + estate.systems // 30
        for n, done in enumerate(estate.snapshot_times, start=1):
            conn.execute(sa.text(
                "INSERT INTO dcapi_snapshots (snapshot_id, customer, state, page_limit, total_pages, total_records, "
                "managed_total, started_at, completed_at, catalog_state, reconcile_state) VALUES "
                "(:n, '', 'complete', 30, :pages, :records, :managed, :started, :done, 'complete', 'reconciled')"),
                {"n": n, "pages": -(-estate.systems // 30), "records": estate.systems, "managed": managed,
                 "started": done - timedelta(hours=3), "done": done})
            conn.execute(sa.text(
                "INSERT INTO dcapi_extraction_checkpoints (snapshot_id, last_page, systems_extracted, "
                "patches_extracted, coverage_pct, created_at, updated_at) VALUES (:n, :pages, :systems, :patches, "
                ":pct, :done, :done)"),
                {"n": n, "pages": -(-estate.systems // 30), "systems": estate.systems,
                 "patches": counts["patch_system_mapping"], "pct": round(100.0 * estate.systems / managed, 2),
                 "done": done})
            conn.execute(sa.text(
                "INSERT INTO dcapi_runs (customer, snapshot_id, started_at, finished_at, close_reason, exit_code, "
                "systems_with_mappings, coverage_pct) VALUES ('', :n, :started, :done, 'finished', 0, :systems, :pct)"),
                {"n": n, "started": done - timedelta(hours=3), "done": done, "systems": estate.systems,
                 "pct": round(100.0 * estate.systems / managed, 2)})
    # Rows written behind the extractor's back: the report roll-ups are built from them as for a
    # database made before the roll-ups (at open, once), timed.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dcapi_rollup_state"))
    started = time.perf_counter()
    open_engine(url, busy_timeout=600).dispose()
    counts["rollup build, s"] = round(time.perf_counter() - started, 1)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return counts
