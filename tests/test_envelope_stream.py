"""A page far above the usual size (issue 12, finding 12): read without holding its parsed form
whole (``envelope_stream``), with the same envelope, rows and gaps as ``json.loads`` gives.

- ``load_big`` equals ``json.loads`` on ordinary and odd envelopes, and fails where it fails;
- a body past ``STREAM_ABOVE``: the same rows, the same ``PayloadError`` for the same faults;
- a real crawl of pages of 30 systems x 2,000 patches stores every mapping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import crawl_settings, mapping_table, oauth_env
from scrapy.crawler import CrawlerRunner

from pmp_scrapy.envelope import PayloadError, parse_envelope
from pmp_scrapy.envelope_stream import STREAM_ABOVE, LazySystems, load_big
from pmp_scrapy.rows import page_rows
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.spiders.dcapi_patches import DcapiPatchesSpider


def plain(value: Any) -> Any:
    """``value`` with every LazySystems decoded, for comparison with json.loads."""
    if isinstance(value, LazySystems):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


@pytest.mark.parametrize("text", [
    '{"metadata": {"page": 1}, "message_response": {"systemreport": [{"a": 1}, {"b": [1, {"c": null}]}], "x": 2}}',
    ' \n{ "message_response" : { "systemreport" : [ ] } , "response_code" : 200 } \n',
    '{"message_response": {"systemreport": [1, {"a": 1}]}}',  # not all objects: decoded whole
    '{"message_response": {"systemreport": {"a": 1}}}',
    '{"message_response": [1, 2], "systemreport": [{"a": 1}]}',
    '{"a": 1, "a": {"systemreport": [{"b": 2}]}}',  # duplicate keys: the later wins
    '[{"a": 1}]', '{}', '"text"',
    '{"message_response": {"systemreport": [{"s": "\\ud83d \\u00e9 \\"q\\""}]}}',
])
def test_load_big_gives_what_json_loads_gives(text: str) -> None:
    assert plain(load_big(text.encode())) == json.loads(text)
    assert plain(load_big(text.encode("utf-16"))) == json.loads(text.encode("utf-16"))


@pytest.mark.parametrize("text", [
    '{"a": 1,}', '{"a" 1}', '{"a": 1} trailing', '{"message_response": {"systemreport": [{"a": 1} {"b": 2}]}}',
    '{"message_response": {"systemreport": [{"a": 1},', '<html><body>busy</body></html>', '', '{1: 2}',
])
def test_load_big_fails_where_json_loads_fails(text: str) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(type(expected.value)):
        load_big(text.encode())


def big_body(systems: int = 30, patches: int = 1500, **metadata: Any) -> dict[str, Any]:
    rows = [{"resource_id": 7000 + s, "resource_name": f"HOST-{s}", "patches": [
        {"patch_id": 100 + p, "patchname": f"KB{900000 + p} cumulative update", "severity": "Important",
         "patch_status": "Missing" if p % 3 else "Installed", "bulletinid": f"MS24-{p % 97:03d}",
         "vendor_name": "Microsoft", "installed_time": None if p % 3 else "1717000000000"} for p in range(patches)]}
        for s in range(systems)]
    values = {"page": 1, "pageLimit": 30, "totalPages": 1, "totalRecords": systems, **metadata}
    return {"metadata": values, "response_code": 200, "message_type": "systemreport",
            "message_response": {"systemreport": rows}}


def test_a_big_body_gives_the_rows_a_small_one_would() -> None:
    envelope = big_body()
    body = json.dumps(envelope).encode()
    assert len(body) > STREAM_ABOVE
    streamed = parse_envelope(body, 1, 30)
    assert isinstance(streamed.systems, LazySystems) and len(streamed.systems) == 30
    expected = page_rows(envelope["message_response"]["systemreport"], 1)
    rows = page_rows(streamed.systems, 1)
    assert (rows.mappings, rows.systems) == (expected.mappings, expected.systems)
    assert (streamed.page, streamed.total_pages, streamed.total_records) == (1, 1, 30)


@pytest.mark.parametrize(("change", "error_type", "message"), [
    (lambda e: e["metadata"].update(page=2), "invalid_payload", "metadata.page is 2, not the page 1 asked for"),
    (lambda e: e["message_response"]["systemreport"].insert(1, 5), "invalid_payload", "systemreport[1] is not an object"),
    (lambda e: e["message_response"].update(systemreport={"rows": e["message_response"]["systemreport"]}),
     "invalid_payload",
     "message_response.systemreport is dict, not a list"),
])
def test_a_big_body_that_is_wrong_is_the_same_gap(change: Any, error_type: str, message: str) -> None:
    envelope = big_body()
    change(envelope)
    body = json.dumps(envelope).encode()
    assert len(body) > STREAM_ABOVE
    with pytest.raises(PayloadError) as info:
        parse_envelope(body, 1, 30)
    assert (info.value.error_type, str(info.value)) == (error_type, message)


def test_a_big_body_cut_short_or_too_deep_is_the_same_gap() -> None:
    body = json.dumps(big_body()).encode()
    with pytest.raises(PayloadError) as cut:
        parse_envelope(body[: len(body) - 100], 1, 30)
    assert cut.value.error_type == "json_parse_error" and str(cut.value).startswith("response is malformed JSON")
    deep = body.replace(b'"bulletinid": "MS24-002"', b'"bulletinid": ' + b"[" * 100_000 + b"]" * 100_000, 1)
    with pytest.raises(PayloadError) as nested:
        parse_envelope(deep, 1, 30)
    assert (nested.value.error_type, str(nested.value)) == (
        "invalid_payload", "the JSON is nested too deeply to read (RecursionError)")


@pytest_twisted.ensureDeferred
async def test_a_crawl_of_pages_far_above_the_usual_size_stores_every_mapping(
        db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three pages of 30 systems x 2,000 patches (~12 MB a body, read lazily) in a real crawl."""
    for name, value in oauth_env().items():
        monkeypatch.setenv(name, value)
    pages = 3
    bodies = {}
    for page in range(1, pages + 1):
        envelope = big_body(patches=2000, page=page, totalPages=pages, totalRecords=30 * pages)
        for system in envelope["message_response"]["systemreport"]:
            system["resource_id"] += 100 * page
        bodies[page] = envelope
    faults = [Fault(page=page, kind="slow", delay=0.0, body=json.dumps(body)) for page, body in bodies.items()]
    scenario = Scenario(dataset=DatasetSpec(managed_systems=30 * pages, no_patch_share=0.0), faults=faults)
    with Simulator(scenario=scenario) as sim:
        settings = crawl_settings(sim, db_path, PMP_BATCH_PAGES=0, PMP_CATALOG_PAGE_LIMIT=0)
        crawler = CrawlerRunner(settings).create_crawler(DcapiPatchesSpider)
        await crawler.crawl()
    stats = crawler.stats.get_stats()
    assert stats["pmp/exit_code"] == 0, stats.get("pmp/exit_message")
    table = mapping_table(db_path)
    assert len(table) == pages * 30 * 2000
    expected = {(str(s["resource_id"]), str(p["patch_id"])): (p["patchname"], p["severity"], p["patch_status"],
                                                              p["bulletinid"], p["vendor_name"], p["installed_time"])
                for envelope in bodies.values() for s in envelope["message_response"]["systemreport"]
                for p in s["patches"]}
    assert table == expected
