"""Issue 11's figures: what reconciliation and history cost.

1. A full sweep of the default tenant (3,317 managed systems, 107 pages) at DOWNLOAD_DELAY=0, with
   this checkout and, side by side in the same run, with a baseline checkout (``--baseline DIR``,
   e.g. a ``git worktree`` of the commit before refresh/reconciliation), both against one simulator.
2. A second sweep after 5% of the (system, patch) statuses changed, with this checkout.
3. Peak RSS of a full sweep at 33,170 managed systems, against the 3,317 one (flat is the aim).

    python benchmarks/refresh.py [--baseline /tmp/pmp_baseline] [--runs 3] [--large 33170]

Prints medians; asserts nothing (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import urllib.request
from pathlib import Path

from harness import Crawl, CrawlProcess, simulator_process, stored

from pmp_scrapy.simulator import DatasetSpec, Scenario


def sweep(url: str, db: Path, root: Path | None = None, **settings: object) -> Crawl:
    """One full sweep at delay 0 (``root``: another checkout's code)."""
    return CrawlProcess(url, f"sqlite:///{db}", DOWNLOAD_DELAY=0, root=root, **settings).wait()


def mutate(url: str, **fields: object) -> None:
    """Change the simulated tenant now (``POST /_sim/mutate``)."""
    request = urllib.request.Request(f"{url}/_sim/mutate", data=json.dumps(fields).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30):
        pass


def median_line(label: str, crawls: list[Crawl]) -> str:
    wall = statistics.median(c.wall_s for c in crawls)
    cpu = statistics.median(c.cpu_s for c in crawls)
    rss = statistics.median(c.peak_rss_mb for c in crawls)
    codes = sorted({c.exit_code for c in crawls})
    return f"{label:<34} runs={len(crawls)} exit={codes} wall={wall:6.1f}s cpu={cpu:6.1f}s rss_peak={rss:6.1f}MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout to compare with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--large", type=int, default=33_170, help="managed systems of the large tenant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        now: list[Crawl] = []
        before: list[Crawl] = []
        with simulator_process() as url:
            for run in range(args.runs):  # alternate, so load drifts hit both alike
                now.append(sweep(url, work / f"now{run}.db"))
                if args.baseline is not None:
                    before.append(sweep(url, work / f"base{run}.db", root=args.baseline))
            print(median_line("full sweep, this checkout", now), stored(work / "now0.db"))
            if before:
                print(median_line("full sweep, baseline", before), stored(work / "base0.db"))
                ratio = statistics.median(c.cpu_s for c in now) / statistics.median(c.cpu_s for c in before)
                print(f"{'':<34} CPU this/baseline: {ratio:.2f} (aim: at most 1.20)")
            mutate(url, flip_status={"share": 0.05})
            second = [sweep(url, work / "now0.db", PMP_REFRESH_INTERVAL=0.001)]
            print(median_line("second sweep after 5% flips", second), stored(work / "now0.db"))
        with simulator_process(Scenario(dataset=DatasetSpec(managed_systems=args.large))) as url:
            large = sweep(url, work / "large.db")
            print(median_line(f"full sweep, {args.large:,} systems", [large]), stored(work / "large.db"))
            print(large.budget_line())


if __name__ == "__main__":
    main()
