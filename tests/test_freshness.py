"""A database that stays true (issue 11): refresh, reconciliation into history, sweeps that
survive a tenant changing under them, the page size bound to its snapshot, coverage per
customer, and demo mode never touching real data. Real crawls against the simulator."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import (
    crawl_settings,
    db_rows,
    expected_table,
    json_log_lines,
    mapping_table,
    oauth_env,
    run_crawl,
    scrapy_command,
)

from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator

SMALL = DatasetSpec(managed_systems=300, no_patch_share=0.0)
RUN = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 3}
STALE = {"PMP_REFRESH_INTERVAL": 0.001}  # the last sweep is always older than this


async def sweep(sim: Simulator, db_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    return await run_crawl(crawl_settings(sim, db_path, **{**RUN, **overrides}), monkeypatch, env=oauth_env(sim))


def present_systems(db_path: Path, customer: str = "") -> set[str]:
    return {r[0] for r in db_rows(db_path, "SELECT resource_id FROM dcapi_systems WHERE customer = ? AND "
                                           "retired_at IS NULL", (customer,))}


def events(db_path: Path, kind: str) -> list[tuple[Any, ...]]:
    return db_rows(db_path, "SELECT resource_id, patch_id, snapshot_id, old_status, new_status "
                            "FROM dcapi_mapping_events WHERE event = ? ORDER BY event_id", (kind,))


def latest_snapshot(db_path: Path) -> int:
    return int(db_rows(db_path, "SELECT MAX(snapshot_id) FROM dcapi_snapshots")[0][0])


# --- refresh -------------------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_fresh_data_idles_and_stale_data_is_swept_again_with_status_changes(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        first = await sweep(sim, db_path, monkeypatch)
        assert first.exit_code == 0 and mapping_table(db_path) == expected_table(sim)
        before = {k: v[2] for k, v in mapping_table(db_path).items()}
        sim.mutate(flip_status={"count": 40})
        requests = len(sim.requests)
        idle = await sweep(sim, db_path, monkeypatch)  # the default interval: a day
        assert len(sim.requests) == requests and idle.close_reason == "pmp_target_met"
        refreshed = await sweep(sim, db_path, monkeypatch, **STALE)
        expected = expected_table(sim)
        after_refresh = len(sim.requests)
        again = await sweep(sim, db_path, monkeypatch)  # right after convergence: nothing is sent
        assert len(sim.requests) == after_refresh and again.close_reason == "pmp_target_met"
    assert refreshed.exit_code == 0, refreshed.stats.get("pmp/exit_message")
    assert mapping_table(db_path) == expected
    flipped = {k for k, v in expected.items() if before.get(k) != v[2]}
    assert len(flipped) >= 40  # 40 flipped each way
    changes = events(db_path, "status_changed")
    snapshot = latest_snapshot(db_path)
    assert {(rid, pid) for rid, pid, *_ in changes} == flipped
    assert all(row[2] == snapshot and row[3] != row[4] for row in changes)
    history = db_rows(db_path, "SELECT resource_id, patch_id, patch_status, status_snapshot, status_since "
                               "FROM dcapi_mapping_history")
    assert {(r[0], r[1]) for r in history} == flipped
    assert all(r[2] == expected[(r[0], r[1])][2] and r[3] == snapshot and r[4] for r in history)
    assert refreshed.stats.get("pmp/mappings_status_changes") == len(flipped)


@pytest_twisted.ensureDeferred
async def test_refresh_interval_zero_never_sweeps_again(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, db_path, monkeypatch)
        requests = len(sim.requests)
        again = await sweep(sim, db_path, monkeypatch, PMP_REFRESH_INTERVAL=0)
        assert len(sim.requests) == requests
    assert (again.exit_code, again.close_reason) == (0, "pmp_target_met")


# --- reconciliation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["front", "middle", "end"])
@pytest_twisted.ensureDeferred
async def test_systems_and_patches_that_change_between_sweeps_are_reconciled(
        db_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, db_path, monkeypatch)
        old_ids = set(sim.dcapi_system_ids())
        before = mapping_table(db_path)
        sim.mutate(add_systems={"count": 7, "where": where}, remove_systems={"count": 9, "where": where},
                   add_patches={"systems": 5, "per_system": 3}, remove_patches={"systems": 4, "per_system": 2})
        result = await sweep(sim, db_path, monkeypatch, **STALE)
        expected = expected_table(sim)
        new_ids = set(sim.dcapi_system_ids())
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(db_path) == expected  # the present, exactly
    assert present_systems(db_path) == new_ids
    gone = old_ids - new_ids
    assert len(gone) == 9
    retired = db_rows(db_path, "SELECT resource_id, retired_snapshot FROM dcapi_systems WHERE retired_at IS NOT NULL")
    assert {r[0] for r in retired} == gone and {r[1] for r in retired} == {latest_snapshot(db_path)}
    kept = db_rows(db_path, "SELECT DISTINCT resource_id FROM dcapi_mapping_history WHERE retired_snapshot IS NOT NULL")
    assert gone <= {r[0] for r in kept}  # retired to history, not lost
    assert result.stats["pmp/coverage"] == len(new_ids)
    assert {r[0] for r in events(db_path, "system_retired")} == gone
    dropped = {k for k in before if k[0] in new_ids and k not in expected}  # patches removed from systems
    assert dropped and {(e[0], e[1]) for e in events(db_path, "retired") if e[0] in new_ids} == dropped


@pytest_twisted.ensureDeferred
async def test_a_tenant_suddenly_reporting_a_tenth_retires_nothing_and_exits_2(
        tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_file = tmp_path / "run.log"
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, db_path, monkeypatch)
        before = mapping_table(db_path)
        sim.mutate(remove_systems={"count": 270, "where": "end"})
        result = await sweep(sim, db_path, monkeypatch, LOG_FILE=str(log_file), **STALE)
    assert result.exit_code == 2
    assert "PMP_MAX_RETIRE_SHARE" in result.stats["pmp/exit_message"]
    assert len(present_systems(db_path)) == 300 and mapping_table(db_path) == before
    [warning] = [r for r in json_log_lines(log_file) if r.get("event_type") == "reconcile_refused"]
    assert warning["level"] == "WARNING" and "270 of 300" in warning["message"]
    assert db_rows(db_path, "SELECT reconcile_state FROM dcapi_snapshots ORDER BY snapshot_id DESC LIMIT 1") \
        == [("refused",)]


# --- sweeps that survive shifting data ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_systems_inserted_at_the_front_and_removed_mid_sweep_are_all_complete(
        tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log_file = tmp_path / "run.log"
    scenario = Scenario(dataset=SMALL, mutations=[
        {"after_page_requests": 4, "add_systems": {"count": 5, "where": "front"}},
        {"after_page_requests": 6, "remove_systems": {"count": 7, "where": "middle"}}])
    with Simulator(scenario=scenario) as sim:
        result = await sweep(sim, db_path, monkeypatch, LOG_FILE=str(log_file))
        expected = expected_table(sim)
        ids = set(sim.dcapi_system_ids())
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert mapping_table(db_path) == expected
    assert present_systems(db_path) == ids and result.stats["pmp/coverage"] == len(ids)
    changed = [r for r in json_log_lines(log_file) if r.get("event_type") == "tenant_changed"]
    assert changed and changed[0]["reread_pages"]
    assert db_rows(db_path, "SELECT state FROM dcapi_snapshots") == [("complete",)]


@pytest_twisted.ensureDeferred
async def test_reset_and_interrupted_resweeps_complete(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, db_path, monkeypatch)
        sim.mutate(flip_status={"count": 10})
        partial = await sweep(sim, db_path, monkeypatch, PMP_RESET=True, PMP_BATCH_PAGES=3)
        rest = await sweep(sim, db_path, monkeypatch, PMP_BATCH_PAGES=4)  # target met: still continued
        last = await sweep(sim, db_path, monkeypatch, PMP_BATCH_PAGES=4)
        expected = expected_table(sim)
    assert partial.stats["pmp/checkpoint_page"] == 3 and rest.stats["pmp/first_page"] == 4
    assert last.stats["pmp/checkpoint_page"] == 10 and last.stats.get("pmp/snapshot_complete") is True
    assert mapping_table(db_path) == expected
    assert db_rows(db_path, "SELECT state FROM dcapi_snapshots ORDER BY snapshot_id") == [("complete",)] * 2


@pytest_twisted.ensureDeferred
async def test_a_changed_page_limit_applies_from_the_next_snapshot(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        first = await sweep(sim, db_path, monkeypatch, PMP_BATCH_PAGES=3)
        sim.reset_requests()
        second = await sweep(sim, db_path, monkeypatch, PMP_PAGE_LIMIT=1000)
        limits = {r.query.get("pageLimit") for r in sim.requests if r.kind == "page"}
        expected = expected_table(sim)
    assert first.stats["pmp/checkpoint_page"] == 3
    assert limits == {"30"} and second.stats["pmp/checkpoint_page"] == 10
    assert mapping_table(db_path) == expected


# --- coverage per customer --------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_each_customer_and_the_default_one_see_their_own_coverage(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    customers = {"Acme": DatasetSpec(managed_systems=90, no_patch_share=0.0),
                 "Globex": DatasetSpec(managed_systems=60, no_patch_share=0.0)}
    with Simulator(scenario=Scenario(dataset=SMALL, customers=customers)) as sim:
        default = await sweep(sim, db_path, monkeypatch)
        acme = await sweep(sim, db_path, monkeypatch, PMP_CUSTOMER="Acme")
        globex = await sweep(sim, db_path, monkeypatch, PMP_CUSTOMER="Globex")
        status = scrapy_command(["status", "--json", "-s", f"PMP_DATABASE_URL=sqlite:///{db_path}"])
    assert [r.stats["pmp/coverage"] for r in (default, acme, globex)] == [300, 90, 60]
    import json
    report = {c["customer"]: c for c in json.loads(status.stdout)["customers"]}
    assert {name: c["systems_with_mappings"] for name, c in report.items()} == {"": 300, "Acme": 90, "Globex": 60}


# --- demo mode and real data ---------------------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_demo_mode_refuses_a_production_database_and_leaves_it_unchanged(
        tmp_path: Path, db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, db_path, monkeypatch)
    digest = hashlib.sha256(db_path.read_bytes()).hexdigest()
    workdir = tmp_path / "work"
    workdir.mkdir()
    # An exported production URL is not used by a demo: it writes ./pmp_demo.db instead.
    exported = scrapy_command(["crawl", "dcapi_patches", "-a", "demo=1", "-s", "PMP_BATCH_PAGES=2"], cwd=workdir,
                              env={"PMP_DATABASE_URL": f"sqlite:///{db_path}"})
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (workdir / "pmp_demo.db").is_file()
    named = scrapy_command(["crawl", "dcapi_patches", "-a", "demo=1", "-s", f"PMP_DATABASE_URL=sqlite:///{db_path}"],
                           cwd=workdir)
    assert named.returncode == 1
    [line] = [line for line in named.stderr.splitlines() if line.startswith("pmp_scrapy: exit 1:")]
    assert "demo mode refuses the database" in line and "Traceback" not in named.stderr
    assert hashlib.sha256(db_path.read_bytes()).hexdigest() == digest
