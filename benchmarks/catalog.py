"""Benchmark: what the patch catalog (/dcapi/threats/patches) adds to a sweep's wall time.

The default tenant (3,317 managed systems, 107 system-report pages of 30, about 3,300 catalog
patches) at the default DOWNLOAD_DELAY (0.25 s), swept in one run (PMP_BATCH_PAGES=0) by a real
``scrapy crawl`` subprocess against a fresh simulator process: with the catalog
(PMP_CATALOG_PAGE_LIMIT=1000, the default: 4 catalog pages) and without it
(PMP_CATALOG_PAGE_LIMIT=0), each ``--runs`` times (default 2), alternating; prints each run, the
medians and their ratio (issue 13 aims at <= 1.10).

    python benchmarks/catalog.py
    python benchmarks/catalog.py --runs 3 --delay 0.25 --catalog-page-limit 1000
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pmp_scrapy.simulator import DEMO_CREDENTIALS

AIM = 1.10


@dataclass
class Figures:
    label: str
    exit_code: int
    wall_s: float
    peak_rss_mb: float
    mappings: int
    catalog_patches: int
    catalog_cves: int
    catalog_state: str | None

    def line(self) -> str:
        return (f"{self.label:<18} exit={self.exit_code} wall={self.wall_s:6.1f}s rss_peak={self.peak_rss_mb:5.1f}MB "
                f"mappings={self.mappings} catalog={self.catalog_patches} patches/{self.catalog_cves} CVE rows "
                f"({self.catalog_state or 'not swept'})")


def start_simulator() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pmp_scrapy.simulator", "--port", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip().rsplit(" ", 1)[-1]


def crawl(label: str, delay: float, catalog_page_limit: int) -> Figures:
    with tempfile.TemporaryDirectory() as tmp:
        sim, url = start_simulator()
        db = Path(tmp) / "bench.db"
        try:
            env = {**os.environ, "PYTHONPATH": str(ROOT), "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings",
                   "PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"],
                   "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
                   "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"],
                   "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
            settings = {"PMP_BASE_URL": url, "PMP_ACCOUNTS_URL": url, "PMP_DATABASE_URL": f"sqlite:///{db}",
                        "PMP_BATCH_PAGES": "0", "DOWNLOAD_DELAY": str(delay), "LOG_LEVEL": "WARNING",
                        "PMP_PROGRESS": "off", "PMP_CATALOG_PAGE_LIMIT": str(catalog_page_limit)}
            args = [sys.executable, "-m", "scrapy", "crawl", "dcapi_patches"]
            for name, value in settings.items():
                args += ["-s", f"{name}={value}"]
            started = time.monotonic()
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
        finally:
            sim.terminate()
            sim.wait(10)
        with sqlite3.connect(db) as conn:
            mappings = conn.execute("SELECT COUNT(*) FROM patch_system_mapping").fetchone()[0]
            patches = conn.execute("SELECT COUNT(*) FROM dcapi_patch_catalog").fetchone()[0]
            cves = conn.execute("SELECT COUNT(*) FROM dcapi_patch_cves").fetchone()[0]
            state = conn.execute("SELECT catalog_state FROM dcapi_snapshots ORDER BY snapshot_id DESC").fetchone()[0]
    return Figures(label, os.waitstatus_to_exitcode(status), wall, usage.ru_maxrss / 1024.0, mappings, patches,
                   cves, state)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="runs of each kind (median taken)")
    parser.add_argument("--delay", type=float, default=0.25, help="DOWNLOAD_DELAY")
    parser.add_argument("--catalog-page-limit", type=int, default=1000)
    args = parser.parse_args()
    without: list[Figures] = []
    with_catalog: list[Figures] = []
    for k in range(args.runs):  # alternate, so drift of the machine hits both alike
        for label, limit, into in (("without catalog", 0, without),
                                   ("with catalog", args.catalog_page_limit, with_catalog)):
            figures = crawl(f"{label} #{k + 1}", args.delay, limit)
            into.append(figures)
            print(figures.line(), flush=True)
    base = statistics.median(f.wall_s for f in without)
    cat = statistics.median(f.wall_s for f in with_catalog)
    ratio = cat / base if base else float("inf")
    verdict = "within" if ratio <= AIM else "OVER"
    print(f"median wall: without {base:.1f}s, with catalog {cat:.1f}s; ratio {ratio:.3f} "
          f"({100 * (ratio - 1):+.1f}%): {verdict} the {AIM:.2f} aim", flush=True)


if __name__ == "__main__":
    main()
