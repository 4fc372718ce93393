"""Structured logs, the console format, the log file (mode 0600, daily rotation) and the
progress bar."""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest_twisted
from conftest import (
    TEN_PAGES,
    CrawlAgainst,
    crawl_env,
    json_log_lines,
    project_settings,
    scrapy_command,
    scrapy_on_terminal,
)

from pmp_scrapy.extensions.progress import progress_wanted
from pmp_scrapy.logformat import install_log_handler, register_secret, set_log_context
from pmp_scrapy.plan import RunPlan, Watermark
from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator

SMALL_TENANT = DatasetSpec(managed_systems=60, no_patch_share=0.0)  # 2 pages of 30
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}


def by_event(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[record["event_type"]].append(record)
    return grouped


@pytest_twisted.ensureDeferred
async def test_log_file_is_json_with_the_spec_schema(log_file: Path, crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=3, kind="http_503", attempts=(1,)),
                                                   Fault(page=5, kind="http_503", attempts=(1, 2, 3))])
    with Simulator(scenario=scenario) as sim:
        first = await crawl_against(sim, LOG_FILE=log_file)
        second = await crawl_against(sim, LOG_FILE=log_file)
    assert (first.exit_code, second.exit_code) == (2, 0)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600

    records = json_log_lines(log_file)
    for record in records:
        assert list(record)[:5] == ["timestamp", "level", "logger", "event_type", "snapshot_id"]
        assert TIMESTAMP.match(record["timestamp"]), record["timestamp"]
        assert record["level"] in LEVELS
    events = by_event(records)
    snapshot = first.stats["pmp/snapshot_id"]

    progress = events["extraction_progress"]
    assert len(progress) == 9 + 1  # nine pages in the first run, the healed page in the second
    for record in progress:
        assert record["level"] == "INFO" and record["snapshot_id"] == snapshot
        assert {"page", "systems_extracted", "patches_extracted", "total_systems", "progress_pct",
                "errors_total", "eta_minutes"} <= set(record)
    assert progress[8]["systems_extracted"] == 270 and progress[8]["total_systems"] == 300

    retry = events["page_extraction_failed"][0]
    assert retry["level"] == "WARNING" and retry["action"] == "retry"
    assert (retry["page"], retry["attempt"], retry["http_status"]) in {(3, 1, 503), (5, 1, 503)}
    assert retry["error_message"] == "HTTP 503"
    assert "[email]" in retry["response_sample"] and "admin@example.com" not in retry["response_sample"]

    refresh = events["token_refresh"][0]
    assert refresh["reason"] == "run_start" and refresh["success"] is True and "token_age_s" in refresh
    saved = events["checkpoint_saved"][0]
    assert {"last_page", "systems_extracted", "patches_extracted", "coverage_pct"} <= set(saved)
    assert events["batch_start"] and events["batch_complete"]
    assert events["batch_complete"][0]["level"] == "WARNING"  # exit 2: gap analysis needed
    assert [r["page"] for r in events["gap_resolved"]] == [5]
    assert events["target_met"] and events["target_met"][0]["level"] == "INFO"

    scrapy_records = events["scrapy"]
    messages = {r["message"] for r in scrapy_records}
    assert "Spider opened" in messages and any(m.startswith("Dumping Scrapy stats") for m in messages)
    assert all(r["logger"].startswith("scrapy") for r in scrapy_records)


@pytest_twisted.ensureDeferred
async def test_a_skipped_page_is_an_error_event(log_file: Path, crawl_against: CrawlAgainst) -> None:
    scenario = Scenario(dataset=TEN_PAGES, faults=[Fault(page=4, kind="http_503")])
    with Simulator(scenario=scenario) as sim:
        await crawl_against(sim, LOG_FILE=log_file, PMP_CHECKPOINT_EVERY=10)
    skipped = [r for r in json_log_lines(log_file)
               if r["event_type"] == "page_extraction_failed" and r.get("action") == "skip_page"]
    assert len(skipped) == 1 and skipped[0]["level"] == "ERROR"
    assert (skipped[0]["page"], skipped[0]["attempt"], skipped[0]["http_status"]) == (4, 3, 503)


@pytest_twisted.ensureDeferred
async def test_abort_is_critical_then_run_aborted(log_file: Path, crawl_against: CrawlAgainst) -> None:
    with Simulator(scenario=Scenario(dataset=TEN_PAGES, faults=[Fault(kind="http_401")])) as sim:
        result = await crawl_against(sim, LOG_FILE=log_file, PMP_BATCH_PAGES=50, PMP_CHECKPOINT_EVERY=10)
    assert result.exit_code == 1
    aborted = by_event(json_log_lines(log_file))["run_aborted"]
    assert {r["level"] for r in aborted} == {"CRITICAL", "ERROR"}


