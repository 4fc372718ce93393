"""Benchmark: a full sweep of the default simulator tenant at real-world latency, paced.

The simulator runs in its own process (``python -m pmp_scrapy.simulator --scenario FILE``)
answering every PMP request after ``--latency`` seconds (0.3 and 2.5 by default), with its
strict rate limiter on (4 a second, HTML throttle page); the crawl is a real ``scrapy crawl``
subprocess with the pacer and the no-silent-retry download handler enabled (until settings.py
registers them, through ``-s``). Prints, per latency: wall time (process start to exit) and
the server's span (first arrival to last answer) against the rate limit's bound (pages ×
0.25 s; the pacer's 4 % margin alone makes 1.04×) and against what all its PMP requests
(inventory, catalog, retries too) need at 4 a second, peak RSS of the crawl process (``VmHWM`` sampled from /proc), the most
requests the server held at once and the most arrivals in any one second (both from the
simulator's own record), requests it refused for rate, and the requests in flight over time.

    python benchmarks/pace.py                      # 0.3 s and 2.5 s (the latter ~30 s)
    python benchmarks/pace.py --latency 2.5 --jitter 0.5
    python benchmarks/pace.py --stock              # the same sweeps at settings.py as it ships
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from harness import simulator_process

from pmp_scrapy import settings as project_settings
from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario
from pmp_scrapy.simulator.api import PMP_KINDS

LIMIT_DELAY = 0.25  # the contract: at most 4 requests a second
HANDLER = "pmp_scrapy.http.NoSilentRetryDownloadHandler"
PACED = {
    "DOWNLOAD_HANDLERS": json.dumps({"http": HANDLER, "https": HANDLER}),
    "EXTENSIONS": json.dumps({**project_settings.EXTENSIONS, "pmp_scrapy.extensions.pacer.Pacer": 500}),
    "AUTOTHROTTLE_ENABLED": "False",
    "CONCURRENT_REQUESTS": "20",
}
RSS_BUDGET_MB = 100.0  # spec NFR-1


@dataclass
class Sweep:
    label: str
    exit_code: int
    wall_s: float
    span_s: float  # first arrival to last answer, as the server saw them
    peak_rss_mb: float
    pages: int
    gaps: int
    most_at_once: int
    most_in_a_second: int
    refused: int
    connections: int  # TCP connections the requests came on
    requests: dict[str, int]  # PMP requests by kind (pages, inventory, catalog ...), retries included
    in_flight: list[int]  # held by the server, every TIMELINE_STEP seconds

    def lines(self) -> list[str]:
        bound = self.pages * LIMIT_DELAY
        verdict = "within" if self.peak_rss_mb < RSS_BUDGET_MB else "OVER"
        every = sum(self.requests.values()) * LIMIT_DELAY
        kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(self.requests.items()))
        return [
            (f"{self.label:<24} exit={self.exit_code} wall={self.wall_s:6.1f}s ({self.wall_s / bound:.2f}x the "
             f"bound {bound:.1f}s); server span={self.span_s:6.1f}s ({self.span_s / bound:.2f}x) "
             f"pages={self.pages} gaps={self.gaps}"),
            (f"{'':<24} requests: {kinds}; at 4 a second they need {every:.1f}s: span {self.span_s / every:.2f}x "
             f"that"),
            (f"{'':<24} peak RSS {self.peak_rss_mb:.1f} MB ({verdict} {RSS_BUDGET_MB:.0f} MB); "
             f"most held at once {self.most_at_once}; most arrivals in 1 s {self.most_in_a_second}; "
             f"refused for rate {self.refused}; {self.connections} connections"),
            f"{'':<24} in flight every {TIMELINE_STEP:g}s: {' '.join(map(str, self.in_flight))}",
        ]


TIMELINE_STEP = 2.0


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set (``VmHWM``), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return None


def crawl(url: str, db: Path, extra: dict[str, str]) -> tuple[int, float, float]:
    """Run the sweep; returns exit code, wall seconds and peak RSS (MB)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings",
           "PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"], "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
           "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"],
           "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    settings = {"PMP_BASE_URL": url, "PMP_ACCOUNTS_URL": url, "PMP_DATABASE_URL": f"sqlite:///{db}",
                "PMP_BATCH_PAGES": "0", "DOWNLOAD_DELAY": str(LIMIT_DELAY), "LOG_LEVEL": "WARNING",
                "PMP_PROGRESS": "off", **extra}
    args = [sys.executable, "-m", "scrapy", "crawl", "dcapi_patches"]
    for name, value in settings.items():
        args += ["-s", f"{name}={value}"]
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mb(proc.pid) or 0.0)
        time.sleep(0.05)  # the benchmark's own process, not a reactor
    return proc.returncode, time.monotonic() - started, peak


def server_record(url: str) -> tuple[list[dict[str, Any]], int]:
    """The simulator's PMP requests and how many it refused for rate."""
    with urllib.request.urlopen(f"{url}/_sim/requests") as answer:
        records = [r for r in json.load(answer) if r["kind"] in PMP_KINDS]
    with urllib.request.urlopen(f"{url}/_sim/info") as answer:
        refused = int(json.load(answer).get("rate_limited", 0))
    return records, refused


def held_at(records: list[dict[str, Any]], t: float) -> int:
    return sum(r["t"] <= t < (r["answered"] or r["t"]) for r in records)


def most_in_window(times: list[float], window: float = 1.0) -> int:
    times, best, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def sweep(label: str, scenario: Scenario, extra: dict[str, str]) -> Sweep:
    with tempfile.TemporaryDirectory() as tmp:
        with simulator_process(scenario) as url:
            exit_code, wall, peak = crawl(url, Path(tmp) / "bench.db", extra)
            records, refused = server_record(url)
        with sqlite3.connect(Path(tmp) / "bench.db") as conn:
            pages = conn.execute("SELECT MAX(last_page) FROM dcapi_extraction_checkpoints").fetchone()[0] or 0
            gaps = conn.execute("SELECT COUNT(*) FROM dcapi_extraction_gaps").fetchone()[0]
    first = min(r["t"] for r in records)
    last = max(r["answered"] or r["t"] for r in records)
    steps = int((last - first) / TIMELINE_STEP) + 1
    return Sweep(label, exit_code, wall, last - first, peak, pages, gaps,
                 most_at_once=max(held_at(records, r["t"]) for r in records),
                 most_in_a_second=most_in_window([r["t"] for r in records]), refused=refused,
                 connections=len({r["connection"] for r in records}),
                 requests=dict(Counter(r["kind"] for r in records)),
                 in_flight=[held_at(records, first + k * TIMELINE_STEP) for k in range(steps)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, action="append", help="seconds per answer (repeatable)")
    parser.add_argument("--jitter", type=float, default=0.0, help="± uniform seconds on each answer")
    parser.add_argument("--stock", action="store_true", help="settings.py as it ships, no pacer (slow at 2.5 s)")
    args = parser.parse_args()
    for latency in args.latency or [0.3, 2.5]:
        scenario = Scenario(latency=latency, latency_jitter=args.jitter,
                            rate_limit={"max_per_second": 4, "reply": "html_200"})
        extra = {"AUTOTHROTTLE_ENABLED": "True"} if args.stock else PACED
        label = f"{'stock' if args.stock else 'paced'}, {latency:g}s/page"
        for line in sweep(label, scenario, extra).lines():
            print(line, flush=True)


if __name__ == "__main__":
    main()
