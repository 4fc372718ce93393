"""Issue 12's figures: cost and memory as the tenant grows, and one page far above the usual size.

1. ``sizes``: a DOWNLOAD_DELAY=0 sweep at 3,317, 33,170 and 99,510 managed systems (one run of
   each, in turn, in one invocation): wall, ms per page over the first and the last 100 pages
   (from the simulator's record of page arrivals: with one batch in memory the crawl asks for a
   page only as fast as it stores them), and peak RSS (VmHWM of the crawl process, from the
   kernel, last read just before the crawl exits), with RSS sampled at 10/50/90% of the sweep
   to tell growth from a spike.
2. ``wide``: pages of 30 systems x 5,000 patches (the simulator serves them as page bodies):
   peak RSS (VmHWM) of the crawl and how many commits it made, for a first sweep into a fresh
   database and for a second sweep of the same tenant into it (every stored row of a page's
   systems is read back and compared).

    python benchmarks/scale.py [--mode sizes|wide|both] [--sizes 3317,33170,99510] [--runs 1]

Prints figures (medians when --runs > 1); asserts nothing (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import Crawl, CrawlProcess, simulator_process, stored

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario

EDGE = 100  # pages at each end of the sweep whose pace is compared


@dataclass
class Sweep:
    """One measured sweep."""

    systems: int
    crawl: Crawl
    pages: int
    first_ms: float  # ms per page over the first EDGE pages
    last_ms: float  # ms per page over the last EDGE pages
    rss_at: dict[int, float]  # percent of the sweep -> RSS (MB) then

    def line(self) -> str:
        shape = " ".join(f"{pct}%={mb:.0f}" for pct, mb in sorted(self.rss_at.items()))
        return (f"{self.systems:>7,} systems {self.pages:>5} pages exit={self.crawl.exit_code} "
                f"wall={self.crawl.wall_s:6.1f}s ms/page={1000 * self.crawl.wall_s / max(self.pages, 1):5.1f} "
                f"first{EDGE}={self.first_ms:5.1f} last{EDGE}={self.last_ms:5.1f} "
                f"(last/first {self.last_ms / self.first_ms if self.first_ms else 0:.2f}) "
                f"rss_peak={self.crawl.peak_rss_mb:6.1f}MB rss(MB) {shape}")


class RssSampler:
    """VmRSS of a process every ``every`` seconds, until it exits, and its VmHWM (peak RSS) as
    last read. The kernel's ``ru_maxrss`` of a child also counts what it shared with this process
    between fork and exec (a scenario holding 120 MB of page bodies, say); VmHWM is the crawl's own."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.samples: list[tuple[float, float]] = []  # (monotonic, MB)
        self.hwm_mb = 0.0
        self._pid, self._every = pid, every
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        path = Path(f"/proc/{self._pid}/status")
        while True:
            try:
                text = path.read_text()
            except OSError:
                return
            for line in text.splitlines():
                if line.startswith("VmRSS:"):
                    self.samples.append((time.monotonic(), int(line.split()[1]) / 1024.0))
                elif line.startswith("VmHWM:"):
                    self.hwm_mb = max(self.hwm_mb, int(line.split()[1]) / 1024.0)
            time.sleep(self._every)

    def at(self, moment: float) -> float:
        """The last sample taken at or before ``moment`` (monotonic)."""
        earlier = [mb for t, mb in self.samples if t <= moment]
        return earlier[-1] if earlier else 0.0


def page_arrivals(url: str) -> list[float]:
    """Arrival times (the simulator's monotonic clock) of the first request for each page."""
    with urllib.request.urlopen(f"{url}/_sim/requests", timeout=120) as answer:
        records = json.load(answer)
    first: dict[int, float] = {}
    for record in records:
        if record["kind"] == "page" and record["page"] is not None:
            first.setdefault(record["page"], record["t"])
    return sorted(first.values())


def pace_ms(arrivals: list[float], start: int, count: int) -> float:
    """Mean ms between page arrivals ``start`` .. ``start + count``."""
    window = arrivals[start:start + count + 1]
    return 1000.0 * (window[-1] - window[0]) / max(len(window) - 1, 1) if len(window) > 1 else 0.0


def sweep(systems: int, work: Path, **settings: Any) -> Sweep:
    """One full sweep of a tenant of ``systems`` managed systems at delay 0 into a fresh SQLite file."""
    db = work / f"scale-{systems}-{time.monotonic_ns()}.db"
    with simulator_process(Scenario(dataset=DatasetSpec(managed_systems=systems))) as url:
        process = CrawlProcess(url, f"sqlite:///{db}", DOWNLOAD_DELAY=0, **settings)
        sampler = RssSampler(process.process.pid)
        crawl = process.wait()
        crawl.peak_rss_mb = sampler.hwm_mb or crawl.peak_rss_mb
        arrivals = page_arrivals(url)
    started, ended = process.started, process.started + crawl.wall_s
    rss_at = {pct: sampler.at(started + (ended - started) * pct / 100) for pct in (10, 50, 90)}
    pages = stored(db).pages
    db.unlink(missing_ok=True)
    return Sweep(systems, crawl, pages, pace_ms(arrivals, 0, EDGE), pace_ms(arrivals, max(len(arrivals) - EDGE - 1, 0), EDGE),
                 rss_at)


