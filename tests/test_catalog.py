"""The patch catalog (/dcapi/threats/patches, issue 13 item 1): tolerant reading (pure), and real
crawls against the simulator: the catalog tables equal what it serves (SQLite and PostgreSQL),
servers without a catalog, catalog gaps (page_num -N) retried by the next run, resumed runs that
do not ask again, pruning on a new snapshot, MSP customers and the rate limit."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import sqlalchemy as sa
from conftest import (
    crawl_settings,
    db_rows,
    expected_table,
    mapping_table,
    max_requests_in_window,
    oauth_env,
    run_crawl,
)
from test_storage import database_url, postgres_url, url_rows  # noqa: F401 (fixtures)

from pmp_scrapy.catalog import (
    CatalogSweep,
    EndpointUnsupported,
    catalog_page_limit,
    catalog_rows,
    cve_ids,
    describe_gap_page,
    gap_page_num,
    parse_catalog,
    reboot_flag,
    unavailable_reason,
)
from pmp_scrapy.envelope import PayloadError
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.storage.status import read_status

SMALL = DatasetSpec(managed_systems=200, no_patch_share=0.0)  # 7 pages of 30; 3,184 catalog patches
UNSUPPORTED = b'{"error_code": "10022", "error_description": "API Endpoint is not supported by current server"}'
PMP_KINDS = ("page", "catalog", "inventory", "customers")


# --- helpers ---------------------------------------------------------------------------------------------

def expected_catalog(sim: Simulator, customer: str | None = None) -> dict[str, tuple[Any, ...]]:
    """What the simulator serves, as dcapi_patch_catalog rows keyed by patch id (converted here,
    independently of the project's parser)."""
    rows = {}
    for e in sim.catalog(customer):
        reboot = e["reboot_required"]
        rows[str(e["patch_id"])] = (
            e.get("patch_name", e.get("patchname")), e["bulletinid"], e["severity"], e["vendor_name"],
            e["kb_number"], None if reboot is None else (1 if reboot in (True, 1) else 0),
            str(e["patch_released_time"]), e["installed_system_count"], e["missing_system_count"])
    return rows


def expected_cves(sim: Simulator, customer: str | None = None) -> set[tuple[str, str]]:
    return {(pid, cve.upper()) for pid, cves in sim.patch_cves(customer).items() for cve in cves}


CATALOG_QUERY = ("SELECT patch_id, patch_name, bulletinid, severity, vendor_name, kb_number, reboot_required, "
                 "released_time, installed_system_count, missing_system_count FROM dcapi_patch_catalog "
                 "WHERE customer = :customer")


def catalog_table(url: str, customer: str = "") -> dict[str, tuple[Any, ...]]:
    return {r[0]: tuple(r[1:]) for r in url_rows(url, CATALOG_QUERY, customer=customer)}


def cve_table(url: str, customer: str = "") -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in url_rows(
        url, "SELECT patch_id, cve_id FROM dcapi_patch_cves WHERE customer = :customer", customer=customer)}


def catalog_states(url: str) -> list[tuple[int, str | None]]:
    return [(int(r[0]), r[1]) for r in url_rows(
        url, "SELECT snapshot_id, catalog_state FROM dcapi_snapshots ORDER BY snapshot_id")]


def catalog_pages_requested(sim: Simulator) -> list[int]:
    return [r.page for r in sim.requests if r.kind == "catalog"]


def sqlite_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- pure: reading tolerantly -----------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    (["CVE-2024-1", "cve-2024-2 ", "CVE-2024-1", ""], ["CVE-2024-1", "CVE-2024-2"]),
    ("CVE-2024-1,CVE-2024-2", ["CVE-2024-1", "CVE-2024-2"]),
    ("cve-2024-1, CVE-2024-2 ,, ", ["CVE-2024-1", "CVE-2024-2"]),
    ("CVE-2024-1 CVE-2024-2;CVE-2024-3", ["CVE-2024-1", "CVE-2024-2", "CVE-2024-3"]),
    (["CVE-2024-1, CVE-2024-2"], ["CVE-2024-1", "CVE-2024-2"]),
    ("", []), (None, []), ([], []), ([None, " "], []),
])
def test_cve_ids_from_a_list_or_a_string(value: Any, expected: list[str]) -> None:
    assert cve_ids(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (True, 1), (False, 0), (1, 1), (0, 0), ("true", 1), ("False", 0), (" 1 ", 1), ("0", 0),
    (None, None), (2, None), ("maybe", None), ([], None),
])
def test_reboot_flag(value: Any, expected: int | None) -> None:
    assert reboot_flag(value) == expected


