"""What every benchmark here does the same way: run the simulator in its own process, run a real
``scrapy crawl`` subprocess against it, measure that process (wall time, CPU time, peak RSS from
the kernel's own accounting at exit), read what it stored, and print the figures.

    from harness import CrawlProcess, simulator_process, stored

    with simulator_process(scenario) as url:
        crawl = CrawlProcess(url, f"sqlite:///{db}", PMP_PAGE_LIMIT=30).wait()
    print(crawl.line("clean sweep"), stored(db))

Peak RSS is ``ru_maxrss`` of the crawl process as ``wait4`` reports it when it exits: the
highest resident set it ever had, not a sample, and only its own (the simulator's memory never
counts). ``CrawlProcess`` may run several crawls at once (one per MSP customer).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario, Simulator

RSS_BUDGET_MB = 100.0  # spec NFR-1
#: -s settings of every benchmark crawl: the whole sweep in one run, quiet, no progress bar.
CRAWL_SETTINGS = {"PMP_BATCH_PAGES": "0", "LOG_LEVEL": "WARNING", "PMP_PROGRESS": "off"}


def crawl_environment(root: Path = ROOT) -> dict[str, str]:
    """This environment without any ``PMP_*`` value, plus what a crawl of the checkout at ``root``
    needs: the project on ``PYTHONPATH``, the simulator's OAuth credentials, no OS keyring."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMP_")}
    env.update({"PYTHONPATH": str(root), "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings",
                "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring",
                "PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"],
                "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
                "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"]})
    return env


@contextmanager
def simulator_process(scenario: Scenario | None = None) -> Iterator[str]:
    """``python -m pmp_scrapy.simulator`` on a free port with ``scenario`` (``None``: the default
    tenant); yields its URL and stops it afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "pmp_scrapy.simulator", "--port", "0"]
        if scenario is not None:
            path = Path(tmp) / "scenario.json"
            path.write_text(json.dumps(scenario.to_dict()))
            args += ["--scenario", str(path)]
        process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None
            yield process.stdout.readline().strip().rsplit(" ", 1)[-1]  # "... listening on URL"
        finally:
            process.terminate()
            process.wait(10)


def tenant_pages(scenario: Scenario | None = None, page_limit: int = 30, customer: str | None = None) -> int:
    """DCAPI's page count for ``scenario``'s tenant (``None``: the default one, 107 pages of 30),
    from the simulator's own data (nothing is served)."""
    return Simulator(scenario=scenario or Scenario()).total_pages(page_limit, customer)


@dataclass
class Crawl:
    """What one crawl process did, measured from outside."""

    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    stderr: str

    def line(self, label: str, mappings: int | None = None) -> str:
        text = (f"{label:<28} exit={self.exit_code} wall={self.wall_s:7.1f}s cpu={self.cpu_s:6.1f}s "
                f"rss_peak={self.peak_rss_mb:6.1f}MB")
        if mappings is not None:
            text += f" mappings={mappings:,} ({mappings / self.wall_s if self.wall_s else 0.0:,.0f}/s)"
        return text

    def budget_line(self) -> str:
        """Whether the crawl stayed inside the spec's memory budget."""
        verdict = "within" if self.peak_rss_mb < RSS_BUDGET_MB else "OVER"
        return (f"{'':<28} peak RSS {self.peak_rss_mb:.1f} MB: {verdict} the {RSS_BUDGET_MB:.0f} MB budget "
                f"(spec NFR-1), {RSS_BUDGET_MB - self.peak_rss_mb:+.1f} MB to spare")


class CrawlProcess:
    """``scrapy crawl dcapi_patches`` against ``url`` into ``database_url``, started at once with
    :data:`CRAWL_SETTINGS` and ``settings`` as ``-s`` (``customer``: ``-a customer=...``);
    :meth:`wait` measures it."""

    def __init__(self, url: str, database_url: str, *, customer: str | None = None, root: Path | None = None,
                 **settings: Any) -> None:
        values = {"PMP_BASE_URL": url, "PMP_ACCOUNTS_URL": url, "PMP_DATABASE_URL": database_url,
                  **CRAWL_SETTINGS, **{k: str(v) for k, v in settings.items()}}
        args = [sys.executable, "-m", "scrapy", "crawl", "dcapi_patches"]
        if customer is not None:
            args += ["-a", f"customer={customer}"]
        for name, value in values.items():
            args += ["-s", f"{name}={value}"]
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait(); a file, not a pipe, so nothing blocks on it
        self.started = time.monotonic()
        self.process = subprocess.Popen(args, cwd=root or ROOT, env=crawl_environment(root or ROOT), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=self._stderr)

    def wait(self) -> Crawl:
        """Wait for the crawl to exit; its figures."""
        _, status, usage = os.wait4(self.process.pid, 0)
        wall = time.monotonic() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self._stderr.seek(0)
        stderr = self._stderr.read().decode("utf-8", "replace")
        self._stderr.close()
        return Crawl(self.process.returncode, wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0,
                     stderr)


@dataclass
class Stored:
    """What a crawl left in an SQLite database."""

    mappings: int
    pages: int  # the checkpoint's page
    gaps: int

    def __str__(self) -> str:
        return f"mappings={self.mappings:,} pages={self.pages} gaps={self.gaps}"


def stored(db: Path) -> Stored:
    """Rows, checkpoint page and gaps in the SQLite file ``db``."""
    with sqlite3.connect(db) as conn:
        mappings = conn.execute("SELECT COUNT(*) FROM patch_system_mapping").fetchone()[0]
        pages = conn.execute("SELECT MAX(last_page) FROM dcapi_extraction_checkpoints").fetchone()[0] or 0
        gaps = conn.execute("SELECT COUNT(*) FROM dcapi_extraction_gaps").fetchone()[0]
    return Stored(mappings, pages, gaps)
