"""Hostile catalog bodies (``/dcapi/threats/patches``), served by the simulator as real crawls: each
repairs or skips values, makes its catalog page an ``invalid_payload`` gap (``page_num = -N``)
naming the cause, or (a server that says it has no catalog, however it says it) takes the
unavailable path.

The invariant checked for each body: the crawl exits 0 or 2 (never 1) with no traceback in the
log; the run's mapping data is exactly the simulator's, whatever the catalog did; the catalog
holds exactly the simulator's patches for good pages and the documented repair for a repaired
page; a gap's message and an "unavailable" reason are one storable line. The NUL, surrogate,
over-long key and hostile-error bodies also run on PostgreSQL (skipped when 127.0.0.1:5432 does
not answer).
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import crawl_settings, expected_table, oauth_env, run_crawl
from output_checks import assert_clean_outputs, console_has_no_secret  # noqa: F401 (fixture)
from test_catalog import catalog_states, catalog_table, cve_table, expected_catalog, expected_cves
from test_storage import postgres_url, url_mapping_table, url_rows  # noqa: F401 (fixture)

from pmp_scrapy.catalog import KEY_CHARS, catalog_rows, parse_catalog, unavailable_reason
from pmp_scrapy.envelope import MAX_TOTAL_RECORDS, PayloadError
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.values_guard import MAX_TEXT_CHARS, REPLACEMENT

SPEC = DatasetSpec(managed_systems=60, no_patch_share=0.0)  # 2 system-report pages of 30
LIMIT, HOSTILE = 1000, 2  # the catalog: 1000 patches a page, page 2 of 3 broken
RUN = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 10, "PMP_CATALOG_PAGE_LIMIT": LIMIT, "LOG_LEVEL": "INFO"}
# The entry's text fields (the simulator spells the name either way).
TEXTS = ("patch_name", "patchname", "bulletinid", "severity", "vendor_name", "kb_number")

Catalog = dict[str, tuple[Any, ...]]
Cves = set[tuple[str, str]]
Envelope = dict[str, Any]


def genuine_page(sim: Simulator, page: int = HOSTILE) -> Envelope:
    """The simulator's own catalog answer for ``page``, as a dict to break."""
    entries = sim.catalog()
    pages = -(-len(entries) // LIMIT)
    return {"metadata": {"page": page, "pageLimit": LIMIT, "totalPages": pages, "totalRecords": len(entries)},
            "response_code": 200, "message_type": "patches",
            "message_response": {"patches": entries[(page - 1) * LIMIT: page * LIMIT]}}


def _entries(envelope: Envelope) -> list[dict[str, Any]]:
    return envelope["message_response"]["patches"]


def page_ids(envelope: Envelope) -> set[str]:
    return {str(e["patch_id"]) for e in _entries(envelope)}


def _dumps(envelope: Envelope) -> str:
    return json.dumps(envelope)  # ASCII, \\u escapes: lone surrogates and NUL stay valid JSON


@dataclass
class Hostile:
    """One hostile catalog body: ``body(envelope)`` breaks the genuine page 2 and returns the
    body text; ``stored(catalog, cves, envelope)`` is what must then be in the catalog tables
    (None: the page is a gap whose message contains ``cause``). ``every_page``: the body
    answers every catalog page; ``unavailable``: the answer means "no catalog"."""

    name: str
    body: Callable[[Envelope], str]
    cause: str | None = None
    stored: Callable[[Catalog, Cves, Envelope], tuple[Catalog, Cves]] | None = None
    repaired: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    every_page: bool = False
    unavailable: bool = False


def _in_every_text(mark: str) -> Callable[[Envelope], str]:
    """``mark`` appended to every text of page 2: the patch id, each text field, each CVE id."""
    def body(envelope: Envelope) -> str:
        for entry in _entries(envelope):
            cves = entry["cveids"]
            cves = [c for c in cves.replace(",", " ").split() if c] if isinstance(cves, str) else cves
            entry["cveids"] = [f"{c}{mark}" for c in cves]
            entry["patch_id"] = f"{entry['patch_id']}{mark}"
            for name in TEXTS:
                if entry.get(name) is not None:
                    entry[name] = f"{entry[name]}{mark}"
        return _dumps(envelope)
    return body


def _repaired_everywhere(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    """Page 2's patches with U+FFFD appended to the id, every text field and every CVE id."""
    ids = page_ids(envelope)
    texts = range(5)  # patch_name, bulletinid, severity, vendor_name, kb_number (CATALOG_QUERY order)
    stored = {pid: row for pid, row in catalog.items() if pid not in ids}
    for pid in ids:
        stored[pid + REPLACEMENT] = tuple(f"{v}{REPLACEMENT}" if k in texts and v is not None else v
                                          for k, v in enumerate(catalog[pid]))
    pairs = {(p, c) for p, c in cves if p not in ids} | {(p + REPLACEMENT, c + REPLACEMENT) for p, c in cves
                                                          if p in ids}
    return stored, pairs


def _huge_name(envelope: Envelope) -> str:
    _entries(envelope)[0]["patch_name"] = "K" * 5_000_000
    return _dumps(envelope)


def _huge_name_stored(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    pid = str(_entries(envelope)[0]["patch_id"])
    return {**catalog, pid: ("K" * MAX_TEXT_CHARS, *catalog[pid][1:])}, cves


def _big_counts(envelope: Envelope) -> str:
    """Every count of page 2 out of range (2**70, -1, NaN, 1e300, an object); the first
    entry's patch id 2**70 (an id: kept, as text)."""
    for k, entry in enumerate(_entries(envelope)):
        entry["installed_system_count"] = (2 ** 70, -1, float("nan"), 1e300, {"n": 1})[k % 5]
        entry["missing_system_count"] = 2 ** 70 if k % 2 else MAX_TOTAL_RECORDS + 1
    _entries(envelope)[0]["patch_id"] = 2 ** 70
    return json.dumps(envelope)  # NaN as Python writes it


def _big_counts_stored(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    """Page 2's counts NULL; its first patch under the id 2**70."""
    ids, first = page_ids(envelope), str(_entries(envelope)[0]["patch_id"])
    stored = {pid: (*row[:-2], None, None) if pid in ids else row for pid, row in catalog.items()}
    stored[str(2 ** 70)] = stored.pop(first)
    return stored, {(str(2 ** 70) if p == first else p, c) for p, c in cves}


def _bad_ids(envelope: Envelope) -> str:
    """Patch ids of page 2's first entries that are no ids: NaN, Infinity, true, an object, an
    array, null, an empty string."""
    for entry, bad in zip(_entries(envelope), (float("nan"), float("inf"), True, {"id": 1}, [1], None, "")):
        entry["patch_id"] = bad
    return json.dumps(envelope)


def _bad_ids_stored(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    gone = {str(e["patch_id"]) for e in _entries(envelope)[:7]}
    return {p: r for p, r in catalog.items() if p not in gone}, {(p, c) for p, c in cves if p not in gone}


LONG_KEY = "".join(random.Random(7).choices(string.ascii_uppercase + string.digits, k=3000))  # incompressible


def _long_keys(envelope: Envelope) -> str:
    """A patch id and a CVE id of 3,000 characters: more than PostgreSQL's btree index holds."""
    _entries(envelope)[0]["patch_id"] = LONG_KEY
    _entries(envelope)[1]["cveids"] = [LONG_KEY]
    return _dumps(envelope)


def _long_keys_stored(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    first, second = (str(e["patch_id"]) for e in _entries(envelope)[:2])
    return ({p: r for p, r in catalog.items() if p != first},
            {(p, c) for p, c in cves if p not in (first, second)} | {(second, LONG_KEY[:KEY_CHARS])})


def _deep(envelope: Envelope) -> str:
    text = _dumps(envelope)
    return text.replace('"patches": [', '"patches": [' + "[" * 100_000 + "]" * 100_000 + ", ", 1)


def _deep_field(envelope: Envelope) -> str:
    """The first patch name an array nested 400 levels: stored as its JSON text."""
    first = _entries(envelope)[0]
    if "patchname" in first:  # one spelling, the one replaced below
        first["patch_name"] = first.pop("patchname")
    text = _dumps(envelope)
    return text.replace('"patch_name": ', '"patch_name": ' + "[" * 400 + "]" * 400 + ', "x": ', 1)


def _deep_field_stored(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    pid = str(_entries(envelope)[0]["patch_id"])
    return {**catalog, pid: ("[" * 400 + "]" * 400, *catalog[pid][1:])}, cves


def _long_number(envelope: Envelope) -> str:
    text = _dumps(envelope)
    return text.replace('"patch_name": ', '"patch_name": ' + "9" * 5000 + ', "x": ', 1)


def _with_metadata(**values: Any) -> Callable[[Envelope], str]:
    def body(envelope: Envelope) -> str:
        envelope["metadata"].update(values)
        return _dumps(envelope)
    return body


def _hostile_error(code: str) -> Callable[[Envelope], str]:
    """An error answer whose description is 100,000 characters with a surrogate, a NUL and newlines."""
    def body(_envelope: Envelope) -> str:
        description = "API Endpoint is not supported\n\ud83d\x00 " + "x" * 100_000 if code == "10022" else \
            "Request refused\n\ud83d\x00 " + "x" * 100_000
        return json.dumps({"error_code": code, "error_description": description})
    return body


def _unsupported_object(_envelope: Envelope) -> str:
    return json.dumps({"error_code": 10022, "error_description": {"text": ["not", "supported", "\ud83d"]}})


def _without_page(catalog: Catalog, cves: Cves, envelope: Envelope) -> tuple[Catalog, Cves]:
    ids = page_ids(envelope)
    return {p: r for p, r in catalog.items() if p not in ids}, {(p, c) for p, c in cves if p not in ids}


CATALOGUE = [
    Hostile("surrogates_in_every_text", _in_every_text("\ud83d"), stored=_repaired_everywhere,
            repaired={"surrogate": 1}),
    Hostile("nul_in_every_text", _in_every_text("\x00"), stored=_repaired_everywhere, repaired={"nul": 1}),
    Hostile("patch_name_of_5_mb", _huge_name, stored=_huge_name_stored, repaired={"truncated": 1}),
    Hostile("keys_longer_than_an_index_holds", _long_keys, stored=_long_keys_stored, skipped=1,
            repaired={"truncated": 1}),
    Hostile("counts_of_2_70", _big_counts, stored=_big_counts_stored),
    Hostile("ids_that_are_no_ids", _bad_ids, stored=_bad_ids_stored, skipped=7),
    Hostile("total_records_2_70", _with_metadata(totalRecords=2 ** 70), cause="metadata.totalRecords"),
    Hostile("total_pages_2_70", _with_metadata(totalPages=2 ** 70), cause="metadata.totalPages"),
    Hostile("page_limit_infinity", _with_metadata(pageLimit=float("inf")), cause="metadata.pageLimit is Infinity"),
    Hostile("nested_100000_levels", _deep, cause="nested too deeply"),
    Hostile("patch_name_nested_400_levels", _deep_field, stored=_deep_field_stored),
    Hostile("number_of_5000_digits", _long_number, cause="cannot be read"),
    Hostile("error_with_a_hostile_description", _hostile_error("10001"), cause="error 10001: Request refused"),
    Hostile("unsupported_with_a_hostile_description", _hostile_error("10022"), every_page=True, unavailable=True),
    Hostile("unsupported_with_an_object_description", _unsupported_object, every_page=True, unavailable=True),
]


def catalog_fault(case: Hostile, sim: Simulator) -> Fault:
    """A 200 answer whose body is replaced by the hostile one."""
    return Fault(endpoint="catalog", page=None if case.every_page else HOSTILE, kind="zero_systems",
                 body=case.body(genuine_page(sim)))


def catalog_gaps(url: str) -> list[tuple[Any, ...]]:
    return url_rows(url, "SELECT page_num, error_type, error_message FROM dcapi_extraction_gaps ORDER BY page_num")


@dataclass
class Outcome:
    """What one crawl left: its result, the log, and the tables as read back."""

    result: Any
    log: str
    mappings: dict[tuple[str, str], tuple[Any, ...]]
    catalog: Catalog
    cves: Cves
    gaps: list[tuple[Any, ...]]
    state: str | None


async def crawl(case: Hostile, url: str, tmp_path: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch,
                sim: Simulator) -> Outcome:
    sim.set_scenario(Scenario(dataset=SPEC, faults=[catalog_fault(case, sim)]))
    settings = crawl_settings(sim, tmp_path / "pmp.db", LOG_FILE=str(log_file), PMP_DATABASE_URL=url, **RUN)
    result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
    assert_clean_outputs(sim, tmp_path, log_file)
    [(_, state)] = catalog_states(url)
    return Outcome(result, log_file.read_text(encoding="utf-8"), url_mapping_table(url), catalog_table(url),
                   cve_table(url), catalog_gaps(url), state)


def check_invariant(case: Hostile, out: Outcome, sim: Simulator, envelope: Envelope) -> None:
    """The invariant of the module docstring, for one hostile body."""
    assert "Traceback" not in out.log
    assert out.mappings == expected_table(sim), "the mapping data is complete and exact"
    catalog, cves = expected_catalog(sim), expected_cves(sim)
    if case.unavailable:
        assert out.result.exit_code == 0, out.result.stats.get("pmp/exit_message")
        assert (out.state, out.gaps, out.catalog) == ("unavailable", [], {})
        assert out.result.stats.get("pmp/catalog/state") == "unavailable"
        [reason] = [json.loads(line)["reason"] for line in out.log.splitlines() if '"catalog_unavailable"' in line]
        assert "10022" in reason and "\n" not in reason and "\x00" not in reason and len(reason) <= 300, reason
    elif case.stored is None:
        assert out.result.exit_code == 2, out.result.stats.get("pmp/exit_message")
        [(page_num, error_type, message)] = out.gaps
        assert (page_num, error_type) == (-HOSTILE, "invalid_payload")
        assert case.cause is not None and case.cause in message, message
        assert "\n" not in message and len(message) <= 300 and "\x00" not in message
        assert out.state == "partial"
        assert (out.catalog, out.cves) == _without_page(catalog, cves, envelope), "good pages stored exactly"
    else:
        assert out.result.exit_code == 0, out.result.stats.get("pmp/exit_message")
        assert (out.gaps, out.state) == ([], "complete")
        assert (out.catalog, out.cves) == case.stored(catalog, cves, envelope)
    for kind, at_least in case.repaired.items():
        assert out.result.stats.get(f"pmp/values_repaired/{kind}", 0) >= at_least
    assert out.result.stats.get("pmp/catalog/skipped_patches", 0) == case.skipped


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
@pytest_twisted.ensureDeferred
async def test_hostile_catalog_body_keeps_the_invariant(case: Hostile, tmp_path: Path, log_file: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator(scenario=Scenario(dataset=SPEC)) as sim:
        out = await crawl(case, f"sqlite:///{tmp_path / 'pmp.db'}", tmp_path, log_file, monkeypatch, sim)
        check_invariant(case, out, sim, genuine_page(sim))


@pytest.mark.postgres
@pytest.mark.parametrize("case", [c for c in CATALOGUE if c.name in (
    "surrogates_in_every_text", "nul_in_every_text", "keys_longer_than_an_index_holds",
    "error_with_a_hostile_description")], ids=lambda c: c.name)
@pytest_twisted.ensureDeferred
async def test_hostile_catalog_text_on_postgresql(case: Hostile, postgres_url: str, tmp_path: Path,  # noqa: F811
                                                  log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL refuses NUL in text outright: one such character must not stop the tenant."""
    with Simulator(scenario=Scenario(dataset=SPEC)) as sim:
        out = await crawl(case, postgres_url, tmp_path, log_file, monkeypatch, sim)
        check_invariant(case, out, sim, genuine_page(sim))


@pytest_twisted.ensureDeferred
async def test_our_own_error_in_the_catalog_callback_is_a_gap(tmp_path: Path, log_file: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails in the catalog callback, our own code included, is the page's gap, never a
    traceback; the mapping sweep is not affected."""
    import pmp_scrapy.spiders.catalog_requests as spider_module  # where the catalog callback lives

    real = spider_module.catalog_rows

    def failing(entries: list[Any], page: int) -> Any:
        if page == HOSTILE:
            raise RuntimeError("an error of our own\non two lines")
        return real(entries, page)

    monkeypatch.setattr(spider_module, "catalog_rows", failing)
    case = Hostile("own_error", lambda envelope: _dumps(envelope), cause="RuntimeError (an error of our own on two")
    with Simulator(scenario=Scenario(dataset=SPEC)) as sim:
        out = await crawl(case, f"sqlite:///{tmp_path / 'pmp.db'}", tmp_path, log_file, monkeypatch, sim)
        check_invariant(case, out, sim, genuine_page(sim))


# --- the reading itself, without a crawl --------------------------------------------------------------------

def test_catalog_rows_repair_texts_and_count_the_repairs() -> None:
    rows = catalog_rows([{"patch_id": "7\ud83d", "patch_name": "A\x00", "cveids": "cve-1\x00, CVE-2",
                          "kb_number": "K" * (MAX_TEXT_CHARS + 1), "installed_system_count": 2 ** 70,
                          "missing_system_count": "12"}], page=1)
    assert rows.patches == [("7" + REPLACEMENT, "A" + REPLACEMENT, None, None, None, "K" * MAX_TEXT_CHARS, None, None,
                             None, 12)]
    assert rows.cves == [("7" + REPLACEMENT, "CVE-1" + REPLACEMENT), ("7" + REPLACEMENT, "CVE-2")]
    assert rows.repaired == {"surrogate": 1, "nul": 2, "truncated": 1}
    assert len(repr(rows)) < 100


def test_a_value_that_cannot_be_read_makes_the_page_a_gap_naming_the_field() -> None:
    class Unreadable:
        def __repr__(self) -> str:
            raise RuntimeError("no")

    entries = [{"patch_id": 1, "patch_name": "fine"}, {"patch_id": 2, "vendor_name": Unreadable()}]
    with pytest.raises(PayloadError) as info:
        catalog_rows(entries, page=4)
    assert info.value.error_type == "invalid_payload"
    assert str(info.value).startswith("patches[1].vendor_name could not be read: TypeError"), str(info.value)


@pytest.mark.parametrize(("body", "cause"), [
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"metadata": {"totalRecords": ' + str(2 ** 70).encode() + b'}, "message_response": {"patches": []}}',
     "metadata.totalRecords"),
    (b'{"metadata": {"totalRecords": 1' + b"0" * 400 + b'}, "message_response": {"patches": []}}',
     "metadata.totalRecords"),
    (b'{"metadata": {"totalPages": -1}, "message_response": {"patches": []}}', "metadata.totalPages is negative"),
    (b'{"response_code": [500], "message_response": {"patches": []}}', "response_code is an array"),
    (b'{"error_code": "1\\u0000", "error_description": "x\\ud83d\\n"}', "error 1"),
], ids=["nested", "total_records_2_70", "total_records_401_digits", "total_pages_negative", "response_code_array",
        "error_with_nul_and_surrogate"])
def test_parse_catalog_refuses_what_cannot_be_read_with_a_payload_error(body: bytes, cause: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_catalog(body, 1000)
    message = str(info.value)
    assert cause in message and "\n" not in message and "\x00" not in message and len(message) <= 300, message


def test_unavailable_answers_that_cannot_be_read_whole() -> None:
    assert unavailable_reason(200, b"[" * 60_000 + b"]" * 60_000) is None  # nested too deeply: not a 10022
    reason = unavailable_reason(200, b'{"error_code": "10022", "error_description": "not supported\\ud83d\\u0000\\n'
                                     + b"x" * 1000 + b'"}')
    assert reason is not None and "10022" in reason
    assert "\n" not in reason and "\x00" not in reason and "\ud83d" not in reason and len(reason) <= 300
