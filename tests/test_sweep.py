"""The core sweep (issue 2) as real crawls against the simulator: a clean sweep of the default
tenant in batches, the target-met short cut, page sizes, an earlier tool's database, the file
mode of the SQLite files and the settings that must stop a run before it starts."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import threading
from pathlib import Path
from typing import Any, Self

import pytest
import pytest_twisted
from conftest import (
    DEFAULT_DCAPI,
    DEFAULT_MANAGED,
    DEFAULT_MAPPINGS,
    DEFAULT_PAGES,
    SEVEN_PAGES,
    CrawlAgainst,
    crawl_env,
    db_rows,
    expected_table,
    mapping_table,
    page_requests,
    scrapy_command,
)

from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator

# Checkpoints at the project's default (PMP_CHECKPOINT_EVERY 10) unless a test says otherwise.
pytestmark = pytest.mark.crawl_defaults(PMP_CHECKPOINT_EVERY=10)


def duplicates(db_path: Path) -> list[tuple[Any, ...]]:
    return db_rows(db_path, "SELECT resource_id, patch_id, COUNT(*) FROM patch_system_mapping "
                            "GROUP BY resource_id, patch_id HAVING COUNT(*) > 1")


# --- 1. the default tenant, 50 pages a run ------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_default_tenant_in_batches_of_50_then_target_met(db_path: Path, crawl_against: CrawlAgainst,
                                                               simulator: Simulator) -> None:
    sim = simulator
    assert (sim.managed_total(), sim.total_pages(30)) == (DEFAULT_MANAGED, DEFAULT_PAGES)
    settings = {"PMP_BATCH_PAGES": 50}
    pages_per_run: list[list[int]] = []
    results = []
    for _ in range(3):
        sim.reset_requests()
        result = await crawl_against(sim, **settings)
        results.append(result)
        pages_per_run.append(sorted(page_requests(sim)))
    assert [r.exit_code for r in results] == [0, 0, 0], [r.stats.get("pmp/exit_message") for r in results]
    assert pages_per_run == [list(range(1, 51)), list(range(51, 101)), list(range(101, 108))]
    assert [r.stats.get("pmp/pages_committed") for r in results] == [50, 50, 7]
    assert [r.stats.get("pmp/checkpoint_page") for r in results] == [50, 100, 107]
    assert results[-1].stats.get("pmp/snapshot_complete") is True
    assert results[-1].stats.get("pmp/total_pages") == DEFAULT_PAGES

    # The fourth run finds 3,210 of 3,317 (96.8% >= 95%) and sends nothing at all.
    sim.reset_requests()
    fourth = await crawl_against(sim, **settings)
    assert fourth.exit_code == 0 and fourth.close_reason == "pmp_target_met"
    assert sim.requests == []

    table = mapping_table(db_path)
    assert len(table) == DEFAULT_MAPPINGS
    assert table == expected_table(sim)
    assert duplicates(db_path) == []
    assert db_rows(db_path, "SELECT COUNT(*) FROM patch_system_mapping") == [(DEFAULT_MAPPINGS,)]
    assert db_rows(db_path, "SELECT COUNT(DISTINCT resource_id) FROM patch_system_mapping") == [(DEFAULT_DCAPI,)]
    [(snapshot_id, state, total_pages, managed)] = db_rows(
        db_path, "SELECT snapshot_id, state, total_pages, managed_total FROM dcapi_snapshots")
    assert (state, total_pages, managed) == ("complete", DEFAULT_PAGES, DEFAULT_MANAGED)
    assert db_rows(db_path, "SELECT snapshot_id, last_page FROM dcapi_extraction_checkpoints") == [
        (snapshot_id, DEFAULT_PAGES)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]
    runs = db_rows(db_path, "SELECT snapshot_id, exit_code, pages_committed, close_reason FROM dcapi_runs "
                            "ORDER BY run_id")
    assert runs == [(snapshot_id, 0, 50, "finished"), (snapshot_id, 0, 50, "finished"),
                    (snapshot_id, 0, 7, "finished"), (snapshot_id, 0, 0, "pmp_target_met")]


# --- 5. target met: no request; PMP_TOTAL_SYSTEMS as the denominator -----------------------------

@pytest_twisted.ensureDeferred
async def test_target_met_sends_no_request_at_all(db_path: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim:
        first = await crawl_against(sim, PMP_BATCH_PAGES=0)
        assert first.exit_code == 0
        before = len(sim.requests)
        rows_before = db_rows(db_path, "SELECT * FROM patch_system_mapping ORDER BY mapping_id")
        again = await crawl_against(sim, PMP_BATCH_PAGES=0)
        assert len(sim.requests) == before  # no token, no inventory, no page request
    assert (again.exit_code, again.close_reason) == (0, "pmp_target_met")
    assert again.stats.get("pmp/target_met") is True
    assert db_rows(db_path, "SELECT * FROM patch_system_mapping ORDER BY mapping_id") == rows_before


@pytest_twisted.ensureDeferred
async def test_total_systems_setting_is_the_denominator(db_path: Path, crawl_against: CrawlAgainst) -> None:
    """DCAPI omits a fifth of the managed systems: the complete sweep stalls below 95% (exit 2)
    until PMP_TOTAL_SYSTEMS names the systems expected to have patch data."""
    omitting = DatasetSpec(managed_systems=300, no_patch_share=0.2)
    with Simulator(scenario=Scenario(dataset=omitting)) as sim:
        reported = len(sim.dcapi_system_ids())
        assert reported < 0.95 * 300
        first = await crawl_against(sim, PMP_BATCH_PAGES=0)
        assert first.exit_code == 2 and first.stats.get("pmp/snapshot_complete") is True
        assert mapping_table(db_path) == expected_table(sim)

        # Without the setting the next run would start a new sweep; with it the target is met.
        before = len(sim.requests)
        met = await crawl_against(sim, PMP_BATCH_PAGES=0, PMP_TOTAL_SYSTEMS=reported)
        assert len(sim.requests) == before
        assert (met.exit_code, met.close_reason) == (0, "pmp_target_met")

        # A denominator the coverage does not reach: the run works again.
        sim.reset_requests()
        short = await crawl_against(sim, PMP_BATCH_PAGES=1, PMP_TOTAL_SYSTEMS=10_000)
        assert page_requests(sim) == [1]
    assert short.close_reason == "finished"


# --- 7. page sizes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("page_limit, pages", [(5, 40), (30, 7)])
@pytest_twisted.ensureDeferred
async def test_page_limit_sets_the_page_size(page_limit: int, pages: int, db_path: Path,
                                             crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim:
        assert sim.total_pages(page_limit) == pages
        result = await crawl_against(sim, PMP_BATCH_PAGES=0, PMP_PAGE_LIMIT=page_limit, PMP_CHECKPOINT_EVERY=7)
        assert result.exit_code == 0, result.stats.get("pmp/exit_message")
        requests = [r for r in sim.requests if r.kind == "page"]
        assert sorted(r.page for r in requests) == list(range(1, pages + 1))
        assert {r.query["pageLimit"] for r in requests} == {str(page_limit)}
        assert mapping_table(db_path) == expected_table(sim)
    assert result.stats.get("pmp/total_pages") == pages
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(pages,)]
    assert db_rows(db_path, "SELECT page_limit, total_pages, state FROM dcapi_snapshots") == [
        (page_limit, pages, "complete")]


@pytest_twisted.ensureDeferred
async def test_default_tenant_has_642_pages_of_5(db_path: Path, crawl_against: CrawlAgainst,
                                                 simulator: Simulator) -> None:
    """The page count comes from the server, not from a constant (the spec says 664)."""
    result = await crawl_against(simulator, PMP_BATCH_PAGES=1, PMP_PAGE_LIMIT=5)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert page_requests(simulator) == [1]
    assert result.stats.get("pmp/total_pages") == 642
    assert db_rows(db_path, "SELECT total_pages FROM dcapi_snapshots") == [(642,)]
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(1,)]
    assert db_rows(db_path, "SELECT COUNT(DISTINCT resource_id) FROM patch_system_mapping") == [(5,)]


# --- 4. an earlier tool's database -------------------------------------------------------------------

SEED_DDL = """
CREATE TABLE IF NOT EXISTS dcapi_extraction_checkpoints (
    checkpoint_id INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot_id INTEGER NOT NULL,
    last_page INTEGER NOT NULL,
    systems_extracted INTEGER NOT NULL,
    patches_extracted INTEGER NOT NULL,
    coverage_pct REAL NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(snapshot_id)
);
CREATE TABLE IF NOT EXISTS dcapi_extraction_gaps (
    gap_id INTEGER PRIMARY KEY AUTOINCREMENT,
    snapshot_id INTEGER NOT NULL,
    page_num INTEGER NOT NULL,
    error_type TEXT NOT NULL,
    error_message TEXT,
    response_sample TEXT,
    attempts INTEGER NOT NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(snapshot_id, page_num)
);
CREATE INDEX IF NOT EXISTS idx_dcapi_checkpoints_snapshot ON dcapi_extraction_checkpoints(snapshot_id);
CREATE INDEX IF NOT EXISTS idx_dcapi_gaps_snapshot ON dcapi_extraction_gaps(snapshot_id);
CREATE TABLE IF NOT EXISTS patch_system_mapping (
    mapping_id INTEGER PRIMARY KEY AUTOINCREMENT,
    resource_id TEXT NOT NULL,
    patch_id TEXT NOT NULL,
    patchname TEXT,
    severity TEXT,
    patch_status TEXT,
    bulletinid TEXT,
    vendor_name TEXT,
    installed_time TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(resource_id, patch_id)
);
CREATE INDEX IF NOT EXISTS idx_psm_resource ON patch_system_mapping(resource_id);
CREATE INDEX IF NOT EXISTS idx_psm_patch ON patch_system_mapping(patch_id);
CREATE INDEX IF NOT EXISTS idx_psm_status ON patch_system_mapping(patch_status);
CREATE INDEX IF NOT EXISTS idx_psm_severity ON patch_system_mapping(severity);
CREATE TABLE systems (id INTEGER PRIMARY KEY, hostname TEXT NOT NULL, os TEXT, added TIMESTAMP);
CREATE INDEX idx_systems_hostname ON systems(hostname);
CREATE TABLE snapshots (snapshot_id INTEGER PRIMARY KEY, taken_at TEXT, note TEXT, state TEXT);
INSERT INTO systems VALUES (1, 'PC-LEGACY-001', 'Windows 10', '2024-01-02 03:04:05'),
                           (10001, 'SRV-LEGACY-002', NULL, '2024-02-03 04:05:06');