def test_catalog_rows_are_read_tolerantly(caplog: pytest.LogCaptureFixture) -> None:
    entries = [
        {"patch_id": 7, "patch_name": "A", "bulletinid": "MS1", "severity": 4, "vendor_name": "Microsoft",
         "cveids": "cve-2024-1, CVE-2024-2", "kb_number": 5001, "reboot_required": 1,
         "patch_released_time": 1700000000000, "installed_system_count": "3", "missing_system_count": 2},
        {"patch_id": "8", "patchname": "B", "cveids": ["CVE-2024-3"], "reboot_required": "false"},
        {"patch_name": "no id"}, "not an object", {"patch_id": "", "patch_name": "empty id"},
        {"patch_id": "8", "patchname": "B again", "cveids": []},
    ]
    with caplog.at_level(logging.WARNING):
        rows = catalog_rows(entries, page=3)
    assert rows.patches == [
        ("7", "A", "MS1", "4", "Microsoft", "5001", 1, "1700000000000", 3, 2),
        ("8", "B again", None, None, None, None, None, None, None, None),
    ]
    assert rows.cves == [("7", "CVE-2024-1"), ("7", "CVE-2024-2")]
    assert (rows.entries, rows.skipped, rows.duplicates) == (6, 3, 1)
    [warning] = warnings_of(caplog)
    assert warning.event_type == "catalog_patch_skipped" and warning.skipped == 3  # type: ignore[attr-defined]


def test_parse_catalog_envelopes() -> None:
    body = (b'{"metadata": {"page": 2, "pageLimit": 2, "totalPages": 3, "totalRecords": 5}, "response_code": 200,'
            b' "message_type": "patches", "message_response": {"patches": [{"patch_id": 1}]}}')
    env = parse_catalog(body)
    assert (env.page, env.total_pages, env.total_records, env.entries) == (2, 3, 5, [{"patch_id": 1}])
    # no totalPages: derived from totalRecords; another name for the list is accepted
    env = parse_catalog(b'{"metadata": {"totalRecords": 2500}, "message_response": {"allpatches": []}}', 1000)
    assert (env.total_pages, env.total_records) == (3, 2500)
    assert parse_catalog(b'{"message_response": {"patches": []}}').total_pages is None
    with pytest.raises(EndpointUnsupported):
        parse_catalog(UNSUPPORTED)
    for bad, kind in ((b"", "json_parse_error"), (b"<html>busy</html>", "json_parse_error"),
                      (b'{"metadata": {', "json_parse_error"), (b"[]", "invalid_payload"),
                      (b'{"response_code": 200, "message_type": "patches"}', "invalid_payload"),
                      (b'{"message_response": {"patches": {"patch_id": 1}}}', "invalid_payload"),
                      (b'{"error_code": "10001", "error_description": "Invalid customer name"}', "invalid_payload")):
        with pytest.raises(PayloadError) as info:
            parse_catalog(bad)
        assert info.value.error_type == kind, bad


def test_unavailable_answers() -> None:
    assert unavailable_reason(404, b"<html>Not Found</html>") == "HTTP 404"
    assert "10022" in (unavailable_reason(200, UNSUPPORTED) or "")
    assert unavailable_reason(200, b'{"metadata": {}, "message_response": {"patches": []}}') is None
    assert unavailable_reason(503, UNSUPPORTED) is None and unavailable_reason(200, b"<html>") is None


def test_gap_page_numbers_of_the_catalog_are_negative() -> None:
    assert gap_page_num(3) == -3 and describe_gap_page(-3) == ("catalog", 3)
    assert describe_gap_page(3) == ("systemreport", 3)


def test_catalog_page_limit_setting() -> None:
    assert [catalog_page_limit("X", v) for v in ("0", 1000, " 250 ")] == [0, 1000, 250]
    for bad in ("1001", "-1", "lots", None):
        with pytest.raises(ConfigError, match="X must be"):
            catalog_page_limit("X", bad)


