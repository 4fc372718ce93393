"""The report roll-ups (``dcapi_system_rollup``, ``dcapi_missing_pairs``) stay exactly what the
mappings say: after real sweeps with status flips, patches added and removed, systems retired
and coming back, and re-reads, on SQLite and PostgreSQL; built for a database that lacks them;
consistent after SIGKILL; the checkpoint's coverage from them equals the contract's query.

The oracle is computed here in Python from the raw tables (``patch_system_mapping``,
``dcapi_systems``, ``dcapi_mapping_history``), not from the project's SQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from conftest import crawl_env, crawl_settings, oauth_env, run_crawl, scrapy_command, sigkill_crawl_when
from test_storage import database_url, postgres_url, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.reporting.codes import SEVERITIES, severity_name, status_name
from pmp_scrapy.simulator import DatasetSpec, Scenario, Simulator
from pmp_scrapy.storage.commit import coverage_query
from pmp_scrapy.storage.engine import open_engine
from pmp_scrapy.storage.rollup import coverage, stale_customers

SMALL = DatasetSpec(managed_systems=240, no_patch_share=0.0)
RUN = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 3}
STALE = {"PMP_REFRESH_INTERVAL": 0.001}  # the last sweep is always older than this


async def sweep(sim: Simulator, url: str, monkeypatch: pytest.MonkeyPatch, **overrides: Any) -> Any:
    settings = crawl_settings(sim, Path("unused.db"), **{**RUN, "PMP_DATABASE_URL": url, **overrides})
    result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    return result


# --- the oracle -------------------------------------------------------------------------------------------

def expected_rollups(url: str) -> tuple[dict[tuple[str, str], dict[str, Any]], set[tuple[Any, ...]]]:
    """(system roll-up rows by (customer, resource id), missing pairs) from the raw tables."""
    present = url_rows(url, "SELECT customer, resource_id FROM dcapi_systems WHERE retired_at IS NULL")
    mappings: dict[str, list[tuple[Any, ...]]] = {}
    for row in url_rows(url, "SELECT resource_id, patch_id, severity, patch_status, created_at FROM patch_system_mapping"):
        mappings.setdefault(row[0], []).append(row)
    history = {(r[0], r[1], r[2]): (r[3], r[4]) for r in url_rows(
        url, "SELECT customer, resource_id, patch_id, patch_status, status_since FROM dcapi_mapping_history")}
    systems: dict[tuple[str, str], dict[str, Any]] = {}
    pairs: set[tuple[Any, ...]] = set()
    for customer, rid in present:
        rows = mappings.get(rid, [])
        if not rows:
            continue
        entry: dict[str, Any] = {"mappings": len(rows), "installed": 0, "missing": 0, "missing_other": 0,
                                 "oldest_missing_since": None}
        entry.update({f"missing_{name.lower()}": 0 for name in SEVERITIES})
        entry.update({f"oldest_{name.lower()}_since": None for name in SEVERITIES})
        for _, pid, severity, status, created_at in rows:
            if status_name(status.strip() if status else status) == "Installed":
                entry["installed"] += 1
            if status_name(status) != "Missing":
                continue
            name = severity_name(severity)
            kept = history.get((customer, rid, pid))
            since = kept[1] if kept and status_name(kept[0]) == "Missing" and kept[1] is not None else created_at
            pairs.add((customer, rid, pid, name, since))
            entry["missing"] += 1
            column = name.lower() if name in SEVERITIES else "other"
            entry[f"missing_{column}"] += 1
            for key in ("oldest_missing_since", *([f"oldest_{column}_since"] if column != "other" else [])):
                if since is not None and (entry[key] is None or since < entry[key]):
                    entry[key] = since
        systems[(customer, rid)] = entry
    return systems, pairs


def assert_consistent(url: str) -> None:
    """The roll-ups equal the oracle, coverage from them equals ``coverage_query``, and what they
    are recorded as up to is what ``dcapi_systems`` holds (a commit that only saw systems writes
    its time there without reading every system: the two must agree)."""
    systems, pairs = expected_rollups(url)
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            assert stale_customers(conn) == []
            stored = {(r["customer"], r["resource_id"]): {k: v for k, v in r.items() if k not in ("customer", "resource_id")}
                      for r in conn.execute(sa.text("SELECT * FROM dcapi_system_rollup")).mappings()}
            stored_pairs = {tuple(r) for r in conn.execute(sa.text(
                "SELECT customer, resource_id, patch_id, severity_name, missing_since FROM dcapi_missing_pairs"))}
            customers = [r[0] for r in conn.execute(sa.text("SELECT DISTINCT customer FROM dcapi_systems"))]
            for customer in customers:
                assert coverage(conn, customer) == conn.execute(coverage_query(customer)).scalar_one()
    finally:
        engine.dispose()
    assert stored.keys() == systems.keys()
    for key, entry in systems.items():
        assert stored[key] == entry, key
    assert stored_pairs == pairs


# --- sweeps --------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_rollups_follow_flips_churn_retirements_returns_and_rereads(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        first = await sweep(sim, database_url, monkeypatch)
        assert_consistent(database_url)
        sim.mutate(flip_status={"count": 30}, add_systems={"count": 6, "where": "middle"},
                   remove_systems={"count": 8, "where": "front"},
                   add_patches={"systems": 5, "per_system": 3}, remove_patches={"systems": 4, "per_system": 2})
        changed = await sweep(sim, database_url, monkeypatch, **STALE)
        assert changed.stats.get("pmp/mappings_status_changes", 0) > 0
        assert url_rows(database_url, "SELECT COUNT(*) FROM dcapi_systems WHERE retired_at IS NOT NULL") == [(8,)]
        assert_consistent(database_url)
        assert changed.stats["pmp/coverage"] == coverage_of(database_url)
    with Simulator(scenario=Scenario(dataset=SMALL)) as fresh:  # the original estate: the 8 come back
        await sweep(fresh, database_url, monkeypatch, **STALE)
        assert len(url_rows(database_url, "SELECT 1 FROM dcapi_mapping_events WHERE event = 'system_returned'")) == 8
        assert_consistent(database_url)
        before = rollup_digest(database_url)
        await sweep(fresh, database_url, monkeypatch, **STALE)  # a re-read of an unchanged tenant
        assert rollup_digest(database_url) == before
        assert_consistent(database_url)
    assert first.stats["pmp/coverage"] == coverage_of(database_url)


def coverage_of(url: str) -> int:
    return int(url_rows(url, "SELECT COUNT(*) FROM dcapi_system_rollup WHERE customer = ''")[0][0])


def rollup_digest(url: str) -> list[tuple[Any, ...]]:
    return (url_rows(url, "SELECT * FROM dcapi_system_rollup ORDER BY customer, resource_id")
            + url_rows(url, "SELECT * FROM dcapi_missing_pairs ORDER BY customer, resource_id, patch_id"))


@pytest_twisted.ensureDeferred
async def test_a_database_without_rollups_gets_them_built_once_at_open(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
    built = rollup_digest(database_url)
    summary = scrapy_command(["report", "--format", "json"], env={"PMP_DATABASE_URL": database_url})
    assert summary.returncode == 0, summary.stderr
    engine = sa.create_engine(database_url)
    try:
        with engine.begin() as conn:  # as a database made before the roll-ups: no tables, no state
            for table in ("dcapi_system_rollup", "dcapi_missing_pairs", "dcapi_rollup_state"):
                conn.execute(sa.text(f"DROP TABLE {table}"))
    finally:
        engine.dispose()
    open_engine(database_url).dispose()
    assert rollup_digest(database_url) == built
    assert_consistent(database_url)
    again = scrapy_command(["report", "--format", "json"], env={"PMP_DATABASE_URL": database_url})
    assert again.returncode == 0 and again.stdout == summary.stdout
    # Built once: a second open leaves them (and their state row) as they are.
    state = url_rows(database_url, "SELECT definition, built_at FROM dcapi_rollup_state")
    open_engine(database_url).dispose()
    assert url_rows(database_url, "SELECT definition, built_at FROM dcapi_rollup_state") == state


def test_rollups_survive_sigkill_mid_sweep(db_path: Path) -> None:
    url = f"sqlite:///{db_path}"
    with Simulator(scenario=Scenario(dataset=DatasetSpec(managed_systems=1200))) as sim:
        env = crawl_env(sim, db_path, DOWNLOAD_DELAY="0.05", PMP_BATCH_PAGES="0", PMP_CHECKPOINT_EVERY="2")
        sigkill_crawl_when(env, lambda: db_path.exists() and checkpoint_page(url) >= 8, timeout=90)
    assert_consistent(url)  # what the dead run committed, roll-ups included, and nothing else
    assert coverage_of(url) > 0


def checkpoint_page(url: str) -> int:
    try:
        rows = url_rows(url, "SELECT MAX(last_page) FROM dcapi_extraction_checkpoints")
    except sa.exc.DatabaseError:  # not created yet, or still being made
        return 0
    return int(rows[0][0] or 0)
