"""Benchmark: full DCAPI sweeps against the local simulator, measured from outside.

Prints wall time, CPU time, mappings a second and peak RSS of the crawl process (a real
``scrapy crawl`` subprocess; the simulator runs in its own process so it does not count).

    python benchmarks/sweep.py                  # no delay, then the default 0.25 s delay
    python benchmarks/sweep.py --only fast      # DOWNLOAD_DELAY=0 only
    python benchmarks/sweep.py --faults 120     # adds a sweep with 120 injected transient faults
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from harness import Crawl, CrawlProcess, Stored, simulator_process, stored, tenant_pages

from pmp_scrapy.simulator import Scenario


def run(scenario: Scenario | None, delay: float, extra: dict[str, str]) -> tuple[Crawl, Stored]:
    """One sweep of ``scenario``'s tenant at ``DOWNLOAD_DELAY`` ``delay`` into a fresh database."""
    with tempfile.TemporaryDirectory() as tmp, simulator_process(scenario) as url:
        db = Path(tmp) / "bench.db"
        crawl = CrawlProcess(url, f"sqlite:///{db}", DOWNLOAD_DELAY=delay, **extra).wait()
        return crawl, stored(db)


def report(label: str, crawl: Crawl, result: Stored) -> None:
    print(f"{crawl.line(label, result.mappings)} pages={result.pages} gaps={result.gaps}", flush=True)
    print(crawl.budget_line(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("fast", "delay"), help="run one of the two clean sweeps")
    parser.add_argument("--faults", type=int, default=0, help="also sweep with this many transient faults")
    parser.add_argument("--page-limit", type=int, default=30)
    args = parser.parse_args()
    extra = {"PMP_PAGE_LIMIT": str(args.page_limit)}
    clean = None
    if args.only in (None, "fast"):
        clean, result = run(None, 0.0, extra)
        report("clean, DOWNLOAD_DELAY=0", clean, result)
    if args.only in (None, "delay"):
        paced, result = run(None, 0.25, extra)
        bound = result.pages * 0.25
        report("clean, DOWNLOAD_DELAY=0.25", paced, result)
        print(f"{'':<28} rate-limit bound {bound:.1f}s; wall is {100.0 * paced.wall_s / bound:.0f}% of it", flush=True)
    if args.faults:
        pages = tenant_pages(page_limit=args.page_limit)  # the default tenant's real page count (107 of 30)
        scenario = Scenario(faults=Scenario.random_transient_faults(args.faults, pages, seed=7))
        faulty, result = run(scenario, 0.0, {**extra, "PMP_BACKOFF_BASE": "0.2", "PMP_MAX_RETRY_AFTER": "1"})
        report(f"{args.faults} transient faults, delay 0", faulty, result)
        recovered = 100.0 * (args.faults - result.gaps) / args.faults
        print(f"{'':<28} gaps={result.gaps}: {recovered:.1f}% of injected faults recovered without a gap", flush=True)
        if clean is not None:
            print(f"{'':<28} fault cost: +{faulty.wall_s - clean.wall_s:.1f}s wall over the clean sweep", flush=True)


if __name__ == "__main__":
    main()
