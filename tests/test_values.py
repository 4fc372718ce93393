"""Unit tests of the value guard (:mod:`pmp_scrapy.values_guard`), of rows built through it, of the
envelope checks against the request and of response samples: no HTTP, no database."""

from __future__ import annotations

import json
import logging
import secrets
from collections import Counter
from typing import Any

import pytest

from pmp_scrapy.envelope import MAX_TOTAL_PAGES, MAX_TOTAL_RECORDS, PayloadError, parse_envelope
from pmp_scrapy.masking import MASK, register_secret
from pmp_scrapy.redaction import SAMPLE_LIMIT, response_sample
from pmp_scrapy.rows import PageRows, page_rows
from pmp_scrapy.values_guard import MAX_TEXT_CHARS, REPLACEMENT, describe_value, id_text, one_line, storable_text


# --- storable_text: the one guard -----------------------------------------------------------------------
def test_ordinary_text_passes_untouched_and_uncounted() -> None:
    repairs: Counter[str] = Counter()
    for text in ("KB5031356", "PC-Zürich", "サーバー-74", "emoji \U0001f600 kept", ""):
        assert storable_text(text, repairs) is text
    assert not repairs


@pytest.mark.parametrize(("text", "stored", "kinds"), [
    ("KB \ud83d x", f"KB {REPLACEMENT} x", {"surrogate": 1}),
    ("a\x00b\x00", f"a{REPLACEMENT}b{REPLACEMENT}", {"nul": 1}),
    ("Zürich\x00\udc80", f"Zürich{REPLACEMENT}{REPLACEMENT}", {"nul": 1, "surrogate": 1}),
    ("x" * (MAX_TEXT_CHARS + 1), "x" * MAX_TEXT_CHARS, {"truncated": 1}),
    ("\x00" + "y" * 5_000_000, REPLACEMENT + "y" * (MAX_TEXT_CHARS - 1), {"nul": 1, "truncated": 1}),
])
def test_unstorable_text_is_repaired_and_counted_once_per_kind(text: str, stored: str, kinds: dict[str, int]) -> None:
    repairs: Counter[str] = Counter()
    assert storable_text(text, repairs) == stored
    assert repairs == Counter(kinds)
    stored.encode("utf-8")  # what the drivers do: no UnicodeEncodeError


def test_one_line_joins_lines_and_bounds_length() -> None:
    assert one_line("a\n  b\r\n\tc\x00") == f"a b c{REPLACEMENT}"
    assert len(one_line("z" * 10_000)) == 300


@pytest.mark.parametrize(("value", "shown"), [
    (float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity"), (True, "true"),
    ({"rid": 5}, "an object"), ([1, 2], "an array"), (None, "null"), (2 ** 70, "1180591620717411303424"),
    (10 ** 100, "an integer of 101 digits"), ("a\x00\ud83d", '"a\\u0000\\ud83d"'), ("q" * 100, '"' + "q" * 60 + '"…'),
])
def test_describe_value_is_short_one_line_and_storable(value: Any, shown: str) -> None:
    assert describe_value(value) == shown


# --- ids ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "text"), [
    (5, "5"), (5.0, "5"), ("5", "5"), ("KB 5", "KB 5"), (2 ** 70, "1180591620717411303424"), (1.5, "1.5"),
    (-3, "-3"), ("10\ud83d", f"10{REPLACEMENT}"), ("10\x00", f"10{REPLACEMENT}"),
])
def test_finite_scalar_ids_become_text(value: Any, text: str) -> None:
    assert id_text(value) == (text, "")


