"""MSP customers: ``-a customer=NAME`` scopes every request; checkpoints, snapshots, gaps and
coverage are kept per customer; ``scrapy status`` lists every customer or one; two customer
jobs writing one database at once (SQLite and PostgreSQL) neither deadlock nor lose rows."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import ROOT, CrawlAgainst, crawl_env, expected_table, scrapy_command, scrapy_env
from test_storage import database_url, postgres_url, url_mapping_table, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.storage import Store

pytestmark = pytest.mark.crawl_defaults(PMP_CHECKPOINT_EVERY=2)


def status_json(url: str, *args: str) -> dict[str, Any]:
    result = scrapy_command(["status", "--json", *args], env={"PMP_DATABASE_URL": url}, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def page_ids(sim: Simulator, customer: str, pages: set[int], page_limit: int = 30) -> set[str]:
    ids = sim.dcapi_system_ids(customer)
    return {rid for page in pages for rid in ids[(page - 1) * page_limit: page * page_limit]}


@pytest_twisted.ensureDeferred
async def test_customer_scopes_requests_and_keeps_state_per_customer(
        database_url: str, crawl_against: CrawlAgainst) -> None:  # noqa: F811
    scenario = Scenario(
        dataset=DatasetSpec(managed_systems=30, no_patch_share=0.0),
        customers={"acme": DatasetSpec(managed_systems=150, no_patch_share=0.0),
                   "globex": DatasetSpec(managed_systems=95, no_patch_share=0.0, name_prefix="GLX")},
        faults=[Fault(customer="acme", page=2, kind="http_500", attempts="all")],
    )
    with Simulator(scenario=scenario) as sim:
        acme = await crawl_against(sim, customer="acme", PMP_DATABASE_URL=database_url, PMP_COVERAGE_TARGET=0.5)
        globex = await crawl_against(sim, customer="globex", PMP_DATABASE_URL=database_url, PMP_COVERAGE_TARGET=0.5)
        assert (acme.exit_code, globex.exit_code) == (2, 0)

        # Every DCAPI and inventory request names its customer; tokens are not per customer.
        api = [r for r in sim.requests if r.kind in ("page", "inventory")]
        assert {r.kind for r in api} == {"page", "inventory"}
        assert all(r.query.get("customername") in ("acme", "globex") for r in api)
        assert all(r.customer == r.query["customername"] for r in api)
        by_customer = {name: [r for r in api if r.customer == name] for name in ("acme", "globex")}
        assert sum(r.kind == "inventory" for r in by_customer["acme"]) == 1
        assert {r.page for r in by_customer["globex"] if r.kind == "page"} == set(range(1, 5))
        assert {r.page for r in by_customer["acme"] if r.kind == "page"} == set(range(1, 6))

        # Exact data per customer: globex whole, acme without its failed page 2.
        assert url_mapping_table(database_url, "globex") == expected_table(sim, "globex")
        missing = page_ids(sim, "acme", {2})
        assert url_mapping_table(database_url, "acme") == {
            key: value for key, value in expected_table(sim, "acme").items() if key[0] not in missing}
        acme_covered = len(set(sim.dcapi_system_ids("acme")) - missing)
        globex_covered = len(sim.dcapi_system_ids("globex"))

    # Per-customer snapshots, checkpoints and gaps in the tables ...
    snaps = dict(url_rows(database_url, "SELECT customer, snapshot_id FROM dcapi_snapshots"))
    assert set(snaps) == {"acme", "globex"} and snaps["acme"] != snaps["globex"]
    assert url_rows(database_url, "SELECT snapshot_id, page_num FROM dcapi_extraction_gaps") == [(snaps["acme"], 2)]
    assert dict(url_rows(database_url, "SELECT snapshot_id, last_page FROM dcapi_extraction_checkpoints")) \
        == {snaps["acme"]: 5, snaps["globex"]: 4}
    assert dict(url_rows(database_url, "SELECT customer, exit_code FROM dcapi_runs")) == {"acme": 2, "globex": 0}

    # ... and in `scrapy status`: every customer, or one.
    report = {c["customer"]: c for c in status_json(database_url)["customers"]}
    assert set(report) == {"acme", "globex"}
    assert report["acme"]["systems_with_mappings"] == acme_covered
    assert report["globex"]["systems_with_mappings"] == globex_covered
    assert (report["acme"]["managed_systems"], report["globex"]["managed_systems"]) == (150, 95)
    assert [g["page"] for g in report["acme"]["gaps"]["open"]] == [2]
    assert report["globex"]["gaps"]["open"] == []
    assert report["acme"]["snapshot"]["snapshot_id"] == snaps["acme"]
    assert report["globex"]["checkpoint"]["last_page"] == 4
    assert (report["acme"]["last_run"]["exit_code"], report["globex"]["last_run"]["exit_code"]) == (2, 0)
    only = status_json(database_url, "--customer", "globex")["customers"]
    assert [c["customer"] for c in only] == ["globex"]
    text = scrapy_command(["status"], env={"PMP_DATABASE_URL": database_url}, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "customer: acme" in text.stdout and "customer: globex" in text.stdout
    one = scrapy_command(["status", "--customer", "acme"], env={"PMP_DATABASE_URL": database_url}, timeout=60)
    assert "customer: acme" in one.stdout and "customer: globex" not in one.stdout
    assert "page 2" in one.stdout


def start_crawl(sim: Simulator, url: str, customer: str, log: Path, **extra: str) -> subprocess.Popen[str]:
    env = crawl_env(sim, url, PMP_BATCH_PAGES=0, PMP_CHECKPOINT_EVERY=2, LOG_FILE=log, **extra)
    return subprocess.Popen([sys.executable, "-m", "scrapy", "crawl", "dcapi_patches", "-a", f"customer={customer}",
                             "-s", "AUTOTHROTTLE_ENABLED=False"],
                            cwd=ROOT, env=scrapy_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


TWO_CUSTOMERS = Scenario(customers={"acme": DatasetSpec(managed_systems=900, no_patch_share=0.0),
                                    "globex": DatasetSpec(managed_systems=750, no_patch_share=0.0, seed=7)})


def test_two_customer_jobs_at_once_lose_no_rows(database_url: str, tmp_path: Path) -> None:  # noqa: F811
    """Two subprocess crawls (as two scrapyd jobs would be) commit into one database at the same
    time, every 2 pages. SQLite makes one writer wait (BEGIN IMMEDIATE + busy timeout);
    PostgreSQL lets them interleave. Both end with exit 0 and exactly their customer's rows."""
    with Simulator(scenario=TWO_CUSTOMERS) as sim:
        # DOWNLOAD_DELAY stretches each sweep to ~4 s so that the two really overlap. One tenant
        # allows one sweeping run at a time (issue 15: the second would skip), so the jobs reach
        # the server under two names, as two tenants would: the database sees two writers at once.
        hosts = {"acme": sim.url, "globex": sim.url.replace("127.0.0.1", "localhost")}
        jobs = {name: start_crawl(sim, database_url, name, tmp_path / f"{name}.log", DOWNLOAD_DELAY="0.15",
                                  PMP_BASE_URL=hosts[name], PMP_ACCOUNTS_URL=hosts[name])
                for name in ("acme", "globex")}
        outputs = {}
        for name, job in jobs.items():
            try:
                outputs[name] = job.communicate(timeout=150)
            except subprocess.TimeoutExpired:
                for other in jobs.values():
                    other.kill()
                pytest.fail(f"the {name} job did not finish in 150 s (deadlock?)")
        for name, job in jobs.items():
            assert job.returncode == 0, (name, outputs[name][1][-2000:])
        # They really ran at the same time: page requests of the two customers interleave.
        pages = [r for r in sim.requests if r.kind == "page"]
        spans = {name: (min(r.t for r in pages if r.customer == name), max(r.t for r in pages if r.customer == name))
                 for name in jobs}
        assert spans["acme"][0] < spans["globex"][1] and spans["globex"][0] < spans["acme"][1]
        for name in jobs:
            assert url_mapping_table(database_url, name) == expected_table(sim, name), name
        total = len(expected_table(sim, "acme")) + len(expected_table(sim, "globex"))
    assert url_rows(database_url, "SELECT COUNT(*) FROM patch_system_mapping") == [(total,)]
    assert sorted(url_rows(database_url, "SELECT customer, state FROM dcapi_snapshots")) \
        == [("acme", "complete"), ("globex", "complete")]
    assert sorted(url_rows(database_url, "SELECT customer, exit_code FROM dcapi_runs")) == [("acme", 0), ("globex", 0)]


def test_sqlite_locked_too_long_is_a_clean_one_line_failure(tmp_path: Path) -> None:
    """Another writer holds SQLite's write lock past the busy timeout: the run stops with exit 1
    and one line naming the cause, sends no page request and claims nothing."""
    db = tmp_path / "pmp.db"
    url = f"sqlite:///{db}"
    store = Store(url)
    store.open()
    store.close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with Simulator(scenario=TWO_CUSTOMERS) as sim:
            started = time.monotonic()
            job = start_crawl(sim, url, "acme", tmp_path / "acme.log", PMP_SQLITE_BUSY_TIMEOUT="0.5")
            stdout, stderr = job.communicate(timeout=60)
            elapsed = time.monotonic() - started
            page_requests = [r for r in sim.requests if r.kind == "page"]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert job.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("pmp_scrapy: exit 1:") and "database is locked" in lines[0], lines[0]
    assert "Traceback" not in stderr and stdout == ""
    assert page_requests == []
    assert elapsed < 30
    assert url_rows(url, "SELECT COUNT(*) FROM patch_system_mapping") == [(0,)]
    assert url_rows(url, "SELECT COUNT(*) FROM dcapi_extraction_checkpoints") == [(0,)]
