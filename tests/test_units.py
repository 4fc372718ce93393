"""Pure logic, no Scrapy engine: config parsing, backoff, Retry-After, watermark, redaction,
envelope parsing, row normalisation, batch buffering and the process footprint measures."""

from __future__ import annotations

import platform
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import project_settings
from scrapy.settings import Settings

from pmp_scrapy.config import apply_environment, apply_spider_arguments, derive_accounts_url, load_config
from pmp_scrapy.envelope import PayloadError, parse_envelope
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.middlewares.backoff import backoff_delay, parse_retry_after, retry_wait
from pmp_scrapy.plan import Watermark
from pmp_scrapy.redaction import redact, response_sample
from pmp_scrapy.rows import page_rows
from pmp_scrapy.storage import Batch, ordered_unique
from pmp_scrapy.zoho import token_lifetime

BASE = {"PMP_BASE_URL": "https://patch.manageengine.com.au"}


def config(**values: object):
    return load_config(project_settings(**{**BASE, **values}))


@pytest.mark.parametrize(("name", "value", "message"), [
    ("PMP_PAGE_LIMIT", "abc", "PMP_PAGE_LIMIT must be a positive integer, got 'abc'"),
    ("PMP_PAGE_LIMIT", "0", "PMP_PAGE_LIMIT must be a positive integer, got '0'"),
    ("PMP_BATCH_PAGES", "-1", "PMP_BATCH_PAGES must be a non-negative integer, got '-1'"),
    ("PMP_COVERAGE_TARGET", "1.5", "PMP_COVERAGE_TARGET must be a number greater than 0 and at most 1, got '1.5'"),
    ("PMP_AUTH", "basic", "PMP_AUTH must be one of oauth, apikey, got 'basic'"),
    ("PMP_BASE_URL", "patch.manageengine.com", "PMP_BASE_URL must be an http(s) URL"),
    ("PMP_DATABASE_URL", "mysql://x/y", "PMP_DATABASE_URL must use sqlite or postgresql, got 'mysql'"),
])
def test_bad_settings_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(**{name: value})
    assert str(info.value).startswith(message)


def test_base_url_required_outside_demo() -> None:
    with pytest.raises(ConfigError, match="PMP_BASE_URL is required"):
        load_config(project_settings())


def test_defaults_follow_the_contract() -> None:
    cfg = config()
    assert (cfg.page_limit, cfg.batch_pages, cfg.checkpoint_every) == (30, 50, 10)
    assert cfg.coverage_target == 0.95 and cfg.token_refresh_ratio == 0.8 and cfg.token_default_ttl == 56
    assert (cfg.max_attempts, cfg.backoff_base, cfg.max_retry_after) == (3, 1.0, 300)
    # DOWNLOAD_DELAY is Scrapy's own setting; PMPConfig no longer copies it (nothing read the copy).
    assert project_settings().getfloat("DOWNLOAD_DELAY") == 0.25
    assert cfg.database_url.endswith("/.maia/databases/intelligence/pmp_config.db")
    assert cfg.token_url == "https://accounts.zoho.com.au/oauth/v2/token"


@pytest.mark.parametrize(("base", "accounts"), [
    ("https://patch.manageengine.com", "https://accounts.zoho.com"),
    ("https://patch.manageengine.eu", "https://accounts.zoho.eu"),
    ("https://patch.manageengine.in", "https://accounts.zoho.in"),
    ("https://patch.manageengine.com.au", "https://accounts.zoho.com.au"),
    ("https://patch.manageengine.jp", "https://accounts.zoho.jp"),
    ("https://patch.manageengine.ca", "https://accounts.zohoone.ca"),
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ("https://pmp.corp.example", None),
])
def test_accounts_server_follows_the_data_centre(base: str, accounts: str | None) -> None:
    assert derive_accounts_url(base) == accounts


def test_environment_loses_to_command_line_and_beats_settings_py() -> None:
    settings = project_settings(PMP_BATCH_PAGES=7)
    apply_environment(settings, {"PMP_BATCH_PAGES": "9", "PMP_PAGE_LIMIT": "5", "PMP_CLIENT_SECRET": "s3cr3t"})
    assert settings.getint("PMP_BATCH_PAGES") == 7
    assert settings.getint("PMP_PAGE_LIMIT") == 5
    assert settings.get("PMP_CLIENT_SECRET") is None  # secrets are never copied into settings