@pytest.mark.parametrize(("value", "reason"), [
    (None, "missing"), ("", "empty"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    (float("-inf"), "-Infinity"), (True, "true"), (False, "false"), ({}, "an object"), ([], "an array"),
    ({"rid": 5}, "an object"), ([1, 2], "an array"), ("x" * (MAX_TEXT_CHARS + 1), f"longer than {MAX_TEXT_CHARS} characters"),
])
def test_ids_that_are_not_finite_scalars_are_refused_with_a_reason(value: Any, reason: str) -> None:
    assert id_text(value) == (None, reason)


# --- rows built through the guard ------------------------------------------------------------------------
def patch(patch_id: Any, **fields: Any) -> dict[str, Any]:
    return {"patch_id": patch_id, "patchname": "KB1", "severity": "Critical", "patch_status": "Missing",
            "bulletinid": "MS1", "vendor_name": "Microsoft", "installed_time": None, **fields}


def test_rows_skip_non_finite_and_non_scalar_ids_with_warnings(caplog: pytest.LogCaptureFixture) -> None:
    systems = [
        {"resource_id": float("nan"), "resource_name": "nan-host", "patches": [patch(1)]},
        {"resource_id": {"rid": 5}, "resource_name": "object-host", "patches": [patch(1)]},
        {"resource_id": [1, 2], "resource_name": "array-host", "patches": [patch(1)]},
        {"resource_id": 7, "resource_name": "ok", "patches": [
            patch(float("inf")), patch(float("-inf")), patch(True), patch([1]), patch({}), patch(2)]},
    ]
    with caplog.at_level(logging.WARNING, logger="pmp_scrapy.rows"):
        rows = page_rows(systems, 3)
    assert [r[:2] for r in rows.mappings] == [("7", "2")]
    assert (rows.skipped_systems, rows.skipped_patches) == (3, 5)
    messages = [r.getMessage() for r in caplog.records]
    assert "page 3: a system whose resource_id is NaN ('nan-host') was skipped" in messages
    assert any("patch_id is Infinity" in m for m in messages) and any("patch_id is true" in m for m in messages)
    assert {r.event_type for r in caplog.records} == {"system_skipped", "patch_skipped"}  # type: ignore[attr-defined]


def test_rows_repair_every_field_and_count_the_repairs() -> None:
    systems = [{"resource_id": "9\ud83d", "resource_name": "host\x00", "patches": [
        patch("p\x00", patchname="KB \ud83d", severity="Crit\x00", patch_status="M\ud800", bulletinid="MS\x00",
              vendor_name="V\udfff", installed_time="1\x00"),
        patch(2, patchname="K" * 5_000_000, installed_time=2 ** 70),
    ]}]
    rows = page_rows(systems, 1)
    r = REPLACEMENT
    assert rows.mappings == [
        (f"9{r}", f"p{r}", f"KB {r}", f"Crit{r}", f"M{r}", f"MS{r}", f"V{r}", f"1{r}"),
        (f"9{r}", "2", "K" * MAX_TEXT_CHARS, "Critical", "Missing", "MS1", "Microsoft", str(2 ** 70)),
    ]
    assert rows.systems[0]["resource_name"] == f"host{r}"
    assert rows.repaired == Counter({"nul": 5, "surrogate": 4, "truncated": 1})


def test_a_value_that_cannot_be_read_makes_the_page_a_gap_naming_the_field() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    systems = [{"resource_id": 1, "resource_name": "a", "patches": [patch(1)]},
               {"resource_id": 2, "resource_name": "b", "patches": [patch(1), patch(2, bulletinid=deep)]}]
    with pytest.raises(PayloadError) as info:
        page_rows(systems, 4)
    assert info.value.error_type == "invalid_payload"
    assert str(info.value).startswith("systemreport[1].patches[1].bulletinid could not be read: RecursionError")
    assert "\n" not in str(info.value)


def test_page_rows_repr_is_short_whatever_the_page_size() -> None:
    rows = page_rows([{"resource_id": k, "resource_name": f"h{k}", "patches": [patch(p) for p in range(500)]}
                      for k in range(30)], 1)
    assert repr(rows) == "PageRows(30 systems, 15000 mappings, 0 skipped)"
    assert repr(PageRows()) == "PageRows(0 systems, 0 mappings, 0 skipped)"


# --- the envelope, checked against the request ---------------------------------------------------------------
def body(**metadata: Any) -> bytes:
    values: dict[str, Any] = {"page": 2, "pageLimit": 30, "totalPages": 4, "totalRecords": 120}
    values.update(metadata)
    values = {k: v for k, v in values.items() if v is not ...}
    return json.dumps({"metadata": values, "response_code": 200,
                       "message_response": {"systemreport": [{"resource_id": 1}]}}).encode()


@pytest.mark.parametrize(("metadata", "message"), [
    ({"page": 3}, "metadata.page is 3, not the page 2 asked for"),
    ({"page": "two"}, 'metadata.page is "two", not a count'),
    ({"totalPages": float("inf")}, "metadata.totalPages is Infinity, not a count"),
    ({"totalPages": float("-inf")}, "metadata.totalPages is -Infinity, not a count"),
    ({"totalPages": float("nan")}, "metadata.totalPages is NaN, not a count"),
    ({"totalPages": True}, "metadata.totalPages is true, not a count"),
    ({"totalPages": 4.5}, "metadata.totalPages is 4.5, not a count"),
    ({"totalPages": {}}, "metadata.totalPages is an object, not a count"),
    ({"totalPages": -1}, "metadata.totalPages is negative (-1)"),
    ({"totalPages": 10 ** 9, "totalRecords": 3 * 10 ** 10},
     f"metadata.totalPages is 1000000000, above the sane maximum of {MAX_TOTAL_PAGES}"),
    ({"totalRecords": 2 ** 70},
     f"metadata.totalRecords is 1180591620717411303424, above the sane maximum of {MAX_TOTAL_RECORDS}"),
    ({"totalRecords": "1" * 30}, 'metadata.totalRecords is "111111111111111111111111111111", not a count'),
    ({"totalPages": 5}, "metadata.totalPages is 5, but 120 records at 30 a page make 4"),
    ({"totalPages": 3}, "metadata.totalPages is 3, but 120 records at 30 a page make 4"),
    ({"totalPages": 2, "totalRecords": 0}, "metadata.totalPages is 2 for 0 records"),
    ({"pageLimit": 0}, "metadata.pageLimit is 0"),
    ({"totalPages": ...}, "metadata.totalPages is null, not a count"),
])
def test_envelope_violations_are_invalid_payload_naming_the_field(metadata: dict[str, Any], message: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_envelope(body(**metadata), 2, 30)
    assert (info.value.error_type, str(info.value)) == ("invalid_payload", message)


@pytest.mark.parametrize(("metadata", "page", "limit", "counts"), [
    ({}, 2, 30, (2, 4, 120)),
    ({"totalPages": "4", "totalRecords": "120", "page": "2"}, 2, 30, (2, 4, 120)),  # counts as strings
    ({"totalPages": 0, "totalRecords": 0, "page": 1}, 1, 30, (1, 0, 0)),  # an empty tenant
    ({"totalPages": 1, "totalRecords": 0, "page": 1}, 1, 30, (1, 1, 0)),
    ({"pageLimit": 1000, "totalPages": 3, "totalRecords": 2500}, 2, 5000, (2, 3, 2500)),  # the server capped it
    ({"pageLimit": ..., "page": ..., "totalPages": 9}, 2, None, (2, 9, 120)),  # nothing to compare with
    ({"page": ...}, 2, 30, (2, 4, 120)),
])
def test_consistent_envelopes_are_accepted(metadata: dict[str, Any], page: int, limit: int | None,
                                           counts: tuple[int, int, int]) -> None:
    envelope = parse_envelope(body(**metadata), page, limit)
    assert (envelope.page, envelope.total_pages, envelope.total_records) == counts


def test_parse_envelope_without_the_request_checks_counts_only() -> None:
    envelope = parse_envelope(body(page=7, pageLimit=..., totalPages=5))
    assert (envelope.page, envelope.total_pages) == (7, 5)
    with pytest.raises(PayloadError, match="above the sane maximum"):
        parse_envelope(body(totalPages=MAX_TOTAL_PAGES + 1, pageLimit=...))


@pytest.mark.parametrize(("raw", "error_type", "message"), [
    (b"[" * 100_000 + b"]" * 100_000, "invalid_payload", "the JSON is nested too deeply to read (RecursionError)"),
    (b'{"metadata": {"totalPages": ' + b"9" * 5000 + b"}}", "invalid_payload", "the JSON holds a value that cannot be read"),
    (b'{"a": "\x00"}', "json_parse_error", "response is malformed JSON, not JSON (JSONDecodeError"),
    (b'{"response_code": ' + b"[" * 500 + b"]" * 500 + b"}", "invalid_payload", "response_code is an array"),
])
def test_bodies_python_cannot_read_are_payload_errors(raw: bytes, error_type: str, message: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_envelope(raw, 1, 30)
    assert info.value.error_type == error_type and str(info.value).startswith(message)


# --- response samples ----------------------------------------------------------------------------------------
def test_sample_masks_a_registered_secret_by_value_in_any_shape() -> None:
    token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
    register_secret(token)
    raw = json.dumps({"error": f"bad token {token}", "echo": {"authorization": token}}).encode()
    sample = response_sample(raw)
    assert token not in sample and token[:16] not in sample and sample.count(MASK) == 2


def test_sample_never_shows_part_of_a_secret_cut_at_the_head() -> None:
    token = "tok-" + secrets.token_hex(48)  # 100 characters: the 4 KB head ends 56 into one
    register_secret(token)
    raw = " ".join([token] * 200).encode()  # masking shrinks that head far below the limit
    sample = response_sample(raw)
    assert token[:8] not in sample
    assert set(sample.split()[:-1]) == {MASK}  # the last one is cut at the limit
    assert len(sample.encode()) <= SAMPLE_LIMIT


def test_sample_is_storable() -> None:
    sample = response_sample(b'{"name": "a\x00b", "x": "\\ud83d"}' + b"\xff\xfe")
    sample.encode("utf-8")
    assert "\x00" not in sample and REPLACEMENT in sample
    text_sample = response_sample("lone \udc80 surrogate in a text body")
    assert text_sample == f"lone {REPLACEMENT} surrogate in a text body"
