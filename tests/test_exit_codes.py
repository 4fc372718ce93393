"""Exit codes of ``scrapy crawl dcapi_patches`` (contract): 0 done, 1 fatal, 2 partial. Each
case is a real ``scrapy`` subprocess against the simulator, as cron or scrapyd would run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import TEN_PAGES, crawl_env, db_rows, scrapy_command

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator


def crawl(sim: Simulator, db_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``scrapy crawl dcapi_patches`` against ``sim`` with fast, test-friendly settings."""
    values = crawl_env(sim, db_path, **{"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 5, **env})
    return scrapy_command(["crawl", "dcapi_patches", "-s", "AUTOTHROTTLE_ENABLED=False"], env=values, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [lines[0]] and lines[0].startswith("pmp_scrapy: error: ")
    assert fragment in lines[0]


# --- 0 -------------------------------------------------------------------------------------------------
def test_clean_batch_exits_0(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        result = crawl(sim, db_path, PMP_BATCH_PAGES="3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "pmp_scrapy: exit 0: batch done: 3 pages" in result.stdout
    assert db_rows(db_path, "SELECT last_page FROM dcapi_extraction_checkpoints") == [(3,)]


def test_target_already_met_exits_0_without_a_page_request(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        first = crawl(sim, db_path)
        assert first.returncode == 0, first.stderr[-2000:]
        pages_before = sum(1 for r in sim.requests if r.kind == "page")
        second = crawl(sim, db_path)
        pages_after = sum(1 for r in sim.requests if r.kind == "page")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "coverage target already met" in second.stdout
    assert pages_after == pages_before


# --- 1 -------------------------------------------------------------------------------------------------
def test_missing_base_url_exits_1_with_one_line(db_path: Path, simulator: Simulator) -> None:
    result = crawl(simulator, db_path, PMP_BASE_URL="")
    assert_one_line_error(result, "PMP_BASE_URL is required")


def test_bad_number_exits_1_with_one_line(db_path: Path, simulator: Simulator) -> None:
    result = crawl(simulator, db_path, PMP_PAGE_LIMIT="abc")
    assert_one_line_error(result, "PMP_PAGE_LIMIT must be a positive integer, got 'abc'")
    assert not db_path.exists()


def test_token_endpoint_invalid_code_exits_1(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, token_faults=[Fault(kind="invalid_code")])) as sim:
        result = crawl(sim, db_path)
        pages = [r for r in sim.requests if r.kind == "page"]
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "pmp_scrapy: exit 1:" in result.stderr and "invalid_code" in result.stderr
    assert pages == []


def test_three_401_in_a_row_exit_1(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[Fault(kind="http_401")])) as sim:
        result = crawl(sim, db_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "pmp_scrapy: exit 1: 3 consecutive 401" in result.stderr


# --- 2 -------------------------------------------------------------------------------------------------
def test_permanent_503_page_exits_2_with_a_gap(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[Fault(page=4, kind="http_503")])) as sim:
        result = crawl(sim, db_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pmp_scrapy: exit 2: 1 page(s) ended as gaps" in result.stderr
    assert db_rows(db_path, "SELECT page_num, error_type, attempts FROM dcapi_extraction_gaps") == [
        (4, "5xx_server_error", 3)]


def test_complete_sweep_below_target_exits_2_and_says_why(db_path: Path) -> None:
    omitting = DatasetSpec(managed_systems=300, no_patch_share=0.2)
    with Simulator(scenario=Scenario(dataset=omitting)) as sim:
        result = crawl(sim, db_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the sweep is complete but coverage is" in result.stderr
    assert "managed systems have no patch records in DCAPI" in result.stderr

