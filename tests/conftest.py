"""Shared fixtures: the simulator, temporary databases, in-process and subprocess crawls."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scrapy import Spider
from scrapy.crawler import CrawlerRunner
from scrapy.exceptions import CloseSpider
from scrapy.settings import Settings
from scrapy.utils.test import get_crawler

from pmp_scrapy.simulator import DEMO_CREDENTIALS, DatasetSpec, Scenario, Simulator
from pmp_scrapy.spiders.dcapi_patches import DcapiPatchesSpider

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

ROOT = Path(__file__).resolve().parent.parent
SECRET_ENV = ("PMP_CLIENT_ID", "PMP_CLIENT_SECRET", "PMP_REFRESH_TOKEN", "PMP_API_KEY", "SLACK_WEBHOOK_URL")

# The simulator's default tenant: 3,317 managed systems, of which DCAPI reports 3,210 (107 pages of 30).
DEFAULT_MANAGED, DEFAULT_DCAPI, DEFAULT_PAGES, DEFAULT_MAPPINGS = 3317, 3210, 107, 161_611
# Data sets the crawl tests share (no system without patches, so pages are full).
THREE_PAGES = DatasetSpec(managed_systems=90, no_patch_share=0.0)  # 3 pages of 30
SEVEN_PAGES = DatasetSpec(managed_systems=200, no_patch_share=0.0)  # 7 pages of 30, 40 pages of 5
TEN_PAGES = DatasetSpec(managed_systems=300, no_patch_share=0.0)  # 10 pages of 30
#: The settings of a test sweep: every page in one run, a checkpoint every 3 pages.
SWEEP: dict[str, Any] = {"PMP_BATCH_PAGES": 0, "PMP_CHECKPOINT_EVERY": 3}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PMP_* value of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.startswith("PMP_") or name in SECRET_ENV or name in ("POST_EXTRACTION_HOOK", "DOWNLOAD_DELAY"):
            monkeypatch.delenv(name, raising=False)
    # Credentials come from the environment in tests; keep the real keyring out of it.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    """A fresh simulator (default data set, no faults) on an ephemeral port."""
    with Simulator(scenario=Scenario()) as sim:
        yield sim


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "pmp.db"


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """A log file path in the test's directory (``LOG_FILE``); the log handler a crawl installed
    for it is removed afterwards."""
    from pmp_scrapy.logformat import uninstall_log_handler

    yield tmp_path / "pmp.log"
    uninstall_log_handler()


def oauth_env(sim: Simulator | None = None) -> dict[str, str]:
    """Environment carrying the simulator's OAuth credentials (every simulator's: the demo ones)."""
    return {
        "PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"],
        "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
        "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"],
    }


def project_settings(**values: Any) -> Settings:
    """This project's ``settings.py`` with ``values`` at command-line priority (``-s``)."""
    settings = Settings()
    settings.setmodule("pmp_scrapy.settings", priority="project")
    for name, value in values.items():
        settings.set(name, value, priority="cmdline")
    return settings


def crawl_settings(sim: Simulator, db_path: Path, **overrides: Any) -> Settings:
    """Project settings pointed at ``sim`` and ``db_path``; ``overrides`` at command-line priority."""
    return project_settings(**{
        "PMP_BASE_URL": sim.url,
        "PMP_ACCOUNTS_URL": sim.url,
        "PMP_DATABASE_URL": f"sqlite:///{db_path}",
        "DOWNLOAD_DELAY": 0,
        "AUTOTHROTTLE_ENABLED": False,
        "PMP_BACKOFF_BASE": 0.05,
        "LOG_LEVEL": "INFO",
        **overrides,
    })


@dataclass
class CrawlResult:
    stats: dict[str, Any]
    exit_code: int | None
    close_reason: str | None
    extra: dict[str, Any] = field(default_factory=dict)
    #: the simulator's request record right after the crawl (crawl_against fills it)
    requests: list[Any] = field(default_factory=list)


