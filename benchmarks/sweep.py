"""Benchmark: full DCAPI sweeps against the local simulator, measured from outside.

Prints wall time, CPU time, mappings a second and peak RSS of the crawl process (a real
``scrapy crawl`` subprocess; the simulator runs in its own process so it does not count).

    python benchmarks/sweep.py                  # no delay, then the default 0.25 s delay
    python benchmarks/sweep.py --only fast      # DOWNLOAD_DELAY=0 only
    python benchmarks/sweep.py --faults 120     # adds a sweep with 120 injected transient faults
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
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario  # noqa: E402


@dataclass
class Figures:
    label: str
    exit_code: int
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    mappings: int
    pages: int
    gaps: int

    def line(self) -> str:
        rate = self.mappings / self.wall_s if self.wall_s else 0.0
        return (f"{self.label:<28} exit={self.exit_code} wall={self.wall_s:7.1f}s cpu={self.cpu_s:6.1f}s "
                f"rss_peak={self.peak_rss_mb:6.1f}MB mappings={self.mappings} ({rate:,.0f}/s) "
                f"pages={self.pages} gaps={self.gaps}")


def start_simulator(scenario: Scenario | None, workdir: Path) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, "-m", "pmp_scrapy.simulator", "--port", "0"]
    if scenario is not None:
        path = workdir / "scenario.json"
        path.write_text(json.dumps(scenario.to_dict()))
        args += ["--scenario", str(path)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = proc.stdout.readline().strip()
    return proc, first.rsplit(" ", 1)[-1]


def crawl(label: str, url: str, db: Path, delay: float, extra: dict[str, str] | None = None) -> Figures:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings",
           "PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"], "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
           "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"],
           "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    settings = {"PMP_BASE_URL": url, "PMP_ACCOUNTS_URL": url, "PMP_DATABASE_URL": f"sqlite:///{db}",
                "PMP_BATCH_PAGES": "0", "DOWNLOAD_DELAY": str(delay), "LOG_LEVEL": "WARNING",
                "PMP_PROGRESS": "off", **(extra or {})}
    args = [sys.executable, "-m", "scrapy", "crawl", "dcapi_patches"]
    for name, value in settings.items():
        args += ["-s", f"{name}={value}"]
    started = time.monotonic()
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    with sqlite3.connect(db) as conn:
        mappings = conn.execute("SELECT COUNT(*) FROM patch_system_mapping").fetchone()[0]
        pages = conn.execute("SELECT MAX(last_page) FROM dcapi_extraction_checkpoints").fetchone()[0] or 0
        gaps = conn.execute("SELECT COUNT(*) FROM dcapi_extraction_gaps").fetchone()[0]
    return Figures(label, os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime,
                   usage.ru_maxrss / 1024.0, mappings, pages, gaps)


RSS_BUDGET_MB = 100.0  # spec NFR-1


def budget_line(figures: Figures) -> str:
    """Whether the crawl stayed inside the spec's memory budget."""
    verdict = "within" if figures.peak_rss_mb < RSS_BUDGET_MB else "OVER"
    return (f"{'':<28} peak RSS {figures.peak_rss_mb:.1f} MB: {verdict} the {RSS_BUDGET_MB:.0f} MB budget "
            f"(spec NFR-1), {RSS_BUDGET_MB - figures.peak_rss_mb:+.1f} MB to spare")


def run(label: str, scenario: Scenario | None, delay: float, extra: dict[str, str] | None = None) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        sim, url = start_simulator(scenario, Path(tmp))
        try:
            return crawl(label, url, Path(tmp) / "bench.db", delay, extra)
        finally:
            sim.terminate()
            sim.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("fast", "delay"), help="run one of the two clean sweeps")
    parser.add_argument("--faults", type=int, default=0, help="also sweep with this many transient faults")
    parser.add_argument("--page-limit", type=int, default=30)
    args = parser.parse_args()
    extra = {"PMP_PAGE_LIMIT": str(args.page_limit)}
    clean = None
    if args.only in (None, "fast"):
        clean = run("clean, DOWNLOAD_DELAY=0", None, 0.0, extra)
        print(clean.line(), flush=True)
        print(budget_line(clean), flush=True)
    if args.only in (None, "delay"):
        paced = run("clean, DOWNLOAD_DELAY=0.25", None, 0.25, extra)
        bound = paced.pages * 0.25
        print(paced.line(), flush=True)
        print(budget_line(paced), flush=True)
        print(f"{'':<28} rate-limit bound {bound:.1f}s; wall is {100.0 * paced.wall_s / bound:.0f}% of it", flush=True)
    if args.faults:
        pages = 111 if args.page_limit == 30 else -(-3217 // args.page_limit)
        scenario = Scenario(faults=Scenario.random_transient_faults(args.faults, pages, seed=7))
        faulty = run(f"{args.faults} transient faults, delay 0", scenario, 0.0,
                     {**extra, "PMP_BACKOFF_BASE": "0.2", "PMP_MAX_RETRY_AFTER": "1"})
        print(faulty.line(), flush=True)
        recovered = 100.0 * (args.faults - faulty.gaps) / args.faults
        print(f"{'':<28} gaps={faulty.gaps}: {recovered:.1f}% of injected faults recovered without a gap", flush=True)
        if clean is not None:
            print(f"{'':<28} fault cost: +{faulty.wall_s - clean.wall_s:.1f}s wall over the clean sweep", flush=True)


if __name__ == "__main__":
    main()