def test_catalog_sweep_plan() -> None:
    sweep = CatalogSweep(full=True, page_limit=100)
    assert sweep.start() == [1]
    assert sweep.answered(1, 3, 250, 100) == [2, 3] and sweep.end() is None
    assert sweep.failed(3) == [] and sweep.end() is None
    assert sweep.answered(2, 3, 250, 100) == []
    end = sweep.end()
    assert end is not None and end.listing_complete and end.total_records == 250 and not end.records_changed
    # page 1 fails while the count is unknown: probe the next pages, three in all
    probe = CatalogSweep(full=True, page_limit=100)
    assert probe.start() == [1] and probe.failed(1) == [2] and probe.failed(2) == [3] and probe.failed(3) == []
    assert probe.end() is not None and not probe.end().listing_complete  # type: ignore[union-attr]
    # no page count at all: go on until a short page
    blind = CatalogSweep(full=True, page_limit=2)
    blind.start()
    assert blind.answered(1, None, None, 2) == [2] and blind.answered(2, None, None, 1) == []
    assert blind.end() is not None and blind.end().listing_complete  # type: ignore[union-attr]
    # a retry of gaps asks for those pages only, whatever the count says now
    retry = CatalogSweep(full=False, page_limit=100, retry_pages=[4, 2])
    assert retry.start() == [2, 4] and retry.answered(2, 9, 900, 100, skipped=1) == []
    assert retry.answered(4, 9, 901, 100) == []
    end = retry.end()
    assert end is not None and end.listing_complete and end.records_changed and end.skipped == 1


# --- crawls -------------------------------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_catalog_tables_equal_what_the_simulator_serves(database_url: str,  # noqa: F811
                                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with Simulator(Scenario(dataset=SMALL)) as sim:
        forms = {(type(e["cveids"]).__name__, type(e["reboot_required"]).__name__) for e in sim.catalog()}
        assert {"list", "str"} <= {f[0] for f in forms} and {"bool", "int"} <= {f[1] for f in forms}
        assert any(isinstance(e["cveids"], str) and "," in e["cveids"] for e in sim.catalog())
        result = await run_crawl(crawl_settings(sim, tmp_path / "unused.db", PMP_DATABASE_URL=database_url),
                                 monkeypatch, env=oauth_env(sim))
        assert result.exit_code == 0, result.stats.get("pmp/exit_message")
        assert sorted(catalog_pages_requested(sim)) == [1, 2, 3, 4]  # 3,184 patches, 1,000 a page
        table = catalog_table(database_url)
        assert table == expected_catalog(sim)
        assert cve_table(database_url) == expected_cves(sim)
        [(snapshot_id, state)] = catalog_states(database_url)
        assert state == "complete"
        assert {r[0] for r in url_rows(database_url, "SELECT DISTINCT snapshot_id FROM dcapi_patch_catalog")} == {
            snapshot_id}
        assert url_rows(database_url, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]
        assert result.stats["pmp/catalog/patches"] == len(table)
        # the mapping sweep is as it would be without a catalog
        mappings = {(r[0], r[1]): tuple(r[2:]) for r in url_rows(
            database_url, "SELECT resource_id, patch_id, patchname, severity, patch_status, bulletinid, "
                          "vendor_name, installed_time FROM patch_system_mapping")}
        assert mappings == expected_table(sim)


