"""Hostile page bodies, served by the simulator as real crawls: every one either repairs or skips
values, or makes its page an ``invalid_payload`` / ``unexpected_status`` gap naming the cause.

The invariant checked for each body: the crawl exits 0 or 2 with no traceback in the log; every
planned page is committed or recorded as a gap; the good pages of the same batch are committed
(the hostile page is in the middle of a single batch); what is stored is exactly the simulator's
data for good pages, and the documented repair of it for a repaired page; no secret (the
issued access token included) reaches the database or the log. The NUL and surrogate bodies
also run on PostgreSQL (skipped when 127.0.0.1:5432 does not answer).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import crawl_settings, db_rows, expected_table, mapping_table, oauth_env, run_crawl
from output_checks import assert_clean_outputs, console_has_no_secret  # noqa: F401 (fixture)
from test_storage import postgres_url, url_rows  # noqa: F401 (fixture)

from pmp_scrapy.envelope import MAX_TOTAL_PAGES
from pmp_scrapy.errors import StorageError
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.simulator import tokens as sim_tokens
from pmp_scrapy.simulator.data import Dataset
from pmp_scrapy.storage import Store
from pmp_scrapy.values_guard import MAX_TEXT_CHARS, REPLACEMENT

SPEC = DatasetSpec(managed_systems=120, no_patch_share=0.0)  # 4 pages of 30
PAGES, LIMIT, HOSTILE = 4, 30, 2
# Every page in one run and in one batch, so a value the driver refused would lose them all.
RUN = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 10, "PMP_CATALOG_PAGE_LIMIT": 0,
       "PMP_COVERAGE_TARGET": 0.9, "LOG_LEVEL": "INFO"}
FIELDS = ("patchname", "severity", "patch_status", "bulletinid", "vendor_name", "installed_time")

Table = dict[tuple[str, str], tuple[Any, ...]]


def genuine_page(sim: Simulator, page: int = HOSTILE) -> dict[str, Any]:
    """The simulator's own answer for ``page``, as a dict to break."""
    ds = Dataset(SPEC, sim.seed)
    systems = [ds.system(k) for k in ds.page_indices(page, LIMIT)]
    return {"metadata": {"page": page, "pageLimit": LIMIT, "totalPages": PAGES, "totalRecords": PAGES * LIMIT},
            "response_code": 200, "message_type": "systemreport", "message_response": {"systemreport": systems}}


def page_keys(envelope: dict[str, Any]) -> set[str]:
    return {str(s["resource_id"]) for s in envelope["message_response"]["systemreport"]}


@dataclass
class Hostile:
    """One hostile body for page 2: ``body(envelope, token)`` breaks the genuine page (and
    returns the body text), ``stored(expected, envelope)`` is what must then be stored for it
    (None: the page is a gap whose message contains ``cause``)."""

    name: str
    body: Callable[[dict[str, Any], str], str]
    cause: str | None = None
    stored: Callable[[Table, dict[str, Any]], Table] | None = None
    status: int = 200
    repaired: dict[str, int] = field(default_factory=dict)
    skipped: tuple[int, int] = (0, 0)  # (systems, patches) skipped with a warning
    every_page: bool = False  # the body answers every page, not only page 2


def _dumps(envelope: dict[str, Any]) -> str:
    return json.dumps(envelope)  # ASCII, \\u escapes: lone surrogates and NUL stay valid JSON


def _with_metadata(**values: Any) -> Callable[[dict[str, Any], str], str]:
    def body(envelope: dict[str, Any], _token: str) -> str:
        envelope["metadata"].update(values)
        return _dumps(envelope)
    return body


def _in_every_field(mark: str) -> Callable[[dict[str, Any], str], str]:
    """``mark`` appended to every text of the page: ids, names and each patch field."""
    def body(envelope: dict[str, Any], _token: str) -> str:
        for system in envelope["message_response"]["systemreport"]:
            system["resource_id"] = f"{system['resource_id']}{mark}"
            system["resource_name"] += mark
            for patch in system["patches"]:
                patch["patch_id"] = f"{patch['patch_id']}{mark}"
                for name in FIELDS:
                    if patch.get(name) is not None:
                        patch[name] = f"{patch[name]}{mark}"
        return _dumps(envelope)
    return body


def _repaired_everywhere(expected: Table, envelope: dict[str, Any]) -> Table:
    """The page's rows with U+FFFD appended to every text, ids included."""
    keys = page_keys(envelope)
    result = {k: v for k, v in expected.items() if k[0] not in keys}
    for (rid, pid), values in expected.items():
        if rid in keys:
            result[(rid + REPLACEMENT, pid + REPLACEMENT)] = tuple(
                None if v is None else f"{v}{REPLACEMENT}" for v in values)
    return result


