"""Storage semantics on SQLite and PostgreSQL alike: schema creation, upserts, checkpoints,
gaps and their healing, per-customer state, and a real crawl end to end.

Every test here takes ``database_url``, parametrised over ``sqlite`` (a temporary file) and
``postgresql`` (a fresh, uniquely named database on the server of ``PMP_TEST_POSTGRES_URL``,
default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, dropped afterwards). The
PostgreSQL cases skip with "PostgreSQL not reachable at HOST:PORT: ..." when no server answers.
Other test modules import the fixtures from here (``from test_storage import ...``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from conftest import crawl_settings, expected_table, oauth_env, run_crawl
from sqlalchemy.engine import make_url

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.storage import Batch, Store
from pmp_scrapy.storage.schema import MAPPING_ROW_FIELDS
from pmp_scrapy.storage.status import read_status

# Read at import: the autouse clean_environment fixture removes PMP_* variables from each test.
PG_ADMIN_URL = os.environ.get("PMP_TEST_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
SEED_TABLES = {"patch_system_mapping", "dcapi_extraction_checkpoints", "dcapi_extraction_gaps"}
OWN_TABLES = {"dcapi_snapshots", "dcapi_systems", "dcapi_gap_state", "dcapi_runs", "dcapi_mapping_history",
              "dcapi_mapping_events", "dcapi_patch_catalog", "dcapi_patch_cves", "dcapi_token_mints",
              "dcapi_snapshot_pages", "dcapi_system_rollup", "dcapi_missing_pairs", "dcapi_rollup_state",
              "dcapi_rollup_sources", "dcapi_bulletin_patches"}
_pg_problem: list[str] = []  # cached reachability verdict: [] unknown, [""] fine, [reason] skip


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _where(url: str) -> str:
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def postgres_unreachable() -> str | None:
    """Why the PostgreSQL tests cannot run here, or ``None`` when the server answers."""
    if not _pg_problem:
        try:
            import psycopg

            with psycopg.connect(_conninfo(PG_ADMIN_URL), connect_timeout=3, autocommit=True) as conn:
                conn.execute("SELECT 1")
            _pg_problem.append("")
        except Exception as exc:  # noqa: BLE001 - any failure means: skip with its reason
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            _pg_problem.append(f"PostgreSQL not reachable at {_where(PG_ADMIN_URL)}: {first}")
    return _pg_problem[0] or None


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(_conninfo(PG_ADMIN_URL), connect_timeout=5, autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test (SQLAlchemy URL, psycopg 3), dropped after."""
    reason = postgres_unreachable()
    if reason:
        pytest.skip(reason)
    name = f"pmp_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    _admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
    try:
        yield make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(
            hide_password=False)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test on SQLite (a temporary file) and on PostgreSQL (a fresh database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'pmp.db'}"
    request.applymarker(pytest.mark.postgres)
    return request.getfixturevalue("postgres_url")