INSERT INTO snapshots VALUES (1, '2024-01-01T00:00:00Z', 'from the earlier tool', 'running'),
                             (2, '2024-06-01T00:00:00Z', 'ünïcödé', 'complete');
"""


def foreign_state(db_path: Path) -> dict[str, Any]:
    """The schema SQL and every row of the tables the project did not create."""
    with sqlite3.connect(db_path) as conn:
        schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                              "WHERE tbl_name IN ('systems', 'snapshots') ORDER BY name").fetchall()
        rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in ("systems", "snapshots")}
    return {"schema": schema, "rows": rows}


def seed_schema(db_path: Path) -> dict[str, str]:
    with sqlite3.connect(db_path) as conn:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE tbl_name IN ('patch_system_mapping', "
                                 "'dcapi_extraction_checkpoints', 'dcapi_extraction_gaps')").fetchall())


@pytest_twisted.ensureDeferred
async def test_an_earlier_tools_database_keeps_its_tables_untouched(db_path: Path,
                                                                     crawl_against: CrawlAgainst) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.executescript(SEED_DDL)
    foreign_before = foreign_state(db_path)
    seed_before = seed_schema(db_path)
    assert len([n for n in seed_before if not n.startswith("sqlite_autoindex")]) == 3 + 6

    with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim:
        first = await crawl_against(sim, PMP_BATCH_PAGES=4, PMP_CHECKPOINT_EVERY=2)
        second = await crawl_against(sim, PMP_BATCH_PAGES=4, PMP_CHECKPOINT_EVERY=2)
        expected = expected_table(sim)
    assert (first.exit_code, second.exit_code) == (0, 0)
    assert foreign_state(db_path) == foreign_before
    assert seed_schema(db_path) == seed_before  # the seed's tables were used, not re-created
    assert mapping_table(db_path) == expected
    assert duplicates(db_path) == []
    # The project's snapshot 1 lives in its own table; the foreign `snapshots` is not it.
    [(snapshot_id, state)] = db_rows(db_path, "SELECT snapshot_id, state FROM dcapi_snapshots")
    assert state == "complete"
    assert db_rows(db_path, "SELECT snapshot_id, last_page FROM dcapi_extraction_checkpoints") == [(snapshot_id, 7)]
    with sqlite3.connect(db_path) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {t for t in tables if not t.startswith(("dcapi_", "sqlite_"))} == {
        "patch_system_mapping", "systems", "snapshots"}


# --- 10. SQLite file mode and parent directories --------------------------------------------------

class ModeWatcher:
    """Samples the mode of the database file and its -wal/-shm companions while a crawl runs."""

    def __init__(self, db_path: Path) -> None:
        self.paths = [db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")]
        self.seen: dict[str, set[int]] = {p.name: set() for p in self.paths}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(0.002)

    def sample(self) -> None:
        for path in self.paths:
            try:
                self.seen[path.name].add(stat.S_IMODE(path.stat().st_mode))
            except FileNotFoundError:
                pass

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


@pytest_twisted.ensureDeferred
async def test_sqlite_files_are_private_and_parents_are_created(tmp_path: Path,
                                                                crawl_against: CrawlAgainst) -> None:
    db_path = tmp_path / "not" / "yet" / "there" / "pmp.db"
    old_umask = os.umask(0o022)  # a usual umask: files would be 0644 without care
    try:
        with Simulator(scenario=Scenario(dataset=SEVEN_PAGES)) as sim, ModeWatcher(db_path) as watcher:
            result = await crawl_against(sim, PMP_DATABASE_URL=f"sqlite:///{db_path}", PMP_CHECKPOINT_EVERY=1)
    finally:
        os.umask(old_umask)
    assert result.exit_code == 0
    assert db_path.is_file()
    name = db_path.name
    assert watcher.seen[name] == {0o600}, watcher.seen
    assert watcher.seen[f"{name}-wal"] <= {0o600} and watcher.seen[f"{name}-shm"] <= {0o600}, watcher.seen
    assert watcher.seen[f"{name}-wal"], "the database never ran in WAL mode"
    assert db_rows(db_path, "PRAGMA journal_mode") == [("wal",)]


# --- 8. settings that stop a run before it starts (others are in test_exit_codes.py) -----------------

@pytest.mark.parametrize("name, value, fragment", [
    ("PMP_BATCH_PAGES", "abc", "PMP_BATCH_PAGES must be"),
    ("PMP_COVERAGE_TARGET", "2", "PMP_COVERAGE_TARGET must be"),
])
def test_bad_setting_is_one_line_and_exit_1(name: str, value: str, fragment: str, tmp_path: Path,
                                             simulator: Simulator) -> None:
    db_path = tmp_path / "pmp.db"
    result: subprocess.CompletedProcess[str] = scrapy_command(["crawl", "dcapi_patches"],
                                                              env=crawl_env(simulator, db_path, **{name: value}),
                                                              timeout=60)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pmp_scrapy: error: "), lines
    assert fragment in lines[0] and repr(value) in lines[0]
    assert simulator.requests == []
    assert not db_path.exists()