@pytest.mark.parametrize("mode", ["404", "unsupported"])
@pytest_twisted.ensureDeferred
async def test_a_server_without_a_catalog(mode: str, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          caplog: pytest.LogCaptureFixture) -> None:
    with Simulator(Scenario(dataset=SMALL)) as sim:  # the same tenant, no catalog sweep at all
        with caplog.at_level(logging.INFO):
            baseline = await run_crawl(crawl_settings(sim, tmp_path / "baseline.db", PMP_CATALOG_PAGE_LIMIT=0,
                                                      PMP_BATCH_PAGES=4), monkeypatch, env=oauth_env(sim))
        assert catalog_pages_requested(sim) == []
        usual = [r.getMessage() for r in warnings_of(caplog)]  # Scrapy's "Disabled ApiKeyMiddleware"
    with Simulator(Scenario(dataset=SMALL, catalog=mode)) as sim:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            result = await run_crawl(crawl_settings(sim, db_path, PMP_BATCH_PAGES=4), monkeypatch, env=oauth_env(sim))
        [warning] = [r for r in warnings_of(caplog) if r.getMessage() not in usual]
        assert warning.event_type == "catalog_unavailable"  # type: ignore[attr-defined]
        assert "CVE data is unavailable" in warning.getMessage()
        assert result.exit_code == baseline.exit_code == 0
        assert [r.query.get("page") for r in sim.requests if r.kind == "catalog"] == ["1"]  # no retry
        assert db_rows(db_path, "SELECT snapshot_id, catalog_state FROM dcapi_snapshots")[0][1] == "unavailable"
        assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]
        assert db_rows(db_path, "SELECT COUNT(*) FROM dcapi_patch_catalog") == [(0,)]
        # the resumed run of the snapshot does not ask again, and the mappings are complete
        sim.reset_requests()
        caplog.clear()
        second = await run_crawl(crawl_settings(sim, db_path, PMP_BATCH_PAGES=4), monkeypatch, env=oauth_env(sim))
        assert second.exit_code == 0 and catalog_pages_requested(sim) == []
        assert [r.getMessage() for r in warnings_of(caplog) if r.getMessage() not in usual] == []
        assert mapping_table(db_path) == expected_table(sim)


@pytest_twisted.ensureDeferred
async def test_a_catalog_page_failing_every_attempt_is_a_gap_the_next_run_retries(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    faults = [Fault(endpoint="catalog", page=2, kind="http_503", attempts=(1, 2, 3)),
              Fault(endpoint="page", page=2, kind="http_503", attempts=(1, 2, 3))]  # the same number, both endpoints
    settings = {"PMP_CATALOG_PAGE_LIMIT": 500}  # 3,184 patches: 7 catalog pages
    url = sqlite_url(db_path)
    with Simulator(Scenario(dataset=SMALL, faults=faults)) as sim:
        first = await run_crawl(crawl_settings(sim, db_path, **settings), monkeypatch, env=oauth_env(sim))
        assert first.exit_code == 2
        assert sorted(catalog_pages_requested(sim)) == [1, 2, 2, 2, 3, 4, 5, 6, 7]
        gaps = db_rows(db_path, "SELECT page_num, error_type, attempts FROM dcapi_extraction_gaps ORDER BY page_num")
        assert gaps == [(-2, "5xx_server_error", 3), (2, "5xx_server_error", 3)]
        [(snapshot_id, state)] = catalog_states(url)
        assert state == "partial"
        assert len(catalog_table(url)) == len(expected_catalog(sim)) - 500
        [status] = read_status(url)
        assert sorted(describe_gap_page(g.page) for g in status.open_gaps) == [("catalog", 2), ("systemreport", 2)]

        sim.reset_requests()
        second = await run_crawl(crawl_settings(sim, db_path, **settings), monkeypatch, env=oauth_env(sim))
        assert second.exit_code == 0, second.stats.get("pmp/exit_message")
        assert catalog_pages_requested(sim) == [2]  # only the gap, not the whole catalog again
        assert [r.page for r in sim.requests if r.kind == "page"] == [2]
        assert catalog_states(url) == [(snapshot_id, "complete")]
        assert catalog_table(url) == expected_catalog(sim)
        assert cve_table(url) == expected_cves(sim)
        assert mapping_table(db_path) == expected_table(sim)
        resolved = db_rows(db_path, "SELECT page_num FROM dcapi_gap_state WHERE resolved_at IS NOT NULL "
                                    "ORDER BY page_num")
        assert resolved == [(-2,), (2,)]  # healed, kept: the history stays


@pytest_twisted.ensureDeferred
async def test_resumed_runs_do_not_ask_for_a_complete_catalog_and_a_new_snapshot_prunes(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(db_path)
    settings = {"PMP_BATCH_PAGES": 3}  # 7 pages: three runs to a complete snapshot
    with Simulator(Scenario(dataset=SMALL)) as sim:
        per_run = []
        for _ in range(3):
            sim.reset_requests()
            result = await run_crawl(crawl_settings(sim, db_path, **settings), monkeypatch, env=oauth_env(sim))
            assert result.exit_code == 0, result.stats.get("pmp/exit_message")
            per_run.append(sorted(catalog_pages_requested(sim)))
        assert per_run == [[1, 2, 3, 4], [], []]
        [(snapshot_id, state)] = catalog_states(url)
        assert state == "complete"
        assert catalog_table(url) == expected_catalog(sim)

        # Rows a new snapshot's complete catalog does not list are deleted, with their CVEs.
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO dcapi_patch_catalog (customer, patch_id, patch_name, snapshot_id) "
                                 "VALUES ('', 'ghost', 'gone from PMP', :s), ('Other', 'ghost', 'kept', :s)"),
                         {"s": snapshot_id})
            conn.execute(sa.text("INSERT INTO dcapi_patch_cves (customer, patch_id, cve_id) VALUES "
                                 "('', 'ghost', 'CVE-2020-0001'), ('Other', 'ghost', 'CVE-2020-0001')"))
        engine.dispose()
        sim.reset_requests()
        fresh = await run_crawl(crawl_settings(sim, db_path, **settings), monkeypatch, env=oauth_env(sim), reset="1")
        assert fresh.exit_code == 0
        assert sorted(catalog_pages_requested(sim)) == [1, 2, 3, 4]
        assert catalog_states(url) == [(snapshot_id, "complete"), (snapshot_id + 1, "complete")]
        assert catalog_table(url) == expected_catalog(sim)
        assert cve_table(url) == expected_cves(sim)
        assert db_rows(db_path, "SELECT customer, patch_id FROM dcapi_patch_catalog WHERE patch_id = 'ghost'") == [
            ("Other", "ghost")]
        assert db_rows(db_path, "SELECT customer FROM dcapi_patch_cves WHERE patch_id = 'ghost'") == [("Other",)]