def test_spider_arguments_are_validated_by_name() -> None:
    settings = Settings()
    with pytest.raises(ConfigError, match="reset must be 1/0"):
        apply_spider_arguments(settings, {"reset": "maybe"})
    with pytest.raises(ConfigError, match="unknown spider argument 'rest'"):
        apply_spider_arguments(settings, {"rest": "1"})
    apply_spider_arguments(settings, {"reset": "yes", "customer": "Acme"})
    assert settings.getbool("PMP_RESET") and settings.get("PMP_CUSTOMER") == "Acme"


def test_backoff_doubles() -> None:
    assert [backoff_delay(1.0, n) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert backoff_delay(0.5, 3) == 2.0


def test_retry_after_seconds_and_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after(b"2") == 2.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert retry_wait(429, b"2", attempt=1, base=1.0, cap=300) == 2.0
    assert retry_wait(429, b"9999", attempt=1, base=1.0, cap=300) == 300
    assert retry_wait(429, None, attempt=2, base=1.0, cap=300) == 2.0
    assert retry_wait(503, b"50", attempt=3, base=1.0, cap=300) == 4.0


def test_token_lifetime() -> None:
    assert token_lifetime({"expires_in": 3600}, 56) == 3600
    assert token_lifetime({"expires_in": 3600000}, 56) == 3600  # milliseconds, older Zoho services
    assert token_lifetime({"expires_in_sec": 3600, "expires_in": 3600000}, 56) == 3600
    assert token_lifetime({}, 56) == 56


def test_watermark_waits_for_the_lowest_page() -> None:
    mark = Watermark(10)
    assert mark.mark(12) == 10
    assert mark.peek([11]) == 12 and mark.value == 10
    assert mark.mark(11) == 12
    assert mark.mark(5) == 12


def test_redaction() -> None:
    text = "mail admin@example.com from 10.20.30.40 or 2001:db8::1 at 12:30:45, Zoho-oauthtoken 1000.abc.def"
    out = redact(text)
    assert "admin@example.com" not in out and "10.20.30.40" not in out and "2001:db8::1" not in out
    assert "1000.abc.def" not in out and "12:30:45" in out
    sample = response_sample(("x" * 1020 + " admin@example.com").encode())
    assert len(sample.encode()) <= 1024 and "admin@" not in sample


@pytest.mark.parametrize(("body", "error_type"), [
    (b"", "json_parse_error"),
    (b"   ", "json_parse_error"),
    (b"<html><body>Internal Server Error</body></html>", "json_parse_error"),
    (b'{"metadata": {"totalPages": 3', "json_parse_error"),
    (b"[]", "invalid_payload"),
    (b'{"metadata": {"totalPages": 3, "totalRecords": 9}}', "invalid_payload"),
    (b'{"metadata": {"totalPages": 3, "totalRecords": 9}, "message_response": {"systemreport": {}}}', "invalid_payload"),
    (b'{"metadata": {"totalPages": "x", "totalRecords": 9}, "message_response": {"systemreport": []}}', "invalid_payload"),
])
def test_bad_envelopes_are_classified(body: bytes, error_type: str) -> None:
    with pytest.raises(PayloadError) as info:
        parse_envelope(body)
    assert info.value.error_type == error_type


def test_rows_normalise_ids_skip_and_dedupe() -> None:
    systems = [
        {"resource_id": 10001, "resource_name": "PC-Zürich", "patches": [
            {"patch_id": 5, "patchname": "a", "severity": "Critical", "patch_status": "Installed",
             "bulletinid": None, "vendor_name": "Microsoft", "installed_time": "1634567890000"},
            {"patch_id": "5", "patchname": "a", "severity": "Critical", "patch_status": "Installed",
             "bulletinid": None, "vendor_name": "Microsoft", "installed_time": "1634567890000"},
            {"patchname": "no id"},
        ]},
        {"resource_id": "10002", "resource_name": "empty", "patches": []},
        {"resource_name": "no id at all", "patches": []},
    ]
    rows = page_rows(systems, 1)
    assert rows.mappings == [("10001", "5", "a", "Critical", "Installed", None, "Microsoft", "1634567890000")]
    assert (rows.duplicate_patches, rows.skipped_patches, rows.empty_systems, rows.skipped_systems) == (1, 1, 1, 1)
    assert [s["resource_id"] for s in rows.systems] == ["10001", "10002"]


def row(rid: str, pid: str, status: str = "Missing") -> tuple[str | None, ...]:
    return (rid, pid, f"KB{pid}", "Critical", status, None, "Microsoft", None)


def test_batch_buffers_pages_packed_and_gives_them_back_in_order() -> None:
    pages = [[row("2", "1"), row("2", "3")], [row("1", "9")], []]
    batch = Batch(snapshot_id=1, customer="")
    for rows in pages:
        batch.add_mappings(rows)
    assert batch.mapping_count == 3
    assert list(batch.mapping_pages()) == pages[:2]  # an empty page adds nothing
    assert list(batch.mapping_pages()) == pages[:2]  # and can be read again (a retried transaction)
    assert list(Batch(snapshot_id=1, customer="", mappings=pages[0]).mapping_pages()) == [pages[0]]


def test_ordered_unique_sorts_by_key_and_lets_the_later_row_win() -> None:
    rows = [row("20", "2"), row("20", "1"), row("10", "5", "Missing"), row("20", "3"),
            row("10", "5", "Installed"), row("10", "4")]
    assert list(ordered_unique(rows)) == [
        row("10", "4"), row("10", "5", "Installed"), row("20", "1"), row("20", "2"), row("20", "3")]
    assert list(ordered_unique([])) == []


def test_the_package_keeps_pydantic_out_and_pins_the_mmap_threshold() -> None:
    """itemadapter (imported by every Scrapy command) would otherwise import pydantic when it is
    installed: ~7 MB of the 100 MB budget (spec NFR-1)."""
    probe = ("import pmp_scrapy.settings, itemadapter, sys; from pmp_scrapy.footprint import fix_mmap_threshold; "
             "print('pydantic' in sys.modules and sys.modules['pydantic'] is not None, fix_mmap_threshold())")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout.split()
    assert out[0] == "False"
    if platform.libc_ver()[0] == "glibc":
        assert out[1] == "True"


def test_the_crawl_process_shares_one_heap_and_keeps_a_small_sqlite_cache(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The commits' worker thread and the reactor thread reuse each other's freed memory (one
    glibc arena), SQLite's page cache is 1 MB and its driver keeps 16 prepared statements, and
    the telnet console's module is not even imported: together about 6 MB of the 100 MB budget
    (spec NFR-1)."""
    from sqlite3 import dbapi2  # what SQLAlchemy's SQLite dialect connects with

    from sqlalchemy import text

    from pmp_scrapy import settings
    from pmp_scrapy.footprint import one_arena
    from pmp_scrapy.storage.engine import SQLITE_CACHE_KIB, SQLITE_CACHED_STATEMENTS, open_engine

    connects: list[dict[str, Any]] = []
    real_connect = dbapi2.connect

    def connect(*args: Any, **kwargs: Any) -> dbapi2.Connection:
        connects.append(kwargs)
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(dbapi2, "connect", connect)

    if platform.libc_ver()[0] == "glibc":
        probe = "from pmp_scrapy.footprint import one_arena; print(one_arena())"
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parent.parent).stdout.strip()
        assert out == "True"
    else:
        assert one_arena() is False
    engine = open_engine(f"sqlite:///{tmp_path / 'pmp.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA cache_size")).scalar_one() == -SQLITE_CACHE_KIB
        assert connects and all(kwargs["cached_statements"] == SQLITE_CACHED_STATEMENTS for kwargs in connects)
    finally:
        engine.dispose()
    assert not any(key.endswith("TelnetConsole") for key in settings.EXTENSIONS_BASE)


def test_once_the_run_is_over_a_ctrl_c_is_ignored_and_sigterm_exits_with_the_runs_code() -> None:
    """A second quick Ctrl-C that lands while the finished process shuts down killed it (exit -2
    for a run recorded as 2)."""
    probe = ("import os, signal, time; from pmp_scrapy.extensions.shutdown import settle_signals; settle_signals(2); "
             "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2); print('alive', flush=True); "
             "os.kill(os.getpid(), signal.SIGTERM); time.sleep(10)")
    done = subprocess.run([sys.executable, "-c", probe], check=False, capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout == "alive\n" and done.returncode == 2, done.stderr
