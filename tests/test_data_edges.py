"""Odd but valid data, as real crawls against the simulator: an empty page before the last, a
system without patches, patches without patch_id, duplicate patches, the page count changing
during a sweep and between runs, and coverage falling between runs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import TEN_PAGES, CrawlAgainst, db_rows, expected_table, json_log_lines, mapping_table
from output_checks import assert_clean_outputs, console_has_no_secret  # noqa: F401 (fixture)

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator
from pmp_scrapy.simulator.data import Dataset

pytestmark = pytest.mark.crawl_defaults(LOG_LEVEL="DEBUG")
FIELDS = ("patchname", "severity", "patch_status", "bulletinid", "vendor_name", "installed_time")


def events(log_file: Path, name: str) -> list[dict[str, Any]]:
    return [r for r in json_log_lines(log_file) if r.get("event_type") == name]


def page_systems(sim: Simulator, page: int, limit: int = 30) -> list[str]:
    return sim.dcapi_system_ids()[(page - 1) * limit: page * limit]


def no_gaps(db_path: Path) -> bool:
    return db_rows(db_path, "SELECT COUNT(*) FROM dcapi_extraction_gaps") == [(0,)]


# --- an empty page that is not the last -----------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_page_with_zero_systems_before_the_last_is_logged_not_a_gap(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=3, kind="zero_systems")])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_COVERAGE_TARGET=0.8)
        expected = expected_table(sim)
        missing = set(page_systems(sim, 3))
        assert_clean_outputs(sim, tmp_path, log_file)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    [empty] = events(log_file, "empty_page")
    assert (empty["level"], empty["page"]) == ("WARNING", 3)
    assert no_gaps(db_path)
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(10,)]
    assert mapping_table(db_path) == {k: v for k, v in expected.items() if k[0] not in missing}


# --- a system with no patches, patches without patch_id ---------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_system_without_patches_and_patches_without_id_are_skipped_with_warnings(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    # The simulator's missing_fields page: the first system loses patch_id on every third patch,
    # the last system arrives with an empty patch list.
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=2, kind="missing_fields")])
    with Simulator(scenario=scenario) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        expected = expected_table(sim)
        systems = page_systems(sim, 2)
        dataset = Dataset(TEN_PAGES, sim.seed)
        assert_clean_outputs(sim, tmp_path, log_file)
    first, last = systems[0], systems[-1]
    patches = dataset.system(int(first) - 10001)["patches"]
    kept = {str(p["patch_id"]) for k, p in enumerate(patches) if k % 3}
    dropped = len(patches[::3])

    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert no_gaps(db_path)
    rows = mapping_table(db_path)
    assert not [k for k in rows if k[0] == last]  # no rows for the system without patches
    assert {pid for rid, pid in rows if rid == first} == kept
    assert rows == {k: v for k, v in expected.items() if k[0] != last and (k[0] != first or k[1] in kept)}
    assert result.stats["pmp/skipped_patches"] == dropped
    assert result.stats["pmp/empty_systems"] == 1
    skipped = events(log_file, "patch_skipped")
    assert len(skipped) == dropped
    assert all(e["level"] == "WARNING" and e["resource_id"] == first and first in e["message"] for e in skipped)
    [empty] = events(log_file, "system_without_patches")
    assert empty["level"] == "WARNING" and empty["resource_id"] == last and last in empty["message"]
    # The system without patches is known, with a patch count of 0.
    assert db_rows(db_path, "SELECT patch_count FROM dcapi_systems WHERE resource_id = ?", (last,)) == [(0,)]


# --- duplicate patches in one system ------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_duplicate_patches_in_a_system_become_one_row(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    seed = 7  # a seed whose 300 systems include several with a duplicated patch (about 1 in 100)
    dataset = Dataset(TEN_PAGES, seed)
    duplicated: dict[str, int] = {}
    for index in dataset.dcapi_indices():
        system = dataset.system(index)
        ids = [str(p["patch_id"]) for p in system["patches"]]
        if len(ids) != len(set(ids)):
            duplicated[str(system["resource_id"])] = len(set(ids))
    assert duplicated, "the data set should contain a system with a duplicated patch"

    with Simulator(scenario=Scenario(dataset=TEN_PAGES), seed=seed) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    assert result.stats["pmp/duplicate_patches"] == len(duplicated)
    for resource_id, distinct in duplicated.items():
        assert db_rows(db_path, "SELECT COUNT(*) FROM patch_system_mapping WHERE resource_id = ?",
                       (resource_id,)) == [(distinct,)]
        assert db_rows(db_path, "SELECT patch_count FROM dcapi_systems WHERE resource_id = ?",
                       (resource_id,)) == [(distinct,)]
    assert db_rows(db_path, "SELECT COUNT(*) FROM (SELECT resource_id, patch_id FROM patch_system_mapping "
                            "GROUP BY 1, 2 HAVING COUNT(*) > 1)") == [(0,)]
    assert mapping_table(db_path) == expected


# --- the page count changes -----------------------------------------------------------------------------
def changed_after_three_pages(**change: int) -> Scenario:
    """The ten-page tenant, changed (``add_systems=45``, ``remove_systems=30``) once PMP has
    answered three page requests: in the middle of a sweep."""
    return Scenario(dataset=TEN_PAGES, mutations=[{"after_page_requests": 3, **change}])


@pytest_twisted.ensureDeferred
async def test_systems_added_mid_sweep_the_sweep_follows_the_new_page_count(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=changed_after_three_pages(add_systems=45)) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert result.exit_code == 0, result.stats.get("pmp/exit_message")
    changed = events(log_file, "total_pages_changed")
    assert changed and (changed[0]["old"], changed[0]["new"]) == (10, 12)
    assert changed[0]["level"] == "WARNING"
    assert {r.page for r in result.requests if r.kind == "page"} == set(range(1, 13))
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(12,)]
    assert db_rows(db_path, "SELECT total_pages, state FROM dcapi_snapshots") == [(12, "complete")]
    assert mapping_table(db_path) == expected


@pytest_twisted.ensureDeferred
async def test_systems_removed_mid_sweep_are_logged_and_the_next_sweep_catches_up(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    # Removing systems shifts every later page forward (offset paging): a sweep in progress
    # misses the systems that move onto pages it already has. It must notice, end normally, and
    # the next sweep must pick them up.
    with Simulator(scenario=changed_after_three_pages(remove_systems=30)) as sim:
        first = await crawl_against(sim, LOG_FILE=log_file)
        changed = events(log_file, "total_pages_changed")
        second = await crawl_against(sim, LOG_FILE=log_file)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    # The inventory answered before the change (300 managed systems: 285 needed for 95%) and at
    # most 270 systems are covered, so the complete first sweep ends below the target: exit 2.
    assert first.exit_code in (0, 2) and first.close_reason == "finished"
    assert first.exit_code == 2 and first.stats["pmp/snapshot_complete"] is True, first.stats.get("pmp/exit_message")
    assert first.stats["pmp/managed_total"] == 300 and first.stats["pmp/coverage"] < 285
    assert changed and (changed[0]["old"], changed[0]["new"]) == (10, 9)
    assert first.stats["pmp/total_pages"] == 9
    assert second.exit_code == 0, second.stats.get("pmp/exit_message")
    assert second.stats["pmp/total_pages"] == 9
    rows = mapping_table(db_path)
    assert set(expected.items()) <= set(rows.items())  # every system PMP reports now is stored
    assert no_gaps(db_path)


@pytest_twisted.ensureDeferred
async def test_page_count_changing_between_runs_is_logged_and_followed(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        first = await crawl_against(sim, LOG_FILE=log_file, PMP_BATCH_PAGES=4)
        grown = DatasetSpec(managed_systems=360, no_patch_share=0.0)  # the same 300 systems and 60 new ones
        sim.set_scenario(Scenario(dataset=grown))
        second = await crawl_against(sim, LOG_FILE=log_file)
        expected = expected_table(sim)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert first.exit_code == 0 and first.stats["pmp/checkpoint_page"] == 4
    assert second.exit_code == 0, second.stats.get("pmp/exit_message")
    assert second.stats["pmp/first_page"] == 5
    changed = events(log_file, "total_pages_changed")
    assert [(e["old"], e["new"]) for e in changed] == [(10, 12)]
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(12,)]
    assert mapping_table(db_path) == expected


# --- coverage falls between runs --------------------------------------------------------------------------
@pytest_twisted.ensureDeferred
async def test_coverage_lower_than_the_previous_run_is_a_warning(
        tmp_path: Path, db_path: Path, log_file: Path, crawl_against: CrawlAgainst) -> None:
    """Coverage counts distinct systems in patch_system_mapping, whose rows the extractor never
    deletes; it can fall only when rows are removed outside the extractor (here: a retention job
    deleting the systems of the last three pages)."""
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        first = await crawl_against(sim, LOG_FILE=log_file)
        pruned = sim.dcapi_system_ids()[210:]
        with sqlite3.connect(db_path) as conn:
            conn.executemany("DELETE FROM patch_system_mapping WHERE resource_id = ?", [(r,) for r in pruned])
        second = await crawl_against(sim, LOG_FILE=log_file, PMP_BATCH_PAGES=2)
        assert_clean_outputs(sim, tmp_path, log_file)
    assert first.exit_code == 0 and first.stats["pmp/coverage"] == 300
    assert second.exit_code == 0, second.stats.get("pmp/exit_message")
    [warning] = events(log_file, "coverage_decreased")
    assert warning["level"] == "WARNING"
    assert (warning["previous"], warning["coverage"]) == (300, 210)
    assert "300" in warning["message"] and "210" in warning["message"]
