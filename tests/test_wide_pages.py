"""A page far above the usual size is handled without holding its parsed form twice (issue 12,
"memory bounded by bytes"):

- a UTF-8 body past ``STREAM_ABOVE`` is read on its bytes, never decoded whole, and gives what
  ``json.loads`` gives wherever a value meets the edge of a decoding window;
- its rows are packed as they are read, in parts of whole systems (``page_rows(part_rows=...)``),
  a system listed twice keeping the page whole; a page given to a batch whole is split the same
  way (``page_parts``), and committing the parts stores exactly what committing the page does,
  retirements and history included;
- after a big answer the spider asks for one page at a time, and returns to its window after an
  answer of the usual size;
- a real crawl of wide pages: every mapping stored, never two page requests in flight, each wide
  page committed at once with a checkpoint that claims only committed pages.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import component_crawler, crawl_settings, mapping_table, oauth_env
from scrapy import Request, signals
from scrapy.crawler import CrawlerRunner
from test_envelope_stream import plain

from pmp_scrapy import envelope_stream
from pmp_scrapy import signals as pmp_signals
from pmp_scrapy.envelope import parse_envelope
from pmp_scrapy.envelope_stream import STREAM_ABOVE, LazySystems, load_big
from pmp_scrapy.plan import PlanDecision, RunState, make_plan
from pmp_scrapy.rows import PageRows, page_rows, unpack_part
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.spiders.dcapi_patches import DcapiPatchesSpider
from pmp_scrapy.storage import Batch, Store
from pmp_scrapy.storage import batch as batch_module
from pmp_scrapy.storage.batch import PART_ROWS, ordered_unique, page_parts


def wide_systems(first_id: int, systems: int, patches: int, *, page: int = 1) -> list[dict[str, Any]]:
    """``systems`` systems of ``patches`` patches each, ids from ``first_id``; some text is not ASCII."""
    return [{"resource_id": first_id + s, "resource_name": f"HÔTE-{page}-{s}", "patches": [
        {"patch_id": 100_000 + p, "patchname": f"KB{5_000_000 + p} mise à jour cumulative",
         "severity": "Important", "patch_status": "Missing" if p % 3 else "Installed",
         "bulletinid": f"MS24-{p % 97:03d}", "vendor_name": "Microsoft",
         "installed_time": None if p % 3 else "1717000000000"} for p in range(patches)]}
        for s in range(systems)]


def envelope(systems: list[dict[str, Any]], page: int = 1, pages: int = 1, per_page: int = 30) -> dict[str, Any]:
    return {"metadata": {"page": page, "pageLimit": per_page, "totalPages": pages, "totalRecords": pages * per_page},
            "response_code": 200, "message_type": "systemreport", "message_response": {"systemreport": systems}}


# --- reading the body on its bytes -------------------------------------------------------------------------

@pytest.fixture
def never_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a body whole (decoding it to one str) fails the test."""
    def refuse(body: bytes) -> Any:
        raise AssertionError("the body was decoded whole")
    monkeypatch.setattr(envelope_stream, "_load_text", refuse)