@pytest_twisted.ensureDeferred
async def test_entries_without_a_patch_id_are_skipped_and_counted(db_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    faults = [Fault(endpoint="catalog", page=1, kind="missing_fields")]  # patch_id gone on every third entry
    with Simulator(Scenario(dataset=SMALL, faults=faults)) as sim:
        with caplog.at_level(logging.WARNING):
            result = await run_crawl(crawl_settings(sim, db_path), monkeypatch, env=oauth_env(sim))
        assert result.exit_code == 0
        skipped = [r for r in caplog.records if getattr(r, "event_type", None) == "catalog_patch_skipped"]
        assert len(skipped) == 1 and skipped[0].skipped == 334  # type: ignore[attr-defined]
        assert result.stats["pmp/catalog/skipped_patches"] == 334
        expected = expected_catalog(sim)
        first_page = list(expected)[:1000]
        missing = {pid for j, pid in enumerate(first_page) if j % 3 == 0}
        assert catalog_table(sqlite_url(db_path)) == {k: v for k, v in expected.items() if k not in missing}
        assert catalog_states(sqlite_url(db_path))[0][1] == "complete"


@pytest_twisted.ensureDeferred
async def test_catalog_of_an_msp_customer(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scenario = Scenario(dataset=SMALL, customers={"Acme": DatasetSpec(managed_systems=40, seed=5, no_patch_share=0.0)})
    with Simulator(scenario) as sim:
        result = await run_crawl(crawl_settings(sim, db_path), monkeypatch, env=oauth_env(sim), customer="Acme")
        assert result.exit_code == 0, result.stats.get("pmp/exit_message")
        catalog = [r for r in sim.requests if r.kind == "catalog"]
        assert catalog and all(r.customer == "Acme" for r in catalog)
        url = sqlite_url(db_path)
        assert catalog_table(url, "Acme") == expected_catalog(sim, "Acme") != expected_catalog(sim)
        assert cve_table(url, "Acme") == expected_cves(sim, "Acme")
        assert catalog_table(url, "") == {}


@pytest_twisted.ensureDeferred
async def test_catalog_requests_keep_the_rate_limit(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(Scenario(dataset=SMALL)) as sim:
        result = await run_crawl(crawl_settings(sim, db_path, DOWNLOAD_DELAY=0.25, PMP_CATALOG_PAGE_LIMIT=400),
                                 monkeypatch, env=oauth_env(sim))
        assert result.exit_code == 0
        kinds = [r.kind for r in sim.requests if r.kind in PMP_KINDS]
        assert kinds.count("catalog") == 8 and kinds.count("page") == 7
        times = [r.t for r in sim.requests if r.kind in PMP_KINDS]
        assert max_requests_in_window(times) <= 4
        assert catalog_table(sqlite_url(db_path)) == expected_catalog(sim)


# --- the store, without a crawl ------------------------------------------------------------------------------

def test_catalog_commits_through_the_store(database_url: str) -> None:  # noqa: F811
    from pmp_scrapy.catalog import SweepEnd
    from pmp_scrapy.storage import Store
    from pmp_scrapy.storage.catalog import CatalogCommit

    store = Store(database_url)
    store.open()
    try:
        snap = store.start_snapshot("", 30)
        rows = catalog_rows([{"patch_id": 1, "cveids": "CVE-1"}, {"patch_id": 2, "cveids": ["CVE-2", "CVE-3"]}], 1)
        gap = {"error_type": "5xx_server_error", "error_message": "HTTP 503", "response_sample": None,
               "attempts": 3, "http_status": 503}
        end = SweepEnd(listing_complete=True, total_records=3, records_changed=False, skipped=0, full=True)
        assert store.commit_catalog_page(CatalogCommit("", snap, 1, rows=rows)).patches == 2
        partial = store.commit_catalog_page(CatalogCommit("", snap, 2, gap=gap, end=end))
        assert (partial.state, partial.open_gaps) == ("partial", 1)
        assert store.load_state("").open_gap_pages == [-2] and store.load_state("").catalog_state == "partial"
        # the retry heals the gap: complete; 3 patches counted, 3 read, so stale rows may go
        healed = store.commit_catalog_page(CatalogCommit("", snap, 2, rows=catalog_rows([{"patch_id": 3}], 2),
                                                         end=end))
        assert (healed.healed, healed.state, healed.open_gaps, healed.prune_skipped) == (True, "complete", 0, None)
        assert store.load_state("").open_gap_pages == []
        assert cve_table(database_url) == {("1", "CVE-1"), ("2", "CVE-2"), ("2", "CVE-3")}

        # a new snapshot that read fewer patches than the server counts keeps the old ones
        snap2 = store.start_snapshot("", 30)
        short = SweepEnd(listing_complete=True, total_records=3, records_changed=False, skipped=0, full=True)
        kept = store.commit_catalog_page(CatalogCommit("", snap2, 1, rows=catalog_rows(
            [{"patch_id": 1, "cveids": "CVE-9"}], 1), end=short))
        assert kept.state == "complete" and kept.pruned == 0 and "only 1 of the 3" in (kept.prune_skipped or "")
        assert set(catalog_table(database_url)) == {"1", "2", "3"}
        assert ("1", "CVE-9") in cve_table(database_url) and ("1", "CVE-1") not in cve_table(database_url)
        moved = SweepEnd(listing_complete=True, total_records=1, records_changed=True, skipped=0, full=True)
        assert "changed" in (store.commit_catalog_page(CatalogCommit("", snap2, 1, rows=catalog_rows(
            [{"patch_id": 1}], 1), end=moved)).prune_skipped or "")
        whole = SweepEnd(listing_complete=True, total_records=1, records_changed=False, skipped=0, full=True)
        pruned = store.commit_catalog_page(CatalogCommit("", snap2, 1, rows=catalog_rows([{"patch_id": 1}], 1),
                                                         end=whole))
        assert pruned.pruned == 2 and set(catalog_table(database_url)) == {"1"} and cve_table(database_url) == set()

        # a sweep that never learned the page count leaves the state alone; "unavailable" closes open gaps
        snap3 = store.start_snapshot("", 30)
        blind = SweepEnd(listing_complete=False, total_records=None, records_changed=False, skipped=0, full=True)
        assert store.commit_catalog_page(CatalogCommit("", snap3, 1, gap=gap, end=blind)).state is None
        assert store.load_state("").catalog_state is None and store.load_state("").open_gap_pages == [-1]
        gone = store.commit_catalog_page(CatalogCommit("", snap3, 0, unavailable=True))
        assert (gone.state, gone.closed_gaps) == ("unavailable", 1)
        state = store.load_state("")
        assert (state.catalog_state, state.open_gap_pages) == ("unavailable", [])
    finally:
        store.close()