def _systems(envelope: dict[str, Any]) -> list[dict[str, Any]]:
    return envelope["message_response"]["systemreport"]


def _bad_ids(envelope: dict[str, Any], _token: str) -> str:
    """System 0's resource_id NaN, system 1's an object; one patch each of systems 2-6 with a
    patch_id of Infinity, -Infinity, true, an array, false."""
    systems = _systems(envelope)
    systems[0]["resource_id"] = float("nan")
    systems[1]["resource_id"] = {"rid": 5}
    for system, bad in zip(systems[2:7], (float("inf"), float("-inf"), True, [1, 2], False)):
        system["patches"][0]["patch_id"] = bad
    return json.dumps(envelope)  # NaN and Infinity as Python writes them: JSON that PMP-like servers send


def _bad_ids_stored(expected: Table, envelope: dict[str, Any]) -> Table:
    systems = _systems(envelope)
    gone = {str(systems[0]["resource_id"]), str(systems[1]["resource_id"])}
    dropped = {(str(s["resource_id"]), str(s["patches"][0]["patch_id"])) for s in systems[2:7]}
    return {k: v for k, v in expected.items() if k[0] not in gone and k not in dropped}


def _big_integers(envelope: dict[str, Any], _token: str) -> str:
    """System 0's resource_id and every installed_time of system 1 beyond 64 bits."""
    systems = _systems(envelope)
    systems[0]["resource_id"] = 2 ** 70
    for patch in systems[1]["patches"]:
        patch["installed_time"] = 2 ** 70
    return _dumps(envelope)


def _big_integers_stored(expected: Table, envelope: dict[str, Any]) -> Table:
    systems = _systems(envelope)
    first, second = str(systems[0]["resource_id"]), str(systems[1]["resource_id"])
    result: Table = {}
    for (rid, pid), values in expected.items():
        if rid == first:
            result[(str(2 ** 70), pid)] = values
        elif rid == second:
            result[(rid, pid)] = (*values[:-1], str(2 ** 70))
        else:
            result[(rid, pid)] = values
    return result


def _huge_string(envelope: dict[str, Any], _token: str) -> str:
    _systems(envelope)[0]["patches"][0]["patchname"] = "K" * 5_000_000
    return _dumps(envelope)


def _huge_string_stored(expected: Table, envelope: dict[str, Any]) -> Table:
    system = _systems(envelope)[0]
    key = (str(system["resource_id"]), str(system["patches"][0]["patch_id"]))
    return {**expected, key: ("K" * MAX_TEXT_CHARS, *expected[key][1:])}


def _deep(envelope: dict[str, Any], _token: str) -> str:
    text = _dumps(envelope)
    return text.replace('"systemreport": [', '"systemreport": [' + "[" * 100_000 + "]" * 100_000 + ", ", 1)


def _long_number(envelope: dict[str, Any], _token: str) -> str:
    text = _dumps(envelope)
    return text.replace('"patchname": ', '"patchname": ' + "9" * 5000 + ', "x": ', 1)


def _echo_token(_envelope: dict[str, Any], token: str) -> str:
    return json.dumps({"response_code": 400, "error_description": f"request rejected for token {token}",
                       "token_used": token, "request": {"authorization": token}})


CATALOGUE = [
    Hostile("surrogates_in_every_field", _in_every_field("\ud83d"), stored=_repaired_everywhere,
            repaired={"surrogate": 1}),
    Hostile("nul_in_every_field", _in_every_field("\x00"), stored=_repaired_everywhere, repaired={"nul": 1}),
    Hostile("non_finite_and_non_scalar_ids", _bad_ids, stored=_bad_ids_stored, skipped=(2, 5)),
    Hostile("integers_beyond_64_bits", _big_integers, stored=_big_integers_stored),
    Hostile("string_of_5_mb", _huge_string, stored=_huge_string_stored, repaired={"truncated": 1}),
    Hostile("total_records_2_70", _with_metadata(totalRecords=2 ** 70), cause="metadata.totalRecords"),
    Hostile("total_pages_infinity", _with_metadata(totalPages=float("inf")), cause="metadata.totalPages is Infinity"),
    Hostile("total_pages_nan", _with_metadata(totalPages=float("nan")), cause="metadata.totalPages is NaN"),
    Hostile("total_pages_1e9", _with_metadata(totalPages=10 ** 9, totalRecords=30 * 10 ** 9),
            cause="metadata.totalPages is 1000000000, above the sane maximum"),
    Hostile("total_pages_negative", _with_metadata(totalPages=-4), cause="metadata.totalPages is negative"),
    Hostile("total_pages_inconsistent", _with_metadata(totalPages=7), cause="metadata.totalPages is 7, but 120"),
    Hostile("total_pages_not_a_count", _with_metadata(totalPages=[4]), cause="metadata.totalPages is an array"),
    Hostile("page_not_the_one_asked_for", _with_metadata(page=3), cause="metadata.page is 3, not the page 2"),
    Hostile("nested_100000_levels", _deep, cause="nested too deeply"),
    Hostile("number_of_5000_digits", _long_number, cause="cannot be read"),
    Hostile("400_echoing_the_access_token", _echo_token, status=400, cause="HTTP 400"),
]