async def run_crawl(settings: Settings, monkeypatch: pytest.MonkeyPatch | None = None,
                    env: dict[str, str] | None = None, **spider_args: Any) -> CrawlResult:
    """One real crawl in this process (pytest-twisted, asyncio reactor)."""
    if env:
        for name, value in env.items():
            if monkeypatch is not None:
                monkeypatch.setenv(name, value)
            else:
                os.environ[name] = value
    runner = CrawlerRunner(settings)
    crawler = runner.create_crawler(DcapiPatchesSpider)
    await crawler.crawl(**spider_args)
    stats = crawler.stats.get_stats()
    return CrawlResult(stats, stats.get("pmp/exit_code"), stats.get("finish_reason"))


class CrawlAgainst:
    """``await crawl_against(sim, **names)``: one real crawl in this process against ``sim``, into
    the test's ``db_path``, with the simulator's OAuth credentials in the environment (``env=``
    replaces them) and :data:`SWEEP` under ``names``. Upper-case names are settings at
    command-line priority (a ``Path`` becomes its text: ``LOG_FILE=log_file``); lower-case ones
    are spider arguments (``customer="acme"``, ``reset="1"``). The result carries the
    simulator's request record as the crawl left it (``result.requests``)."""

    def __init__(self, db_path: Path, monkeypatch: pytest.MonkeyPatch, defaults: dict[str, Any] | None = None) -> None:
        self.db_path = db_path
        self.monkeypatch = monkeypatch
        self.defaults = {**SWEEP, **(defaults or {})}

    async def __call__(self, sim: Simulator, *, env: dict[str, str] | None = None, **names: Any) -> CrawlResult:
        given = {k: str(v) if isinstance(v, Path) else v for k, v in names.items() if k.isupper()}
        arguments = {k: v for k, v in names.items() if not k.isupper()}
        result = await run_crawl(crawl_settings(sim, self.db_path, **{**self.defaults, **given}), self.monkeypatch,
                                 env=oauth_env(sim) if env is None else env, **arguments)
        result.requests = sim.requests
        return result


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "crawl_defaults(**settings): settings every crawl_against crawl of the "
                                       "marked tests uses (over SWEEP, under those a call names)")


# Modules whose tests measure time as the server or the clock sees it (arrivals per second, a stop
# within seconds, a wait of exactly the timeout): they run alone, after the rest ran in parallel
# (README's test command: ``-m "not serial"`` with several workers, then ``-m serial``), so that
# other tests' load never stretches what they measure.
SERIAL_MODULES = frozenset({
    "test_catalog", "test_components_ops", "test_components_storage", "test_credentials", "test_customer_all",
    "test_customers", "test_database_faults", "test_expected_pages", "test_hook", "test_pacing", "test_postgres",
    "test_resume", "test_retries", "test_send_spacing", "test_simulator_catalog", "test_simulator_tenant",
    "test_simulator_traffic", "test_slack", "test_stops", "test_tenant_lock", "test_terminal", "test_tokens",
})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.stem in SERIAL_MODULES:
            item.add_marker(pytest.mark.serial)


