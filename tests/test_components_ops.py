"""Component tests of what operators rely on, each without a crawl: the log handler the
settings describe, Slack staying silent when there is nothing to do, the hook's process group
killed at its timeout, and spider arguments refused by name."""

from __future__ import annotations

import logging
import os
import shlex
import time
from logging.handlers import TimedRotatingFileHandler
from pathlib import Path
from typing import Any

import pytest
from conftest import UNUSED_URL, SlackReceiver, component_crawler, opened_spider, project_settings
from scrapy.crawler import CrawlerRunner
from scrapy.exceptions import CloseSpider
from scrapy.settings import Settings
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.misc import build_from_crawler

from pmp_scrapy.config import apply_environment, get_config
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.extensions.hook import PostExtractionHook
from pmp_scrapy.items import PatchPage
from pmp_scrapy.logformat import PrivateDailyFileHandler, PrivateFileHandler, build_handler
from pmp_scrapy.pipelines import MappingPipeline
from pmp_scrapy.rows import page_rows
from pmp_scrapy.run import get_run
from pmp_scrapy.spiders.dcapi_patches import DcapiPatchesSpider
from pmp_scrapy.storage import Batch, Store

# --- the log file: PMP_LOG_ROTATE and PMP_LOG_BACKUPS -------------------------------------------------

def log_settings(log_file: Path, environ: dict[str, str] | None = None, **values: Any) -> Settings:
    """Project settings with ``LOG_FILE``, ``values`` as ``-s`` and ``environ`` folded in as the
    environment add-on does."""
    settings = project_settings(LOG_FILE=str(log_file), **values)
    apply_environment(settings, environ or {})
    return settings


@pytest.mark.parametrize("source", ["setting", "environment"])
def test_log_rotate_off_writes_one_plain_file(tmp_path: Path, source: str) -> None:
    log_file = tmp_path / "pmp.log"
    settings = (log_settings(log_file, PMP_LOG_ROTATE="off") if source == "setting"
                else log_settings(log_file, {"PMP_LOG_ROTATE": "off"}))
    handler = build_handler(settings)
    try:
        assert type(handler) is PrivateFileHandler
        assert not isinstance(handler, TimedRotatingFileHandler)  # rotation is logrotate's job
        assert (handler.baseFilename, handler.mode) == (str(log_file), "a")
    finally:
        handler.close()
    overwrite = build_handler(log_settings(log_file, PMP_LOG_ROTATE="off", LOG_FILE_APPEND=False))
    try:
        assert type(overwrite) is PrivateFileHandler and overwrite.mode == "w"
    finally:
        overwrite.close()


@pytest.mark.parametrize(("environ", "backups"), [({}, 14), ({"PMP_LOG_BACKUPS": "3"}, 3),
                                                  ({"PMP_LOG_BACKUPS": "0"}, 0)])
def test_daily_rotation_at_utc_midnight_keeps_pmp_log_backups(tmp_path: Path, environ: dict[str, str],
                                                              backups: int) -> None:
    log_file = tmp_path / "pmp.log"
    handler = build_handler(log_settings(log_file, environ))
    try:
        assert type(handler) is PrivateDailyFileHandler
        assert (handler.when, handler.utc, handler.backupCount) == ("MIDNIGHT", True, backups)
    finally:
        handler.close()