def run_sizes(sizes: list[int], runs: int, work: Path, **settings: Any) -> None:
    results: dict[int, list[Sweep]] = {size: [] for size in sizes}
    for _ in range(runs):  # sizes interleaved, so drifts of the machine's load hit each alike
        for size in sizes:
            result = sweep(size, work, **settings)
            results[size].append(result)
            print(result.line(), flush=True)
    if runs > 1:
        for size, sweeps in results.items():
            print(f"median {size:>7,} systems: ms/page first{EDGE}={statistics.median(s.first_ms for s in sweeps):.1f} "
                  f"last{EDGE}={statistics.median(s.last_ms for s in sweeps):.1f} "
                  f"wall={statistics.median(s.crawl.wall_s for s in sweeps):.1f}s "
                  f"rss_peak={statistics.median(s.crawl.peak_rss_mb for s in sweeps):.1f}MB", flush=True)
    smallest, largest = results[sizes[0]], results[sizes[-1]]
    ratio = statistics.median(s.last_ms for s in largest) / statistics.median(s.first_ms for s in smallest)
    print(f"last {EDGE} pages at {sizes[-1]:,} / first {EDGE} at {sizes[0]:,}: {ratio:.2f} (flat is 1.0)", flush=True)


# --- pages far above the usual size -----------------------------------------------------------------------

def wide_body(page: int, pages: int, systems: int, patches: int) -> str:
    """A DCAPI page of ``systems`` systems with ``patches`` patches each (ids unique per page)."""
    rows = [{"resource_id": 900_000 + (page - 1) * systems + s, "resource_name": f"WIDE-{page}-{s}",
             "patches": [{"patch_id": 100_000 + p, "patchname": f"KB{5_000_000 + p} cumulative update for x64",
                          "severity": "Important", "patch_status": "Missing" if p % 3 else "Installed",
                          "bulletinid": f"MS24-{p % 997:03d}", "vendor_name": "Microsoft",
                          "installed_time": None if p % 3 else "1717000000000"} for p in range(patches)]}
            for s in range(systems)]
    return json.dumps({"metadata": {"page": page, "pageLimit": systems, "totalPages": pages,
                                    "totalRecords": pages * systems, "links": {}},
                       "response_code": 200, "message_type": "systemreport",
                       "message_response": {"systemreport": rows}})


def run_wide(pages: int, patches: int, work: Path, **settings: Any) -> None:
    systems = 30
    faults = [Fault(page=page, kind="slow", delay=0.0, body=wide_body(page, pages, systems, patches))
              for page in range(1, pages + 1)]
    body_mb = len(faults[0].body or "") / 1e6
    scenario = Scenario(dataset=DatasetSpec(managed_systems=pages * systems, no_patch_share=0.0), faults=faults)
    db = work / "wide.db"
    with simulator_process(scenario) as url:
        for sweep_name in ("first sweep", "second sweep"):
            log = work / f"wide-{sweep_name[0]}.log"
            # a refresh interval of 1 ms: the second run sweeps again instead of idling on a fresh sweep
            process = CrawlProcess(url, f"sqlite:///{db}", DOWNLOAD_DELAY=0, PMP_CATALOG_PAGE_LIMIT=0,
                                   PMP_REFRESH_INTERVAL=0.001, LOG_LEVEL="INFO", LOG_FILE=str(log), **settings)
            sampler = RssSampler(process.process.pid, every=0.02)
            crawl = process.wait()
            crawl.peak_rss_mb = sampler.hwm_mb
            commits = sum('"checkpoint_saved"' in line for line in log.read_text().splitlines())
            print(f"{pages} pages of {systems} systems x {patches:,} patches ({body_mb:.1f} MB a body), {sweep_name}: "
                  f"{crawl.line('', stored(db).mappings).strip()} commits={commits}", flush=True)
            print(crawl.budget_line(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("sizes", "wide", "both"), default="both")
    parser.add_argument("--sizes", default="3317,33170,99510", help="managed systems, comma-separated")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--wide-pages", type=int, default=4)
    parser.add_argument("--wide-patches", type=int, default=5000)
    parser.add_argument("-s", dest="settings", action="append", default=[], help="NAME=VALUE for the crawls")
    args = parser.parse_args()
    settings = dict(item.split("=", 1) for item in args.settings)
    with tempfile.TemporaryDirectory() as tmp:
        if args.mode in ("sizes", "both"):
            sizes = [int(size) for size in args.sizes.split(",")]
            run_sizes(sizes, args.runs, Path(tmp), **settings)
        if args.mode in ("wide", "both"):
            run_wide(args.wide_pages, args.wide_patches, Path(tmp), **settings)


if __name__ == "__main__":
    main()