def test_redaction_and_registered_secrets_in_every_line(log_file: Path) -> None:
    install_log_handler(project_settings(LOG_FILE=str(log_file)))
    set_log_context(snapshot_id=7, customer="acme")
    register_secret("https://hooks.example.test/services/SECRETPATH123")
    log = logging.getLogger("pmp_scrapy.test")
    log.warning("mail admin@example.com from 10.1.2.3 and 2001:db8::5 token=abcdef123",
                extra={"event_type": "x", "body": "see https://hooks.example.test/services/SECRETPATH123"})
    logging.getLogger("scrapy.core.engine").info("Crawled <POST %s>", "https://hooks.example.test/services/SECRETPATH123")
    text = log_file.read_text()
    for leaked in ("admin@example.com", "10.1.2.3", "2001:db8::5", "abcdef123", "SECRETPATH123"):
        assert leaked not in text
    first, second = json_log_lines(log_file)
    assert first["snapshot_id"] == 7 and first["customer"] == "acme" and first["body"] == "see [secret]"
    assert second["event_type"] == "scrapy" and second["message"] == "Crawled <POST [secret]>"


def test_log_file_rotates_daily_and_stays_private(log_file: Path) -> None:
    log_file.write_text('{"old": true}\n')
    os.chmod(log_file, 0o644)
    two_days_ago = time.time() - 2 * 86400
    os.utime(log_file, (two_days_ago, two_days_ago))
    install_log_handler(project_settings(LOG_FILE=str(log_file)))
    logging.getLogger("pmp_scrapy.test").info("a new day", extra={"event_type": "x"})
    rotated = [p for p in log_file.parent.iterdir() if p.name.startswith("pmp.log.")]
    assert len(rotated) == 1 and rotated[0].read_text() == '{"old": true}\n'
    assert [r["message"] for r in json_log_lines(log_file)] == ["a new day"]
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600


def test_log_format_follows_the_terminal_and_the_setting(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL_TENANT)) as sim:
        piped = scrapy_command(["crawl", "dcapi_patches"], env=crawl_env(sim, db_path, PMP_BATCH_PAGES=0), timeout=120)
        console = scrapy_command(["crawl", "dcapi_patches", "-a", "reset=1"],
                                 env=crawl_env(sim, db_path, PMP_BATCH_PAGES=0, PMP_LOG_FORMAT="console"), timeout=120)
        code, _, terminal = scrapy_on_terminal(["crawl", "dcapi_patches", "-a", "reset=1"],
                                               env=crawl_env(sim, db_path, PMP_BATCH_PAGES=0, PMP_PROGRESS="on"))
    assert piped.returncode == 0 and console.returncode == 0 and code == 0
    piped_lines = piped.stderr.splitlines()
    assert piped_lines and all(json.loads(line)["timestamp"] for line in piped_lines)
    console_lines = console.stderr.splitlines()
    assert console_lines and not any(line.startswith('{"timestamp"') for line in console_lines)
    assert any(re.match(r"^\d\d:\d\d:\d\d INFO\s+pmp_scrapy\.\S+: page 1/2", line) for line in console_lines)
    # On a terminal: human lines and the progress bar, no JSON.
    assert "batch start" in terminal and '"event_type"' not in terminal
    assert "2/2" in terminal and "mappings" in terminal and "0 errors" in terminal


def test_progress_is_silent_off_a_terminal(db_path: Path) -> None:
    with Simulator(scenario=Scenario(dataset=SMALL_TENANT)) as sim:
        result = scrapy_command(["crawl", "dcapi_patches"],
                                env=crawl_env(sim, db_path, PMP_BATCH_PAGES=0, LOG_LEVEL="ERROR"), timeout=120)
    assert result.returncode == 0
    assert result.stderr == ""
    assert progress_wanted("auto", stderr_tty=True, environ={"SCRAPY_JOB": "abc"}) is False  # scrapyd
    assert progress_wanted("auto", stderr_tty=True, environ={}) is True
    assert progress_wanted("off", stderr_tty=True, environ={}) is False
    assert progress_wanted("on", stderr_tty=False, environ={}) is True


def test_planned_pages() -> None:
    # RunPlan.planned_pages replaces progress.planned_pages (one computation for bar, log and Slack).
    plan = RunPlan(snapshot_id=1, first_page=51, batch_end=100, retry_pages=[7, 9],
                   watermark=Watermark(50))
    assert plan.planned_pages(None) == 52
    assert plan.planned_pages(80) == 32
    assert RunPlan(snapshot_id=1, first_page=1, batch_end=None,
                   watermark=Watermark(0)).planned_pages(None) is None
    assert RunPlan(snapshot_id=1, first_page=None, batch_end=None, retry_pages=[4]).planned_pages(None) == 1