def url_rows(url: str, query: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows straight from the database (plain SQLAlchemy, not the project's code)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [tuple(row) for row in conn.execute(sa.text(query), params)]
    finally:
        engine.dispose()


def url_tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def url_mapping_table(url: str, customer: str | None = None) -> dict[tuple[str, str], tuple[Any, ...]]:
    """patch_system_mapping (only ``customer``'s systems when given) in the shape of
    ``conftest.expected_table``."""
    query = ("SELECT m.resource_id, m.patch_id, m.patchname, m.severity, m.patch_status, m.bulletinid, "
             "m.vendor_name, m.installed_time FROM patch_system_mapping m")
    params: dict[str, Any] = {}
    if customer is not None:
        query += " JOIN dcapi_systems s ON s.resource_id = m.resource_id WHERE s.customer = :customer"
        params["customer"] = customer
    return {(r[0], r[1]): tuple(r[2:]) for r in url_rows(query=query, url=url, **params)}


def mapping(rid: str, pid: str, status: str = "Missing", **fields: Any) -> tuple[str | None, ...]:
    row = {"resource_id": rid, "patch_id": pid, "patchname": f"KB{pid}.msu", "severity": "Critical",
           "patch_status": status, "bulletinid": f"MS-{pid}", "vendor_name": "Microsoft",
           "installed_time": None}
    row.update(fields)
    return tuple(row[name] for name in MAPPING_ROW_FIELDS)


def system(rid: str, count: int, page: int) -> dict[str, Any]:
    return {"resource_id": rid, "resource_name": f"PC-{rid}", "patch_count": count, "last_seen_page": page}


def gap(page: int, attempts: int = 3, error_type: str = "5xx_server_error", status: int | None = 503) -> dict[str, Any]:
    return {"page_num": page, "error_type": error_type, "error_message": f"HTTP {status}",
            "response_sample": "<html>sample</html>", "attempts": attempts, "http_status": status}


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    s = Store(database_url, busy_timeout=5)
    s.open()
    yield s
    s.close()


# --- schema ----------------------------------------------------------------------------------------

def test_create_tables_is_idempotent_and_leaves_existing_tables_alone(database_url: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as conn:
        # An earlier tool's mapping table (with a column of its own and a row) and a foreign table.
        key = "SERIAL PRIMARY KEY" if conn.dialect.name == "postgresql" else "INTEGER PRIMARY KEY AUTOINCREMENT"
        conn.execute(sa.text(
            f"CREATE TABLE patch_system_mapping (mapping_id {key}, resource_id TEXT NOT NULL, "
            "patch_id TEXT NOT NULL, patchname TEXT, severity TEXT, patch_status TEXT, bulletinid TEXT, "
            "vendor_name TEXT, installed_time TEXT, created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
            "legacy_note TEXT, UNIQUE (resource_id, patch_id))"))
        conn.execute(sa.text("INSERT INTO patch_system_mapping (mapping_id, resource_id, patch_id, legacy_note) "
                             "VALUES (7, '1', '2', 'keep me')"))
        conn.execute(sa.text("CREATE TABLE systems (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(sa.text("INSERT INTO systems VALUES (1, 'theirs')"))
    engine.dispose()

    for _ in range(2):  # the second open finds everything present and changes nothing
        s = Store(database_url)
        s.open()
        s.close()

    assert url_tables(database_url) >= SEED_TABLES | OWN_TABLES | {"systems"}
    assert url_rows(database_url, "SELECT mapping_id, resource_id, patch_id, legacy_note FROM patch_system_mapping") \
        == [(7, "1", "2", "keep me")]
    assert url_rows(database_url, "SELECT id, name FROM systems") == [(1, "theirs")]
    engine = sa.create_engine(database_url)
    try:
        inspector = sa.inspect(engine)
        assert "legacy_note" in {c["name"] for c in inspector.get_columns("patch_system_mapping")}
        gap_indexes = {i["name"] for i in inspector.get_indexes("dcapi_extraction_gaps")}
        assert "idx_dcapi_gaps_snapshot" in gap_indexes
    finally:
        engine.dispose()

    # The project's upsert works against the earlier tool's table and keeps its row.
    s = Store(database_url)
    snapshot = s.start_snapshot("", 30)
    s.commit_batch(Batch(snapshot_id=snapshot, customer="", mappings=[mapping("1", "2", "Installed")],
                         systems=[system("1", 1, 1)], last_page=1, total_pages=3))
    s.close()
    assert url_rows(database_url, "SELECT mapping_id, patch_status, legacy_note FROM patch_system_mapping") \
        == [(7, "Installed", "keep me")]


def test_a_fresh_database_gets_every_table_and_index(database_url: str) -> None:
    s = Store(database_url)
    s.open()
    s.close()
    engine = sa.create_engine(database_url)
    try:
        inspector = sa.inspect(engine)
        assert set(inspector.get_table_names()) == SEED_TABLES | OWN_TABLES
        psm = {i["name"] for i in inspector.get_indexes("patch_system_mapping")}
        assert {"idx_psm_resource", "idx_psm_patch", "idx_psm_status", "idx_psm_severity"} <= psm
        unique = inspector.get_unique_constraints("patch_system_mapping")
        indexed_unique = [i for i in inspector.get_indexes("patch_system_mapping") if i.get("unique")]
        assert any(sorted(u["column_names"]) == ["patch_id", "resource_id"] for u in unique + indexed_unique)
    finally:
        engine.dispose()


# --- upsert ----------------------------------------------------------------------------------------

def test_upsert_refreshes_fields_and_keeps_mapping_id_and_created_at(store: Store, database_url: str) -> None:
    snapshot = store.start_snapshot("", 30)
    store.commit_batch(Batch(snapshot_id=snapshot, customer="",
                             mappings=[mapping("100", "1"), mapping("100", "2"), mapping("101", "1")],
                             systems=[system("100", 2, 1), system("101", 1, 1)], last_page=1, total_pages=2))
    before = {(r[0], r[1]): (r[2], r[3]) for r in url_rows(
        database_url, "SELECT resource_id, patch_id, mapping_id, created_at FROM patch_system_mapping")}
    assert len(before) == 3

    # Same keys again (one twice within the batch: the last one wins), one field changed, one new row.
    store.commit_batch(Batch(snapshot_id=snapshot, customer="",
                             mappings=[mapping("100", "1", "Installed", installed_time="1700000000000"),
                                       mapping("100", "2"), mapping("100", "2", severity="Low"),
                                       mapping("102", "9")],
                             systems=[system("100", 2, 2), system("102", 1, 2)], last_page=2, total_pages=2))
    after = {(r[0], r[1]): r[2:] for r in url_rows(
        database_url, "SELECT resource_id, patch_id, mapping_id, created_at, patch_status, installed_time, "
                      "severity FROM patch_system_mapping")}
    assert len(after) == 4
    for key, (mapping_id, created_at) in before.items():
        assert after[key][:2] == (mapping_id, created_at), key
    assert after[("100", "1")][2:] == ("Installed", "1700000000000", "Critical")
    assert after[("100", "2")][4] == "Low"
    assert url_rows(database_url, "SELECT COUNT(DISTINCT resource_id) FROM patch_system_mapping") == [(3,)]
    assert store.coverage("") == 3


# --- checkpoints, gaps, healing -------------------------------------------------------------------

def test_checkpoint_gaps_and_healing(store: Store, database_url: str) -> None:
    snapshot = store.start_snapshot("", 30)
    assert store.load_state("").snapshot_id == snapshot
    assert store.load_state("").last_page is None

    # Run 1: pages 1-3 of 4; page 2 failed.
    result = store.commit_batch(Batch(
        snapshot_id=snapshot, customer="", mappings=[mapping("1", "1"), mapping("3", "1")],
        systems=[system("1", 1, 1), system("3", 1, 3)], gaps=[gap(2)], last_page=3, total_pages=4,
        total_records=4, denominator=4))
    assert (result.last_page, result.coverage, result.coverage_pct, result.snapshot_complete) == (3, 2, 50.0, False)
    state = store.load_state("")
    assert (state.snapshot_id, state.last_page, state.total_pages, state.open_gap_pages) == (snapshot, 3, 4, [2])

    # Run 2: page 2 fails again (attempts add up, runs counted); page 4 done: sweep complete.
    result = store.commit_batch(Batch(
        snapshot_id=snapshot, customer="", mappings=[mapping("4", "1")], systems=[system("4", 1, 4)],
        gaps=[gap(2, attempts=3, error_type="429_rate_limit", status=429)], last_page=4, total_pages=4,
        denominator=4))
    assert result.snapshot_complete is True
    assert url_rows(database_url, "SELECT page_num, error_type, attempts FROM dcapi_extraction_gaps") \
        == [(2, "429_rate_limit", 6)]
    assert url_rows(database_url, "SELECT runs_attempted, http_status, resolved_at FROM dcapi_gap_state") \
        == [(2, 429, None)]
    assert store.load_state("").open_gap_pages == [2]
    assert url_rows(database_url, "SELECT state FROM dcapi_snapshots") == [("complete",)]

    # Run 3: page 2 heals. The gap stays as history, marked resolved; the checkpoint stays at 4.
    result = store.commit_batch(Batch(snapshot_id=snapshot, customer="", mappings=[mapping("2", "1")],
                                      systems=[system("2", 1, 2)], healed_pages=[2], denominator=4))
    assert (result.last_page, result.coverage, result.coverage_pct) == (4, 4, 100.0)
    assert store.load_state("").open_gap_pages == []
    assert url_rows(database_url, "SELECT page_num, attempts FROM dcapi_extraction_gaps") == [(2, 6)]
    (resolved_at,) = url_rows(database_url, "SELECT resolved_at FROM dcapi_gap_state")[0]
    assert resolved_at is not None
    assert url_rows(database_url, "SELECT snapshot_id, last_page, systems_extracted, patches_extracted, "
                                  "coverage_pct FROM dcapi_extraction_checkpoints") \
        == [(snapshot, 4, 4, 4, 100.0)]

    # A new snapshot gets a higher id, the old one is abandoned only if still running.
    newer = store.start_snapshot("", 30, abandon=snapshot)
    assert newer > snapshot
    state = store.load_state("")
    assert (state.snapshot_id, state.last_page, state.open_gap_pages) == (newer, None, [])
    assert url_rows(database_url, "SELECT snapshot_id, state FROM dcapi_snapshots ORDER BY snapshot_id") \
        == [(snapshot, "complete"), (newer, "running")]


def test_server_side_timestamps_are_utc(store: Store, database_url: str) -> None:
    """created_at (a server default) and updated_at (written by the code) agree: both UTC."""
    snapshot = store.start_snapshot("", 30)
    store.commit_batch(Batch(snapshot_id=snapshot, customer="", mappings=[mapping("1", "1")],
                             systems=[system("1", 1, 1)], last_page=1, total_pages=1))
    (created, updated), = url_rows(database_url, "SELECT created_at, updated_at FROM dcapi_extraction_checkpoints")
    (mapping_created,), = url_rows(database_url, "SELECT created_at FROM patch_system_mapping")
    created, updated, mapping_created = (v if isinstance(v, datetime) else datetime.fromisoformat(v)
                                         for v in (created, updated, mapping_created))
    assert abs((updated - created).total_seconds()) < 120
    assert abs((updated - mapping_created).total_seconds()) < 120


# --- customers ---------------------------------------------------------------------------------------

def test_per_customer_state_is_isolated(store: Store, database_url: str) -> None:
    acme = store.start_snapshot("acme", 30)
    globex = store.start_snapshot("globex", 30)
    assert acme != globex
    store.commit_batch(Batch(snapshot_id=acme, customer="acme", mappings=[mapping("1000001", "1"),
                                                                           mapping("1000002", "1")],
                             systems=[system("1000001", 1, 1), system("1000002", 1, 1)], gaps=[gap(2)],
                             last_page=2, total_pages=5, total_records=10, denominator=10))
    store.commit_batch(Batch(snapshot_id=globex, customer="globex", mappings=[mapping("2000001", "1")],
                             systems=[system("2000001", 1, 1)], last_page=3, total_pages=3, total_records=1,
                             denominator=1))
    store.set_managed_total(acme, 12)

    a, g, default = store.load_state("acme"), store.load_state("globex"), store.load_state("")
    assert (a.snapshot_id, a.last_page, a.total_pages, a.open_gap_pages, a.managed_total) == (acme, 2, 5, [2], 12)
    assert (g.snapshot_id, g.last_page, g.total_pages, g.open_gap_pages, g.managed_total) == (globex, 3, 3, [], None)
    assert default.snapshot_id is None and default.orphan_checkpoint_snapshot is None
    assert (store.coverage("acme"), store.coverage("globex")) == (2, 1)
    assert url_rows(database_url, "SELECT customer, state FROM dcapi_snapshots ORDER BY customer") \
        == [("acme", "running"), ("globex", "complete")]

    # A reset of one customer leaves the other alone.
    newer = store.start_snapshot("acme", 30, abandon=acme)
    assert store.load_state("acme").snapshot_id == newer
    assert store.load_state("globex").snapshot_id == globex

    store.record_run(customer="acme", snapshot_id=acme, exit_code=2, message="1 page(s) ended as gaps")
    store.record_run(customer="globex", snapshot_id=globex, exit_code=0, message="done")
    statuses = {s.customer: s for s in read_status(database_url)}
    assert set(statuses) == {"acme", "globex"}
    assert statuses["acme"].last_run["exit_code"] == 2 and statuses["globex"].last_run["exit_code"] == 0
    assert statuses["acme"].snapshot["snapshot_id"] == newer
    assert statuses["globex"].checkpoint["last_page"] == 3
    assert statuses["acme"].systems_with_mappings == 2 and statuses["globex"].systems_with_mappings == 1
    assert [s.customer for s in read_status(database_url, "globex")] == ["globex"]


# --- a real crawl ------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_crawl_end_to_end_exact_data_and_gap_healing(database_url: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(dataset=DatasetSpec(managed_systems=240, no_patch_share=0.05),
                        faults=[Fault(page=3, attempts=(1, 2, 3), kind="http_503")])
    fast = {"PMP_DATABASE_URL": database_url, "PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 3,
            "PMP_COVERAGE_TARGET": 0.5}
    with Simulator(scenario=scenario) as sim:
        settings = crawl_settings(sim, tmp_path / "unused.db", **fast)
        first = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        assert first.exit_code == 2  # page 3 is a gap
        assert url_rows(database_url, "SELECT page_num, error_type FROM dcapi_extraction_gaps") \
            == [(3, "5xx_server_error")]
        total_pages = sim.total_pages(30)
        assert url_rows(database_url, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(total_pages,)]

        second = await run_crawl(crawl_settings(sim, tmp_path / "unused.db", **fast), monkeypatch,
                                 env=oauth_env(sim))
        assert second.exit_code == 0
        assert url_mapping_table(database_url) == expected_table(sim)
    assert not (tmp_path / "unused.db").exists()
    assert url_rows(database_url, "SELECT COUNT(*) FROM dcapi_gap_state WHERE resolved_at IS NOT NULL") == [(1,)]
    assert url_rows(database_url, "SELECT exit_code FROM dcapi_runs ORDER BY run_id") == [(2,), (0,)]
    assert url_rows(database_url, "SELECT COUNT(*), MIN(mapping_id) FROM patch_system_mapping")[0][0] \
        == len(expected_table(sim))


def test_jobs_opening_a_new_database_at_once_do_not_race(database_url: str) -> None:
    """Several jobs creating the schema of a new database together: one creates, the others
    wait (SQLite: BEGIN IMMEDIATE; PostgreSQL: advisory lock) and find the tables there."""
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def open_one() -> None:
        store = Store(database_url, busy_timeout=10)
        try:
            barrier.wait()
            store.open()
            store.start_snapshot(f"c{threading.get_ident()}", 30)
        except BaseException as exc:  # noqa: BLE001 - collected and reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=open_one) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert url_tables(database_url) == SEED_TABLES | OWN_TABLES
    ids = [r[0] for r in url_rows(database_url, "SELECT snapshot_id FROM dcapi_snapshots ORDER BY snapshot_id")]
    assert ids == list(range(1, 7))