def predictable_tokens(monkeypatch: pytest.MonkeyPatch) -> str:
    """Make the simulator's token generator predictable; returns the first access token it issues."""
    parts = [secrets.token_hex(16) for _ in range(40)]
    feed = iter(parts)

    class Predictable:
        @staticmethod
        def token_hex(_n: int) -> str:
            return next(feed)

    monkeypatch.setattr(sim_tokens, "secrets", Predictable)
    return f"1000.{parts[0]}.{parts[1]}"


def page_fault(case: Hostile, sim: Simulator, token: str) -> Fault:
    body = case.body(genuine_page(sim), token)
    page = None if case.every_page else HOSTILE
    if case.status != 200:
        return Fault(page=page, kind="http_status", status=case.status, body=body)
    return Fault(page=page, kind="zero_systems", body=body)  # a 200 answer whose body is replaced


def gap_rows(url_or_path: Path | str) -> list[tuple[Any, ...]]:
    query = "SELECT page_num, error_type, error_message, response_sample FROM dcapi_extraction_gaps ORDER BY page_num"
    return db_rows(url_or_path, query) if isinstance(url_or_path, Path) else url_rows(url_or_path, query)


def check_invariant(case: Hostile, result: Any, expected: Table, envelope: dict[str, Any], stored: Table,
                    gaps: list[tuple[Any, ...]], checkpoint: list[tuple[Any, ...]], log_text: str) -> None:
    """The invariant of the module docstring, for one hostile body."""
    assert "Traceback" not in log_text
    assert checkpoint == [(PAGES,)], "every planned page is committed or a gap"
    if case.stored is None:
        assert result.exit_code == 2, result.stats.get("pmp/exit_message")
        [(page, error_type, message, sample)] = gaps
        assert page == HOSTILE and case.cause in message, message
        assert error_type == ("unexpected_status" if case.status != 200 else "invalid_payload")
        assert "\n" not in message and len(message) <= 300
        assert sample is None or len(sample.encode()) <= 1024
        keys = page_keys(envelope)
        assert stored == {k: v for k, v in expected.items() if k[0] not in keys}, "good pages stored exactly"
    else:
        assert result.exit_code == 0, result.stats.get("pmp/exit_message")
        assert gaps == []
        assert stored == case.stored(expected, envelope)
    for kind, at_least in case.repaired.items():
        assert result.stats.get(f"pmp/values_repaired/{kind}", 0) >= at_least
    assert (result.stats.get("pmp/skipped_systems", 0), result.stats.get("pmp/skipped_patches", 0)) == case.skipped


