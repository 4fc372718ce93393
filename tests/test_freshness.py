"""A database that stays true (issue 11): refresh, reconciliation into history, sweeps that
survive a tenant changing under them, the page size bound to its snapshot, coverage per
customer, and demo mode never touching real data. Real crawls against the simulator, each on
SQLite and on PostgreSQL (``database_url``; the PostgreSQL variant skips with a reason when no
server answers)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from conftest import (
    crawl_settings,
    expected_table,
    json_log_lines,
    oauth_env,
    run_crawl,
    scrapy_command,
)
from test_storage import database_url, postgres_url, url_mapping_table, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator

SMALL = DatasetSpec(managed_systems=300, no_patch_share=0.0)
RUN = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 3}
STALE = {"PMP_REFRESH_INTERVAL": 0.001}  # the last sweep is always older than this


async def sweep(sim: Simulator, url: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    settings = crawl_settings(sim, Path("unused.db"), **{**RUN, "PMP_DATABASE_URL": url, **overrides})
    return await run_crawl(settings, monkeypatch, env=oauth_env(sim))


def mapping_table(url: str) -> dict[tuple[str, str], tuple[Any, ...]]:
    return url_mapping_table(url)


def present_systems(url: str, customer: str = "") -> set[str]:
    return {r[0] for r in url_rows(url, "SELECT resource_id FROM dcapi_systems WHERE customer = :customer AND "
                                        "retired_at IS NULL", customer=customer)}


def events(url: str, kind: str) -> list[tuple[Any, ...]]:
    return url_rows(url, "SELECT resource_id, patch_id, snapshot_id, old_status, new_status "
                         "FROM dcapi_mapping_events WHERE event = :kind ORDER BY event_id", kind=kind)


def latest_snapshot(url: str) -> int:
    return int(url_rows(url, "SELECT MAX(snapshot_id) FROM dcapi_snapshots")[0][0])


def database_digest(url: str) -> str:
    """Every row of every table, in a stable order: equal digests mean an unchanged database."""
    digest = hashlib.sha256()
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            for name in sorted(sa.inspect(conn).get_table_names()):
                rows = sorted(repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{name}"')))
                digest.update(f"{name}:{len(rows)}\n{chr(10).join(rows)}\n".encode())
    finally:
        engine.dispose()
    return digest.hexdigest()


# --- refresh -------------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_fresh_data_idles_and_stale_data_is_swept_again_with_status_changes(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        first = await sweep(sim, database_url, monkeypatch)
        assert first.exit_code == 0 and mapping_table(database_url) == expected_table(sim)
        before = {k: v[2] for k, v in mapping_table(database_url).items()}
        sim.mutate(flip_status={"count": 40})
        requests = len(sim.requests)
        idle = await sweep(sim, database_url, monkeypatch)  # the default interval: a day
        assert len(sim.requests) == requests and idle.close_reason == "pmp_target_met"
        refreshed = await sweep(sim, database_url, monkeypatch, **STALE)
        expected = expected_table(sim)
        after_refresh = len(sim.requests)
        again = await sweep(sim, database_url, monkeypatch)  # right after convergence: nothing is sent
        assert len(sim.requests) == after_refresh and again.close_reason == "pmp_target_met"
    assert refreshed.exit_code == 0, refreshed.stats.get("pmp/exit_message")
    assert mapping_table(database_url) == expected
    flipped = {k for k, v in expected.items() if before.get(k) != v[2]}
    assert len(flipped) >= 40  # 40 flipped each way
    changes = events(database_url, "status_changed")
    snapshot = latest_snapshot(database_url)
    assert {(rid, pid) for rid, pid, *_ in changes} == flipped
    assert all(row[2] == snapshot and row[3] != row[4] for row in changes)
    history = url_rows(database_url, "SELECT resource_id, patch_id, patch_status, status_snapshot, status_since "
                               "FROM dcapi_mapping_history")
    assert {(r[0], r[1]) for r in history} == flipped
    assert all(r[2] == expected[(r[0], r[1])][2] and r[3] == snapshot and r[4] for r in history)
    assert refreshed.stats.get("pmp/mappings_status_changes") == len(flipped)


@pytest_twisted.ensureDeferred
async def test_refresh_interval_zero_never_sweeps_again(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
        requests = len(sim.requests)
        again = await sweep(sim, database_url, monkeypatch, PMP_REFRESH_INTERVAL=0)
        assert len(sim.requests) == requests
    assert (again.exit_code, again.close_reason) == (0, "pmp_target_met")


# --- reconciliation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["front", "middle", "end"])
@pytest_twisted.ensureDeferred
async def test_systems_and_patches_that_change_between_sweeps_are_reconciled(
        database_url: str, monkeypatch: pytest.MonkeyPatch, where: str) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
        old_ids = set(sim.dcapi_system_ids())
        before = mapping_table(database_url)
        sim.mutate(add_systems={"count": 7, "where": where}, remove_systems={"count": 9, "where": where},
                   add_patches={"systems": 5, "per_system": 3}, remove_patches={"systems": 4, "per_system": 2})
        result = await sweep(sim, database_url, monkeypatch, **STALE)
        expected = expected_table(sim)
        new_ids = set(sim.dcapi_system_ids())
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(database_url) == expected  # the present, exactly
    assert present_systems(database_url) == new_ids
    gone = old_ids - new_ids
    assert len(gone) == 9
    retired = url_rows(database_url, "SELECT resource_id, retired_snapshot FROM dcapi_systems "
                                     "WHERE retired_at IS NOT NULL")
    assert {r[0] for r in retired} == gone and {r[1] for r in retired} == {latest_snapshot(database_url)}
    kept = url_rows(database_url, "SELECT DISTINCT resource_id FROM dcapi_mapping_history "
                                  "WHERE retired_snapshot IS NOT NULL")
    assert gone <= {r[0] for r in kept}  # retired to history, not lost
    assert result.stats["pmp/coverage"] == len(new_ids)
    assert {r[0] for r in events(database_url, "system_retired")} == gone
    dropped = {k for k in before if k[0] in new_ids and k not in expected}  # patches removed from systems
    assert dropped and {(e[0], e[1]) for e in events(database_url, "retired") if e[0] in new_ids} == dropped


@pytest_twisted.ensureDeferred
async def test_a_tenant_suddenly_reporting_a_tenth_retires_nothing_and_exits_2(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    log_file = tmp_path / "run.log"
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
        before = mapping_table(database_url)
        sim.mutate(remove_systems={"count": 270, "where": "end"})
        result = await sweep(sim, database_url, monkeypatch, LOG_FILE=str(log_file), **STALE)
    assert result.exit_code == 2
    assert "PMP_MAX_RETIRE_SHARE" in result.stats["pmp/exit_message"]
    assert len(present_systems(database_url)) == 300 and mapping_table(database_url) == before
    [warning] = [r for r in json_log_lines(log_file) if r.get("event_type") == "reconcile_refused"]
    assert warning["level"] == "WARNING" and "270 of 300" in warning["message"]
    assert url_rows(database_url, "SELECT reconcile_state FROM dcapi_snapshots ORDER BY snapshot_id DESC LIMIT 1") \
        == [("refused",)]


# --- sweeps that survive shifting data ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_systems_inserted_at_the_front_and_removed_mid_sweep_are_all_complete(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    log_file = tmp_path / "run.log"
    scenario = Scenario(dataset=SMALL, mutations=[
        {"after_page_requests": 4, "add_systems": {"count": 5, "where": "front"}},
        {"after_page_requests": 6, "remove_systems": {"count": 7, "where": "middle"}}])
    with Simulator(scenario=scenario) as sim:
        result = await sweep(sim, database_url, monkeypatch, LOG_FILE=str(log_file))
        expected = expected_table(sim)
        ids = set(sim.dcapi_system_ids())
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(database_url) == expected
    assert present_systems(database_url) == ids and result.stats["pmp/coverage"] == len(ids)
    changed = [r for r in json_log_lines(log_file) if r.get("event_type") == "tenant_changed"]
    assert changed and changed[0]["reread_pages"]
    assert url_rows(database_url, "SELECT state FROM dcapi_snapshots") == [("complete",)]


@pytest_twisted.ensureDeferred
async def test_reset_and_interrupted_resweeps_complete(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
        sim.mutate(flip_status={"count": 10})
        partial = await sweep(sim, database_url, monkeypatch, PMP_RESET=True, PMP_BATCH_PAGES=3)
        rest = await sweep(sim, database_url, monkeypatch, PMP_BATCH_PAGES=4)  # target met: still continued
        last = await sweep(sim, database_url, monkeypatch, PMP_BATCH_PAGES=4)
        expected = expected_table(sim)
    assert partial.stats["pmp/checkpoint_page"] == 3 and rest.stats["pmp/first_page"] == 4
    assert last.stats["pmp/checkpoint_page"] == 10 and last.stats.get("pmp/snapshot_complete") is True
    assert mapping_table(database_url) == expected
    assert url_rows(database_url, "SELECT state FROM dcapi_snapshots ORDER BY snapshot_id") == [("complete",)] * 2


@pytest_twisted.ensureDeferred
async def test_a_changed_page_limit_applies_from_the_next_snapshot(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        first = await sweep(sim, database_url, monkeypatch, PMP_BATCH_PAGES=3)
        sim.reset_requests()
        second = await sweep(sim, database_url, monkeypatch, PMP_PAGE_LIMIT=1000)
        limits = {r.query.get("pageLimit") for r in sim.requests if r.kind == "page"}
        expected = expected_table(sim)
    assert first.stats["pmp/checkpoint_page"] == 3
    assert limits == {"30"} and second.stats["pmp/checkpoint_page"] == 10
    assert mapping_table(database_url) == expected


# --- coverage per customer --------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_each_customer_and_the_default_one_see_their_own_coverage(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    customers = {"Acme": DatasetSpec(managed_systems=90, no_patch_share=0.0),
                 "Globex": DatasetSpec(managed_systems=60, no_patch_share=0.0)}
    with Simulator(scenario=Scenario(dataset=SMALL, customers=customers)) as sim:
        default = await sweep(sim, database_url, monkeypatch)
        acme = await sweep(sim, database_url, monkeypatch, PMP_CUSTOMER="Acme")
        globex = await sweep(sim, database_url, monkeypatch, PMP_CUSTOMER="Globex")
        status = scrapy_command(["status", "--json", "-s", f"PMP_DATABASE_URL={database_url}"])
    assert [r.stats["pmp/coverage"] for r in (default, acme, globex)] == [300, 90, 60]
    report = {c["customer"]: c for c in json.loads(status.stdout)["customers"]}
    assert {name: c["systems_with_mappings"] for name, c in report.items()} == {"": 300, "Acme": 90, "Globex": 60}


# --- demo mode and real data ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_demo_mode_refuses_a_production_database_and_leaves_it_unchanged(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
    sqlite_file = Path(sa.make_url(database_url).database or "") if database_url.startswith("sqlite") else None

    def unchanged_proof() -> str:  # SQLite: the file byte for byte; PostgreSQL: every row of every table
        return hashlib.sha256(sqlite_file.read_bytes()).hexdigest() if sqlite_file else database_digest(database_url)

    digest = unchanged_proof()
    workdir = tmp_path / "work"
    workdir.mkdir()
    # An exported production URL is not used by a demo: it writes ./pmp_demo.db instead.
    exported = scrapy_command(["crawl", "dcapi_patches", "-a", "demo=1", "-s", "PMP_BATCH_PAGES=2"], cwd=workdir,
                              env={"PMP_DATABASE_URL": database_url})
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (workdir / "pmp_demo.db").is_file()
    assert unchanged_proof() == digest
    named = scrapy_command(["crawl", "dcapi_patches", "-a", "demo=1", "-s", f"PMP_DATABASE_URL={database_url}"],
                           cwd=workdir)
    assert named.returncode == 1
    [line] = [line for line in named.stderr.splitlines() if line.startswith("pmp_scrapy: exit 1:")]
    assert "demo mode refuses the database" in line and "Traceback" not in named.stderr
    assert unchanged_proof() == digest


# --- every kind of change in the middle of a sweep -------------------------------------------------------------------
MID_SWEEP = {
    "status_flips": {"flip_status": {"count": 40}},
    "patches_added_and_removed": {"add_patches": {"systems": 6, "per_system": 3},
                                  "remove_patches": {"systems": 5, "per_system": 2}},
    "systems_added_front": {"add_systems": {"count": 6, "where": "front"}},
    "systems_added_middle": {"add_systems": {"count": 6, "where": "middle"}},
    "systems_added_end": {"add_systems": {"count": 6, "where": "end"}},
    "systems_removed_front": {"remove_systems": {"count": 8, "where": "front"}},
    "systems_removed_middle": {"remove_systems": {"count": 8, "where": "middle"}},
    "systems_removed_end": {"remove_systems": {"count": 8, "where": "end"}},
}


# Every kind on SQLite; on PostgreSQL one of each family (the SQL is the same, a fresh database costs seconds).
ON_POSTGRES = ("status_flips", "patches_added_and_removed", "systems_added_middle", "systems_removed_front")


@pytest.mark.parametrize(("database_url", "change"), [("sqlite", change) for change in sorted(MID_SWEEP)]
                         + [("postgresql", change) for change in ON_POSTGRES], indirect=["database_url"])
@pytest_twisted.ensureDeferred
async def test_every_kind_of_change_in_the_middle_of_a_sweep_settles_exactly_with_its_history(
        database_url: str, monkeypatch: pytest.MonkeyPatch, change: str) -> None:  # noqa: F811 (the fixture)
    # The first sweep reads pages 1-10; the change lands after page 15 arrived, mid-way through the second.
    scenario = Scenario(dataset=SMALL, mutations=[{"after_page_requests": 15, **MID_SWEEP[change]}])
    with Simulator(scenario=scenario) as sim:
        first = await sweep(sim, database_url, monkeypatch)
        before = mapping_table(database_url)
        old_ids = {rid for rid, _ in before}
        during = await sweep(sim, database_url, monkeypatch, **STALE)
        settled = await sweep(sim, database_url, monkeypatch, **STALE)  # what a page read before the change hid
        expected = expected_table(sim)
        new_ids = set(sim.dcapi_system_ids())
    assert (first.exit_code, during.exit_code, settled.exit_code) == (0, 0, 0), during.stats.get("pmp/exit_message")
    if change.startswith("systems_"):
        # The tenant's size changed mid-sweep: the sweep it happened in already ends exact (pages re-read).
        assert during.stats.get("pmp/pages_reread", 0) > 0 or change.endswith("_end")
    assert mapping_table(database_url) == expected
    assert present_systems(database_url) == new_ids and settled.stats["pmp/coverage"] == len(new_ids)
    sweeps = {during.stats["pmp/snapshot_id"], settled.stats["pmp/snapshot_id"]}
    flipped = {k for k, v in expected.items() if k in before and before[k][2] != v[2]}
    changed = events(database_url, "status_changed")
    assert {(e[0], e[1]) for e in changed} == flipped
    assert all(e[2] in sweeps and e[4] == expected[(e[0], e[1])][2] for e in changed)
    dropped = {k for k in before if k[0] in new_ids and k not in expected}
    assert {(e[0], e[1]) for e in events(database_url, "retired") if e[0] in new_ids} == dropped
    assert all(e[2] in sweeps for e in events(database_url, "retired"))
    assert {e[0] for e in events(database_url, "system_retired")} == old_ids - new_ids
    added = {k for k in expected if k not in before}
    first_seen = url_rows(database_url, "SELECT resource_id, patch_id, created_at FROM patch_system_mapping")
    assert all(row[2] is not None for row in first_seen if (row[0], row[1]) in added)
    for name, touched in (("status_flips", flipped), ("patches_added_and_removed", added | dropped)):
        if change == name:
            assert touched  # the change really happened


SWAPS = {  # as many systems removed (first) as added (second): totalRecords does not change
    "removed_middle_added_end": ("middle", "end"),  # systems shift back onto pages read: verified before retiring
    "removed_end_added_front": ("end", "front"),  # systems shift forward, one is met twice: pages before re-read
}


@pytest.mark.parametrize("swap", sorted(SWAPS))
@pytest_twisted.ensureDeferred
async def test_as_many_systems_added_as_removed_mid_sweep_loses_no_system(
        tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, swap: str) -> None:  # noqa: F811
    removed_at, added_at = SWAPS[swap]
    log_file = tmp_path / "run.log"
    scenario = Scenario(dataset=SMALL, mutations=[{"after_page_requests": 15, "remove_systems": {
        "count": 6, "where": removed_at}, "add_systems": {"count": 6, "where": added_at}}])
    with Simulator(scenario=scenario) as sim:
        await sweep(sim, database_url, monkeypatch)
        old_ids = set(sim.dcapi_system_ids())
        during = await sweep(sim, database_url, monkeypatch, LOG_FILE=str(log_file), **STALE)
        expected = expected_table(sim)
        new_ids = set(sim.dcapi_system_ids())
        after_during = mapping_table(database_url)
        settled = await sweep(sim, database_url, monkeypatch, **STALE)
    assert during.exit_code == 0 and settled.exit_code == 0, during.stats.get("pmp/exit_message")
    kept = old_ids & new_ids
    # No system that existed all along is lost to the shift, nor retired, in the sweep it happened in.
    assert kept <= present_systems(database_url)
    assert {k: v for k, v in after_during.items() if k[0] in kept} == {k: v for k, v in expected.items() if k[0] in kept}
    assert not {e[0] for e in events(database_url, "system_retired")} & kept
    said = [r for r in json_log_lines(log_file) if r.get("event_type") in ("tenant_changed", "retirement_verified")]
    assert said and all(r["reread_pages"] for r in said)
    # What changed on pages read before the change (a system added there, one removed after its read)
    # is the next sweep's, like any change behind the sweep.
    assert mapping_table(database_url) == expected and present_systems(database_url) == new_ids
