"""Mixed versions: a crawl by a version that keeps no report roll-ups leaves them behind the
mappings. That is noticed at open (``dcapi_rollup_sources`` against ``dcapi_systems``) and they
are rebuilt, by a crawl's open and by ``scrapy report``; ``scrapy status`` then counts from the
mappings instead. While the roll-ups are current, status reads its counts from them, equal to
the contract's query. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import pytest_twisted
import sqlalchemy as sa
from conftest import scrapy_command
from test_rollup import SMALL, assert_consistent, rollup_digest, sweep
from test_storage import database_url, postgres_url, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.simulator import Scenario, Simulator
from pmp_scrapy.storage.commit import coverage_query
from pmp_scrapy.storage.engine import open_engine
from pmp_scrapy.storage.rollup import stale_customers


def contract_counts(url: str) -> tuple[int, int]:
    """(systems with mappings, their mappings) by the contract's query and a plain count."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            systems = int(conn.execute(coverage_query("")).scalar_one())
    finally:
        engine.dispose()
    [(mappings,)] = url_rows(url, "SELECT COUNT(*) FROM patch_system_mapping WHERE resource_id IN (SELECT resource_id "
                                  "FROM dcapi_systems WHERE customer = '' AND retired_at IS NULL)")
    return systems, int(mappings)


def status_counts(url: str) -> tuple[int, int]:
    result = scrapy_command(["status", "--json"], env={"PMP_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    [customer] = json.loads(result.stdout)["customers"]
    return customer["systems_with_mappings"], customer["mappings"]


def stale(url: str) -> list[str]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return stale_customers(conn)
    finally:
        engine.dispose()


def write_as_an_older_version(url: str) -> None:
    """What a crawl of a version without roll-ups commits: one missing patch installed (mapping,
    history, the system seen again) and one system retired with its mappings, nothing rolled up."""
    now = datetime.now(UTC).replace(tzinfo=None)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            rid, pid = conn.execute(sa.text(
                "SELECT m.resource_id, m.patch_id FROM patch_system_mapping m JOIN dcapi_systems s "
                "ON s.resource_id = m.resource_id WHERE m.patch_status = 'Missing' AND s.retired_at IS NULL "
                "ORDER BY m.resource_id, m.patch_id LIMIT 1")).one()
            conn.execute(sa.text("UPDATE patch_system_mapping SET patch_status = 'Installed' "
                                 "WHERE resource_id = :rid AND patch_id = :pid"), {"rid": rid, "pid": pid})
            conn.execute(sa.text("UPDATE dcapi_mapping_history SET patch_status = 'Installed', status_since = :now "
                                 "WHERE resource_id = :rid AND patch_id = :pid"), {"rid": rid, "pid": pid, "now": now})
            conn.execute(sa.text("UPDATE dcapi_systems SET last_seen_at = :now WHERE resource_id = :rid"),
                         {"rid": rid, "now": now})
            gone = conn.execute(sa.text("SELECT MAX(resource_id) FROM dcapi_systems WHERE retired_at IS NULL "
                                        "AND resource_id <> :rid"), {"rid": rid}).scalar_one()
            conn.execute(sa.text("DELETE FROM patch_system_mapping WHERE resource_id = :gone"), {"gone": gone})
            conn.execute(sa.text("UPDATE dcapi_systems SET retired_at = :now WHERE resource_id = :gone"),
                         {"gone": gone, "now": now})
    finally:
        engine.dispose()


@pytest_twisted.ensureDeferred
async def test_rollups_left_behind_by_an_older_crawl_are_noticed_and_rebuilt(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
    assert stale(database_url) == []  # every commit brought the sources up to date
    assert status_counts(database_url) == contract_counts(database_url)  # from the roll-ups
    before = rollup_digest(database_url)

    write_as_an_older_version(database_url)
    assert stale(database_url) == [""]
    assert rollup_digest(database_url) == before  # nothing rolled up: stale
    # status is right anyway (it counts from the mappings while the roll-ups are stale) ...
    assert status_counts(database_url) == contract_counts(database_url)
    # ... and the report brings the roll-ups up to date first, saying so in one line.
    first = scrapy_command(["report", "--format", "json"], env={"PMP_DATABASE_URL": database_url})
    assert first.returncode == 0, first.stderr
    assert "roll-ups brought up to date" in first.stderr and len(first.stderr.strip().splitlines()) == 1
    assert stale(database_url) == []
    assert_consistent(database_url)
    assert json.loads(first.stdout)["systems"] == contract_counts(database_url)[0]
    again = scrapy_command(["report", "--format", "json"], env={"PMP_DATABASE_URL": database_url})
    assert again.returncode == 0 and again.stderr == "" and again.stdout == first.stdout


@pytest_twisted.ensureDeferred
async def test_a_crawls_open_rebuilds_stale_rollups(
        database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811 (the fixture)
    with Simulator(scenario=Scenario(dataset=SMALL)) as sim:
        await sweep(sim, database_url, monkeypatch)
    write_as_an_older_version(database_url)
    open_engine(database_url).dispose()  # what a crawl of this version does first
    assert stale(database_url) == []
    assert_consistent(database_url)
    state = url_rows(database_url, "SELECT definition, built_at FROM dcapi_rollup_state")
    open_engine(database_url).dispose()  # current now: left as they are
    assert url_rows(database_url, "SELECT definition, built_at FROM dcapi_rollup_state") == state