@pytest.mark.parametrize("case", CATALOGUE, ids=lambda c: c.name)
@pytest_twisted.ensureDeferred
async def test_hostile_body_keeps_the_invariant(case: Hostile, tmp_path: Path, db_path: Path, log_file: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    token = predictable_tokens(monkeypatch)
    with Simulator(scenario=Scenario(dataset=SPEC)) as sim:
        sim.set_scenario(Scenario(dataset=SPEC, faults=[page_fault(case, sim, token)]))
        settings = crawl_settings(sim, db_path, LOG_FILE=str(log_file), **RUN)
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        assert sim.issued_tokens[0] == token  # the 400 body echoed the token the crawl really used
        expected, envelope = expected_table(sim), genuine_page(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    checkpoint = db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints")
    check_invariant(case, result, expected, envelope, mapping_table(db_path), gap_rows(db_path), checkpoint,
                    log_file.read_text(encoding="utf-8"))
    if case.status != 200:
        [(_, _, _, sample)] = gap_rows(db_path)
        assert "[secret]" in sample and token not in sample


@pytest_twisted.ensureDeferred
async def test_absurd_page_count_on_every_page_is_a_few_gaps_not_a_billion_requests(
        tmp_path: Path, db_path: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``PMP_BATCH_PAGES=0`` and every page claiming 10**9 pages: each page asked for is a gap
    (the count is never learnt), the sweep gives up after the probe pages, memory stays flat."""
    case = Hostile("every_page_1e9", _with_metadata(totalPages=10 ** 9, totalRecords=30 * 10 ** 9),
                   every_page=True)
    with Simulator(scenario=Scenario(dataset=SPEC)) as sim:
        sim.set_scenario(Scenario(dataset=SPEC, faults=[page_fault(case, sim, "")]))
        settings = crawl_settings(sim, db_path, LOG_FILE=str(log_file), **RUN)
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        page_requests = [r for r in sim.requests if r.kind == "page"]
        assert_clean_outputs(sim, tmp_path, log_file)
    assert result.exit_code == 2
    assert len(page_requests) <= 5
    gaps = gap_rows(db_path)
    assert gaps and all(t == "invalid_payload" and f"above the sane maximum of {MAX_TOTAL_PAGES}" in m
                        for _, t, m, _ in gaps)
    assert mapping_table(db_path) == {}
    assert "Traceback" not in log_file.read_text(encoding="utf-8")


def pg_mapping_table(url: str) -> Table:
    rows = url_rows(url, "SELECT resource_id, patch_id, " + ", ".join(FIELDS) + " FROM patch_system_mapping")
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


@pytest.mark.postgres
@pytest.mark.parametrize("case", [c for c in CATALOGUE if c.name in ("surrogates_in_every_field",
                                                                      "nul_in_every_field")], ids=lambda c: c.name)
@pytest_twisted.ensureDeferred
async def test_hostile_text_on_postgresql(case: Hostile, postgres_url: str, tmp_path: Path,  # noqa: F811
                                          log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL refuses NUL in text outright: one such character must not stop the tenant."""
    with Simulator(scenario=Scenario(dataset=SPEC)) as sim:
        sim.set_scenario(Scenario(dataset=SPEC, faults=[page_fault(case, sim, "")]))
        settings = crawl_settings(sim, tmp_path / "unused.db", LOG_FILE=str(log_file),
                                  PMP_DATABASE_URL=postgres_url, **RUN)
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        expected, envelope = expected_table(sim), genuine_page(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    checkpoint = url_rows(postgres_url, "SELECT last_page FROM dcapi_extraction_checkpoints")
    check_invariant(case, result, expected, envelope, pg_mapping_table(postgres_url), gap_rows(postgres_url),
                    checkpoint, log_file.read_text(encoding="utf-8"))
    names = {r[0] for r in url_rows(postgres_url, "SELECT resource_name FROM dcapi_systems")}
    assert sum(REPLACEMENT in n for n in names) == LIMIT


# --- finding 10: after a database failure no page is logged whole ------------------------------------------
@pytest.mark.parametrize("failure", [StorageError("database error while committing a batch: disk I/O error"),
                                     RuntimeError("an error of our own")], ids=["store_error", "own_error"])
@pytest_twisted.ensureDeferred
async def test_a_failed_commit_stops_the_run_in_one_line_without_logging_pages(
        failure: Exception, tmp_path: Path, db_path: Path, log_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first commit fails; the pages still in flight are not stored and each is one short
    line in the log, never its rows; the run is fatal (exit 1), not "batch done"."""
    def failing_commit(_store: Store, _batch: Any) -> None:
        raise failure

    monkeypatch.setattr(Store, "commit_batch", failing_commit)
    with Simulator(scenario=Scenario(dataset=DatasetSpec(managed_systems=300, no_patch_share=0.0))) as sim:
        settings = crawl_settings(sim, db_path, LOG_FILE=str(log_file), **{**RUN, "PMP_CHECKPOINT_EVERY": 3})
        result = await run_crawl(settings, monkeypatch, env=oauth_env(sim))
        names = {name for (rid, _), (name, *_) in expected_table(sim).items()}  # patch names
        assert_clean_outputs(sim, tmp_path, log_file)
    assert result.exit_code == 1, result.stats.get("pmp/exit_message")
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert max(len(line) for line in lines) < 8_000
    assert "Traceback" not in "\n".join(lines)
    assert not [line for line in lines if any(name in line for name in names)]
    [aborted] = [json.loads(line) for line in lines if '"run_aborted"' in line]
    assert type(failure).__name__ in aborted["message"] or str(failure) in aborted["message"]