@pytest.mark.parametrize("window", [1, 2, 3, 5, 8, 13, 64])
@pytest.mark.parametrize("ascii_only", [True, False])
def test_a_utf8_body_is_read_on_its_bytes_whatever_meets_a_window_edge(
        window: int, ascii_only: bool, never_whole: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(envelope_stream, "_FIRST_WINDOW", window)
    doc = {"metadata": {"page": 12345678901234567890, "totalRecords": 1.5e300, "x": [True, None, -0.25, "\u00e9"]},
           "message_response": {"systemreport": [
               {"resource_id": 987654321, "n": "caf\u00e9 \u2603 \ud83d\ude00 \"q\" \\ \u0000", "p": [1, {"a": []}]},
               {"resource_id": "7", "deep": [[[[{"k": 12345}]]]], "u": "\udc80"}],
               "after": 3141592653589793},
           "tail": "z" * 3}
    text = json.dumps(doc, ensure_ascii=ascii_only)
    for body in (text.encode("utf-8", "surrogatepass"), text.replace(", ", ",\n  ").encode("utf-8", "surrogatepass")):
        loaded = load_big(body)
        assert isinstance(loaded["message_response"]["systemreport"], LazySystems)
        assert plain(loaded) == json.loads(body)


def test_a_big_page_is_read_on_its_bytes_and_gives_the_rows_json_loads_gives(never_whole: None) -> None:
    body = json.dumps(envelope(wide_systems(1, 30, 800)), ensure_ascii=False).encode()
    assert len(body) > STREAM_ABOVE
    read = parse_envelope(body, 1, 30)
    assert isinstance(read.systems, LazySystems)
    expected = page_rows(json.loads(body)["message_response"]["systemreport"], 1)
    rows = page_rows(read.systems, 1)
    assert (rows.mappings, rows.systems) == (expected.mappings, expected.systems)


@pytest.mark.parametrize("body", [
    b'\xef\xbb\xbf{"message_response": {"systemreport": [{"a": 1}]}}',  # a byte-order mark
    '{"message_response": {"systemreport": [{"a": 1}]}}'.encode("utf-16"),
    b'{"message_response": {"systemreport": [1, {"a": 1}]}}',  # not objects only: decoded whole
    b'{"message_response": {"systemreport": [{"a": 1}]}} {}',
    b'{"message_response": {"systemreport": [{"a": "\xff"}]}}',  # not UTF-8
])
def test_what_the_bytes_reader_cannot_read_is_read_whole_as_json_loads_reads_it(body: bytes) -> None:
    try:
        expected: Any = json.loads(body)
    except ValueError as exc:
        with pytest.raises(type(exc)):
            load_big(body)
    else:
        assert plain(load_big(body)) == expected


# --- rows in parts --------------------------------------------------------------------------------------

def unpacked(rows: PageRows) -> tuple[list[Any], list[dict[str, Any]]]:
    """All the rows and systems of ``rows``, its packed parts first."""
    mappings: list[Any] = []
    systems: list[dict[str, Any]] = []
    for part in rows.parts:
        part_rows, part_systems = unpack_part(part)
        mappings += part_rows
        systems += part_systems
    assert isinstance(rows.mappings, list)
    return mappings + rows.mappings, systems + rows.systems


def test_a_wide_page_is_packed_in_parts_of_whole_systems_as_it_is_read() -> None:
    systems = wide_systems(1, 7, 10) + [{"resource_id": None, "patches": []}] + wide_systems(50, 2, 0)
    whole = page_rows(systems, 3)
    for system in whole.systems:
        system["total_records"] = 90
    rows = page_rows(systems, 3, part_rows=25, total_records=90)
    assert len(rows.parts) == 2  # 30 rows, 30 rows, then 10 rows and two systems without patches
    assert (rows.part_mappings, rows.part_systems, len(rows.mappings)) == (60, 6, 10)
    assert (rows.mapping_count, rows.system_count) == (len(whole.mappings), len(whole.systems))
    assert unpacked(rows) == (whole.mappings, whole.systems)
    for part in rows.parts:  # each part holds its systems whole
        part_rows, part_systems = unpack_part(part)
        assert {row[0] for row in part_rows} == {s["resource_id"] for s in part_systems}
    assert (rows.skipped_systems, rows.empty_systems) == (whole.skipped_systems, whole.empty_systems) == (1, 2)
    rows.release()
    assert (len(rows.mappings), rows.parts, rows.mapping_count) == (70, [], 70)


def test_a_system_listed_again_after_its_part_was_packed_keeps_the_page_whole() -> None:
    systems = wide_systems(1, 4, 10)
    again = {**systems[0], "patches": systems[0]["patches"][:3]}
    rows = page_rows([*systems, again], 1, part_rows=15, total_records=30)
    whole = page_rows([*systems, again], 1)
    assert rows.parts == [] and (rows.mappings, [s["resource_id"] for s in rows.systems]) == (
        whole.mappings, [s["resource_id"] for s in whole.systems])


def test_a_page_given_whole_is_split_into_parts_of_whole_systems_in_key_order() -> None:
    again = wide_systems(5, 1, 2)[0]  # system 5 listed twice: its two lists are united, the later winning
    again["patches"][0]["patch_status"] = "Superseded"
    page = page_rows([*wide_systems(1, 9, 4)[::-1], again], 1)
    parts = list(page_parts(page.mappings, page.systems, 8))
    assert [len(rows) for rows, _ in parts] == [8, 8, 8, 8, 4]  # system 5: 4 rows
    assert ("5", "100000") in {row[:2] for row in parts[2][0] if row[4] == "Superseded"}
    ids = [[s["resource_id"] for s in systems] for _, systems in parts]
    assert [i for group in ids for i in group] == sorted([str(n) for n in range(1, 10)] + ["5"])
    for rows, systems in parts:
        assert {row[0] for row in rows} == {s["resource_id"] for s in systems}
    assert [row for rows, _ in parts for row in ordered_unique(rows)] == list(ordered_unique(page.mappings))


def table_contents(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted: times only as set or not, generated ids left out."""
    contents: dict[str, list[tuple[Any, ...]]] = {}
    with sqlite3.connect(db) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = conn.execute(f"PRAGMA table_info({table})").fetchall()
            keep = [(name, kind.upper() == "TIMESTAMP") for _, name, kind, _, _, pk in columns
                    if not (pk and kind.upper() == "INTEGER" and name != "snapshot_id")]
            rows = conn.execute(f"SELECT {', '.join(name for name, _ in keep)} FROM {table}").fetchall()
            contents[table] = sorted((tuple(value is not None if is_time else value
                                            for value, (_, is_time) in zip(row, keep, strict=True)) for row in rows),
                                     key=repr)
    return contents


def sweep_wide_pages(db: Path, pages: list[list[dict[str, Any]]]) -> None:
    """One snapshot per entry of ``pages`` (the systems of its one page), committed as the
    pipeline commits a page: its systems marked with the totalRecords of the answer."""
    store = Store(f"sqlite:///{db}", busy_timeout=5)
    store.open()
    try:
        for systems in pages:
            snapshot = store.start_snapshot("", 30)
            rows = page_rows(systems, 1)
            for system in rows.systems:
                system["total_records"] = len(systems)
            batch = Batch(snapshot_id=snapshot, customer="", last_page=1, total_pages=1,
                          total_records=len(systems), denominator=len(systems))
            assert isinstance(rows.mappings, list)
            batch.add_page(rows.mappings, rows.systems)
            batch.page_totals[1] = len(systems)
            store.commit_batch(batch)
    finally:
        store.close()


def test_committing_a_wide_page_in_parts_stores_what_committing_it_whole_stores(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = wide_systems(1, 12, 30)
    second = wide_systems(1, 12, 30)
    second[2]["patches"] = second[2]["patches"][5:]  # retires 5 rows of system 3
    second[4]["patches"][0]["patch_status"] = "Installed"  # a status change
    second[7]["patches"] = []  # a system without patches: every row of it retired
    second.append({**second[9], "patches": second[9]["patches"][:2]})  # system 10 listed twice
    sweep_wide_pages(tmp_path / "whole.db", [first, second])
    monkeypatch.setattr(batch_module, "PART_ROWS", 40)  # parts of two systems
    sweep_wide_pages(tmp_path / "parts.db", [first, second])
    whole, parts = table_contents(tmp_path / "whole.db"), table_contents(tmp_path / "parts.db")
    assert whole["patch_system_mapping"] and whole["dcapi_mapping_events"]
    assert parts == whole


# --- asking for pages by size --------------------------------------------------------------------------

def test_a_plan_expects_a_pages_mappings_from_the_latest_checkpoint_at_its_own_page_size() -> None:
    """What lets a sweep of wide pages ask for one page at a time before any answer came back."""
    previous = RunState(snapshot_id=3, snapshot_state="complete", total_pages=4, total_records=120, page_limit=30,
                        mappings_per_system=1_000.0)
    assert make_plan(PlanDecision("the previous sweep is complete", None, 1, ()), previous, 4, 0, 30
                     ).expected_page_rows == 30_000
    assert make_plan(PlanDecision("the previous sweep is complete", None, 1, ()), previous, 4, 0, 10
                     ).expected_page_rows == 10_000  # a new snapshot's own page size
    running = RunState(snapshot_id=3, snapshot_state="running", last_page=2, total_pages=4, page_limit=30,
                       mappings_per_system=50.0)
    assert make_plan(PlanDecision(None, None, 3, ()), running, 3, 0, 100).expected_page_rows == 1_500  # its own 30
    assert make_plan(PlanDecision(None, None, 1, ()), RunState(), 1, 0, 30).expected_page_rows is None


def test_a_sweep_expecting_wide_pages_asks_for_one_page_at_a_time_from_the_start() -> None:
    spider = DcapiPatchesSpider.from_crawler(component_crawler())
    usual = spider.window
    spider._admit_by_plan(PART_ROWS)  # pages of the usual size
    assert spider.window == usual
    spider._admit_by_plan(PART_ROWS + 1)
    assert spider.window == 1
    spider._admit_by_size(1, 350_000)  # an answer of the usual size after all
    assert spider.window == usual


def test_the_spider_asks_for_one_page_at_a_time_after_a_big_answer_until_a_usual_one() -> None:
    crawler = component_crawler()
    spider = DcapiPatchesSpider.from_crawler(crawler)
    usual = spider.window
    assert usual > 1
    spider._admit_by_size(1, STREAM_ABOVE + 1)
    spider._admit_by_size(2, STREAM_ABOVE + 1)
    assert spider.window == 1
    spider._admit_by_size(3, 350_000)
    assert spider.window == usual
    assert crawler.stats.get_value("pmp/pages_one_at_a_time") == 2


def test_a_big_content_length_holds_back_further_pages_before_the_body_is_in() -> None:
    spider = DcapiPatchesSpider.from_crawler(component_crawler())
    usual = spider.window
    spider._headers_received({}, STREAM_ABOVE + 1, Request("http://pmp/token", meta={}))  # not a page
    spider._headers_received({}, 350_000, Request("http://pmp/p", meta={"pmp_page": 1}))
    assert spider.window == usual
    spider._headers_received({}, STREAM_ABOVE + 1, Request("http://pmp/p", meta={"pmp_page": 2}))
    assert spider.window == 1
    spider._admit_by_size(2, 350_000)  # the answer decides: of the usual size after all
    assert spider.window == usual


def latest_checkpoint_and_pages(db: Path) -> tuple[int, set[int]]:
    """The latest snapshot's checkpoint page and the pages it has stored systems of, read apart
    from the crawl's own connection (what another reader sees once a commit has landed)."""
    with sqlite3.connect(db) as conn:
        snapshot, last = conn.execute("SELECT snapshot_id, last_page FROM dcapi_extraction_checkpoints "
                                      "ORDER BY snapshot_id DESC LIMIT 1").fetchone()
        pages = {int(p) for (p,) in conn.execute("SELECT DISTINCT last_seen_page FROM dcapi_systems "
                                                 "WHERE last_seen_snapshot = ?", (snapshot,))}
    return int(last), pages


class InFlight:
    """The page requests in the downloader: for each page, how many others were in it when its
    request entered, and whether a page had been answered by then."""

    def __init__(self, crawler: Any) -> None:
        self.pages: list[int] = []
        self.others: dict[int, tuple[int, bool]] = {}
        self.answers = 0
        crawler.signals.connect(self.sent, signal=signals.request_reached_downloader, weak=False)
        crawler.signals.connect(self.answered, signal=signals.response_received, weak=False)

    def sent(self, request: Any, **_: Any) -> None:
        if "pmp_page" in request.meta:
            self.others[request.meta["pmp_page"]] = (len(self.pages), self.answers > 0)
            self.pages.append(request.meta["pmp_page"])

    def answered(self, response: Any, request: Any, **_: Any) -> None:
        if request.meta.get("pmp_page") in self.pages:
            self.pages.remove(request.meta["pmp_page"])
            self.answers += 1


@pytest_twisted.ensureDeferred
async def test_a_crawl_of_wide_pages_stores_every_mapping_one_page_at_a_time(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four pages of 30 systems x 1,000 patches (~6 MB a body, 30,000 rows: two parts each),
    swept twice: the second sweep asks for pages on the first one's page count before any answer."""
    for name, value in oauth_env().items():
        monkeypatch.setenv(name, value)
    pages = 4
    bodies = {page: envelope(wide_systems(1_000 * page, 30, 1_000, page=page), page, pages) for page in range(1, pages + 1)}
    faults = [Fault(page=page, kind="slow", delay=0.0, body=json.dumps(body, ensure_ascii=False))
              for page, body in bodies.items()]
    assert all(len((fault.body or "").encode()) > STREAM_ABOVE for fault in faults)
    expected = {(str(s["resource_id"]), str(p["patch_id"])): (p["patchname"], p["severity"], p["patch_status"],
                                                              p["bulletinid"], p["vendor_name"], p["installed_time"])
                for body in bodies.values() for s in body["message_response"]["systemreport"] for p in s["patches"]}
    scenario = Scenario(dataset=DatasetSpec(managed_systems=30 * pages, no_patch_share=0.0), faults=faults)
    with Simulator(scenario=scenario) as sim:
        for sweep in (1, 2):
            seen: list[tuple[int, set[int]]] = []
            settings = crawl_settings(sim, db_path, PMP_BATCH_PAGES=0, PMP_CATALOG_PAGE_LIMIT=0,
                                      PMP_CHECKPOINT_EVERY=10, PMP_REFRESH_INTERVAL=0.001)
            crawler = CrawlerRunner(settings).create_crawler(DcapiPatchesSpider)
            flight = InFlight(crawler)
            crawler.signals.connect(lambda **_: seen.append(latest_checkpoint_and_pages(db_path)),  # noqa: B023
                                    signal=pmp_signals.batch_committed, weak=False)
            await crawler.crawl()
            stats = crawler.stats.get_stats()
            assert stats["pmp/exit_code"] == 0, stats.get("pmp/exit_message")
            assert mapping_table(db_path) == expected
            assert stats["pmp/pages_one_at_a_time"] == pages
            # Each wide page commits at once (the last one because the run's pages are all in).
            assert stats["pmp/batches_ended_by_wide_page"] == pages - 1
            # Answers may come back out of order in the second sweep: the checkpoint then waits.
            lasts = [last for last, _ in seen]
            assert lasts == sorted(lasts) and lasts[-1] == pages and len(lasts) == pages
            for last, stored in seen:
                assert set(range(1, last + 1)) <= stored, (last, sorted(stored))
            # Page 1 alone first, then each answer asks for one more: on the first sweep once page
            # 1's answer is seen to be big, on the second from the start (the first sweep's
            # checkpoint says how many mappings a page holds), though its pages are asked for on
            # the first sweep's page count before any answer.
            assert flight.others == {page: (0, page > 1) for page in range(1, pages + 1)}
            assert lasts == list(range(1, pages + 1))
            if sweep == 1:
                assert stats["pmp/mappings_upserted"] == pages * 30 * 1_000