def test_rotation_deletes_the_files_beyond_pmp_log_backups(tmp_path: Path) -> None:
    log_file = tmp_path / "pmp.log"
    for day in range(1, 6):  # five earlier days' files
        (tmp_path / f"pmp.log.2026-01-0{day}").write_text(f"day {day}\n")
    handler = build_handler(log_settings(log_file, {"PMP_LOG_BACKUPS": "2"}))
    try:
        handler.emit(logging.LogRecord("pmp_scrapy.test", logging.INFO, __file__, 1, "today", None, None))
        handler.doRollover()
    finally:
        handler.close()
    kept = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("pmp.log."))
    assert len(kept) == 2 and "pmp.log.2026-01-01" not in kept


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PMP_LOG_ROTATE", "weekly", "PMP_LOG_ROTATE must be one of daily, off, got 'weekly'"),
    ("PMP_LOG_BACKUPS", "-1", "PMP_LOG_BACKUPS must be a non-negative integer, got '-1'"),
])
def test_a_bad_log_setting_is_named(tmp_path: Path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_handler(log_settings(tmp_path / "pmp.log", {name: value}))
    assert str(info.value).startswith(message)


# --- Slack: nothing to say when the target was already met ------------------------------------------------

def page_of(systems: int) -> list[dict[str, Any]]:
    """One DCAPI page of ``systems`` systems with one patch each."""
    return [{"resource_id": k, "resource_name": f"PC-{k}", "patches": [
        {"patch_id": 1, "patchname": "KB1", "severity": "Critical", "patch_status": "Missing", "bulletinid": None,
         "vendor_name": "Microsoft", "installed_time": None}]} for k in range(systems)]


def prepared_database(db_path: Path, systems: int) -> None:
    """A complete one-page sweep whose page held ``systems`` systems."""
    store = Store(f"sqlite:///{db_path}")
    snapshot = store.start_snapshot("", 30)
    rows = page_rows(page_of(systems), 1)
    store.commit_batch(Batch(snapshot_id=snapshot, customer="", mappings=rows.mappings, systems=rows.systems,
                             last_page=1, total_pages=1, total_records=systems))
    store.close()


@pytest.mark.parametrize("covered", [10, 9])
@deferred_f_from_coro_f
async def test_slack_posts_nothing_when_the_run_finds_the_target_met(
        db_path: Path, slack: SlackReceiver, covered: int) -> None:
    """10 of 10 systems covered: the checkpoint extension ends the run at spider_opened
    (pmp_target_met) and Slack sends nothing at all. 9 of 10 (below 95%): the same run goes on,
    sweeps the page again (the same 9 systems) and Slack sends its closing message."""
    prepared_database(db_path, covered)
    crawler = component_crawler(db_path=db_path, PMP_TOTAL_SYSTEMS=10, PMP_BATCH_PAGES=1,
                                SLACK_WEBHOOK_URL=slack.url, PMP_SLACK_MIN_INTERVAL=0,
                                EXTENSIONS={"pmp_scrapy.extensions.checkpoint.Checkpoints": 100,
                                            "pmp_scrapy.extensions.slack.SlackNotifier": 300},
                                ITEM_PIPELINES={"pmp_scrapy.pipelines.MappingPipeline": 300})
    try:
        async with opened_spider(crawler):
            pipeline = crawler.get_item_pipeline(MappingPipeline)
            assert pipeline is not None
            run = get_run(crawler)
            assert run.snapshot_id is not None
            await pipeline.process_item(PatchPage(snapshot_id=run.snapshot_id, page=1, total_pages=1,
                                                  total_records=covered, rows=page_rows(page_of(covered), 1)))
    except CloseSpider as exc:
        assert exc.reason == "pmp_target_met"
    stats = crawler.stats.get_stats()
    assert len(slack.posts) == stats.get("pmp/slack/sent", 0)
    if covered == 10:
        assert stats.get("finish_reason") == "pmp_target_met" and stats.get("pmp/exit_code") == 0
        assert slack.posts == []
    else:
        assert stats.get("finish_reason") == "finished"
        assert stats.get("pmp/exit_code") == 2, stats.get("pmp/exit_message")  # a complete sweep below the target
        assert slack.texts and slack.texts[-1].startswith("✅ Batch complete")
        assert "⚠️ Partial: the sweep is complete but coverage is 9 of 10" in slack.texts[-1]


# --- the hook: killed with its process group at PMP_HOOK_TIMEOUT ----------------------------------------------

def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (a zombie waiting for its parent has ended too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@deferred_f_from_coro_f
async def test_a_hook_past_its_timeout_is_killed_with_what_it_started(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The hook starts a background child and waits for it; at PMP_HOOK_TIMEOUT the whole process
    group goes, the child included (killing only the shell would leave it running)."""
    pid_file = tmp_path / "child.pid"
    command = f"sleep 60 & echo $! > {shlex.quote(str(pid_file))}; wait"
    hook = build_from_crawler(PostExtractionHook, component_crawler(POST_EXTRACTION_HOOK=command,
                                                                   PMP_HOOK_TIMEOUT=0.5))
    started = time.monotonic()
    await hook.run_finished({"pages_committed": 1, "exit_code": 0})
    elapsed = time.monotonic() - started
    child = int(pid_file.read_text())
    try:
        assert gone(child), f"the hook's child {child} outlived the hook"
    finally:
        if not gone(child):
            os.kill(child, 9)  # ours: started by this test's hook
    assert 0.5 <= elapsed < 5
    assert hook.crawler.stats.get_value("pmp/hook_failed") is True
    [failed] = [r for r in caplog.records if getattr(r, "event_type", None) == "hook_failed"]
    assert failed.levelno == logging.WARNING and failed.reason == "timeout" and failed.timeout_s == 0.5


# --- spider arguments ---------------------------------------------------------------------------------------

def unstarted_crawler(**settings: Any) -> Any:
    """A crawler whose settings are not frozen yet: spider arguments become settings, as in
    ``scrapy crawl -a``."""
    runner = CrawlerRunner({"PMP_BASE_URL": UNUSED_URL, "PMP_ACCOUNTS_URL": UNUSED_URL, **settings})
    return runner.create_crawler(DcapiPatchesSpider)


@pytest.mark.parametrize(("arguments", "message"), [
    ({"customer": ""}, "customer must be a customer name, got ''"),
    ({"customer": "   "}, "customer must be a customer name, got ''"),
    ({"customer": "Acme\nCorp"}, "customer must be a customer name, got 'Acme\\nCorp'"),
    ({"customer": "Acme\tCorp"}, "customer must be a customer name, got 'Acme\\tCorp'"),
    ({"customer": "x" * 201}, f"customer must be a customer name, got '{'x' * 201}'"),
    ({"custmer": "Acme"}, "unknown spider argument 'custmer' (known: customer, demo, reset)"),
    ({"reset": "maybe"}, "reset must be 1/0, true/false or yes/no, got 'maybe'"),
])
def test_spider_arguments_are_refused_with_a_message_naming_them(arguments: dict[str, str], message: str) -> None:
    crawler = unstarted_crawler()
    with pytest.raises(ConfigError) as info:
        crawler._create_spider(**arguments)
    assert str(info.value) == message


def test_valid_spider_arguments_become_settings() -> None:
    crawler = unstarted_crawler()
    crawler._create_spider(customer="  Acme Corp ", reset="yes", _job="0f3c")  # _job: scrapyd's own
    config = get_config(crawler)
    assert (config.customer, config.customer_key, config.reset) == ("Acme Corp", "Acme Corp", True)
    assert crawler.settings.getpriority("PMP_CUSTOMER") == crawler.settings.getpriority("PMP_RESET") == 40
    longest = unstarted_crawler()
    longest._create_spider(customer="x" * 200)  # 200 characters is the most a name may have
    assert get_config(longest).customer == "x" * 200