@pytest.fixture
def crawl_against(db_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> CrawlAgainst:
    """See :class:`CrawlAgainst`; a module's ``pytestmark = pytest.mark.crawl_defaults(...)`` sets
    the settings its crawls share."""
    marker = request.node.get_closest_marker("crawl_defaults")
    return CrawlAgainst(db_path, monkeypatch, marker.kwargs if marker else None)


def crawl_env(sim: Simulator, database: Path | str, **extra: Any) -> dict[str, str]:
    """The environment of a ``scrapy crawl`` subprocess against ``sim`` into ``database`` (an
    SQLite file, or a database URL): the simulator's OAuth credentials and URLs, no delay, a short
    backoff, then ``extra`` (values as text)."""
    url = database if isinstance(database, str) else f"sqlite:///{database}"
    return {**oauth_env(sim), "PMP_BASE_URL": sim.url, "PMP_ACCOUNTS_URL": sim.url, "PMP_DATABASE_URL": url,
            "DOWNLOAD_DELAY": "0", "PMP_BACKOFF_BASE": "0.05", **{k: str(v) for k, v in extra.items()}}


# --- component tests: one component built as Scrapy's own tests build one, no crawl ----------------

UNUSED_URL = "http://127.0.0.1:9"  # nothing listens there: a component that calls out fails at once


def component_crawler(spidercls: type[Spider] = DcapiPatchesSpider, *, sim: Simulator | None = None,
                      db_path: Path | None = None, **settings: Any) -> Crawler:
    """``scrapy.utils.test.get_crawler``: Scrapy's defaults and what this project's components
    read, pointed at ``sim`` (else :data:`UNUSED_URL`) and ``db_path``, with ``settings`` on top
    (project priority). No add-on runs (no log handler, no environment folded in) and only the
    ``EXTENSIONS``, ``DOWNLOADER_MIDDLEWARES`` and ``ITEM_PIPELINES`` given are enabled. Build a
    component from it with ``build_from_crawler`` and call its handlers."""
    url = sim.url if sim is not None else UNUSED_URL
    values: dict[str, Any] = {
        "PMP_BASE_URL": url, "PMP_ACCOUNTS_URL": url,
        "PMP_DATABASE_URL": f"sqlite:///{db_path}" if db_path is not None else "sqlite:///:memory:",
        "DOWNLOAD_DELAY": 0, "PMP_BACKOFF_BASE": 0.05, "LOG_LEVEL": "DEBUG",
        **settings,
    }
    return get_crawler(spidercls, settings_dict=values)


@asynccontextmanager
async def opened_spider(crawler: Crawler, *, reason: str = "finished") -> AsyncIterator[Spider]:
    """The crawler's spider, opened by a real engine that is never started: ``spider_opened``
    is sent and a component may download (``engine.download_async``) or close the spider, but no
    start request is scheduled. On exit the spider is closed with ``reason`` (``spider_closed``
    sent) unless something closed it already. A component refusing the run at ``spider_opened``
    (``CloseSpider``) closes it with that reason, as ``Crawler.crawl`` does, and the
    ``CloseSpider`` propagates. Run under ``deferred_f_from_coro_f``."""
    crawler.spider = crawler._create_spider()
    crawler.engine = crawler._create_engine()
    try:
        await crawler.engine.open_spider_async()
    except CloseSpider as exc:
        await crawler.engine.close_async(reason=exc.reason)
        raise
    try:
        yield crawler.spider
    finally:
        if crawler.engine.spider is not None:
            await crawler.engine.close_spider_async(reason=reason)


def scrapy_command(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                   timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``scrapy ARGS`` in a subprocess, as a user or cron would run it."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PMP_") and k not in SECRET_ENV}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["SCRAPY_SETTINGS_MODULE"] = "pmp_scrapy.settings"
    full_env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "scrapy", *args], cwd=cwd or ROOT, env=full_env, check=False,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def db_rows(db_path: Path, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read rows straight from the SQLite file, not through the project's code."""
    with sqlite3.connect(db_path) as conn:
        return conn.execute(query, params).fetchall()


def mapping_table(db_path: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    """patch_system_mapping as {(resource_id, patch_id): fields}."""
    rows = db_rows(db_path, "SELECT resource_id, patch_id, patchname, severity, patch_status, bulletinid, "
                            "vendor_name, installed_time FROM patch_system_mapping")
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def expected_table(sim: Simulator, customer: str | None = None) -> dict[tuple[str, str], tuple[Any, ...]]:
    """What the simulator serves, in the same shape as :func:`mapping_table`."""
    names = ("patchname", "severity", "patch_status", "bulletinid", "vendor_name", "installed_time")
    return {(rid, pid): tuple(fields[n] for n in names) for rid, pid, fields in sim.expected_mappings(customer)}


def page_attempts(sim: Simulator, page: int, *, abandoned: int = 0) -> list[Any]:
    """The requests for DCAPI ``page`` as the server recorded them, in arrival order. The
    simulator records a request before it answers, so every request whose answer the client saw
    is there once the crawl is over. A slow answer the client gave up on (a ``slow`` fault past
    ``DOWNLOAD_TIMEOUT``) is recorded only when its server thread wakes from the fault's delay:
    give their number as ``abandoned`` to wait (at most 5 s) for them too."""
    deadline = time.monotonic() + 5
    while True:
        found = [r for r in sim.requests if r.kind == "page" and r.page == page]
        if sum(1 for r in found if r.fault == "slow") >= abandoned or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def page_requests(sim: Simulator) -> list[int]:
    """The DCAPI page numbers the server was asked for, in arrival order."""
    return [r.page for r in sim.requests if r.kind == "page"]


def page_request_times(sim: Simulator) -> list[float]:
    return [r.t for r in sim.requests if r.kind == "page"]


def max_requests_in_window(times: list[float], window: float = 1.0) -> int:
    """Largest number of requests whose arrival times fit in a half-open ``window``."""
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def assert_no_secrets(blobs: dict[str, bytes | str], secrets: list[str]) -> None:
    """No secret value appears in any of ``blobs`` (log, stdout, stderr, database bytes …)."""
    for name, blob in blobs.items():
        data = blob.encode("utf-8", "replace") if isinstance(blob, str) else blob
        for secret in secrets:
            if secret and secret.encode() in data:
                raise AssertionError(f"a secret ({secret[:4]}…) appears in {name}")


# --- Slack receiver and JSON log helpers (operations tests) ----------------------------------------

@dataclass
class SlackPost:
    t: float
    path: str
    payload: dict[str, Any]
    raw: bytes


class SlackReceiver:
    """A local stand-in for Slack's incoming webhook: records every POST and answers with
    ``status`` (after ``delay`` seconds). Its URL is http on loopback, which the notifier accepts
    for tests only (any other Slack URL must be https)."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        import threading
        import time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.status, self.delay = status, delay
        self.posts: list[SlackPost] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    payload = json.loads(raw)
                except ValueError:
                    payload = {}
                receiver.posts.append(SlackPost(time.monotonic(), self.path, payload, raw))
                if receiver.delay:
                    time.sleep(receiver.delay)  # a thread of the test server, not the reactor
                body = b"ok" if receiver.status == 200 else b"no_service"
                self.send_response(receiver.status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        # The path stands in for Slack's secret part: it must never reach a log.
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/services/T0SECRET/B0SECRET/hookSecret0123456789"

    @property
    def texts(self) -> list[str]:
        return [p.payload.get("text", "") for p in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack() -> Iterator[SlackReceiver]:
    receiver = SlackReceiver()
    yield receiver
    receiver.close()


def json_log_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON log file, parsed (fails on a line that is not one JSON object)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    assert all(isinstance(r, dict) for r in records)
    return records


def scrapy_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment :func:`scrapy_command` gives a subprocess (for callers needing Popen)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("PMP_") and k not in SECRET_ENV}
    full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
    full_env["SCRAPY_SETTINGS_MODULE"] = "pmp_scrapy.settings"
    full_env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
    full_env.update(env or {})
    return full_env


def sigkill_crawl_when(env: dict[str, str], ready: Callable[[], bool], *, timeout: float = 60,
                       poll: float = 0.05) -> None:
    """``scrapy crawl dcapi_patches`` in a subprocess (``env`` as :func:`crawl_env` makes it),
    killed with SIGKILL as soon as ``ready()`` says so (it is asked every ``poll`` seconds while
    the run goes on, at most ``timeout`` seconds); fails if the run ended before."""
    process = subprocess.Popen(
        [sys.executable, "-m", "scrapy", "crawl", "dcapi_patches", "-s", "AUTOTHROTTLE_ENABLED=False"],
        cwd=ROOT, env=scrapy_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            if ready():
                break
            time.sleep(poll)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL


def scrapy_on_terminal(args: list[str], *, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    """``scrapy ARGS`` with stderr on a pseudo-terminal (as a person at a shell); returns the exit
    code, stdout and what the terminal showed."""
    import pty
    import threading

    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    process = subprocess.Popen([sys.executable, "-m", "scrapy", *args], cwd=ROOT, env=scrapy_env(env),
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    try:
        stdout, _ = process.communicate(timeout=timeout)
    finally:
        reader.join(timeout=5)
        os.close(master)
    return process.returncode, stdout.decode("utf-8", "replace"), b"".join(chunks).decode("utf-8", "replace")
