"""Benchmark: every customer of an MSP server in one job (``-a customer=all``) at real-world latency.

Three customers of 3,317 managed systems each (about 3,210 in DCAPI: 107 to 109 pages of 30),
every PMP answer after ``--latency`` seconds (2.5 by default), the simulator's strict rate
limiter on (4 a second, HTML throttle page) in its own process; each job is one real ``scrapy
crawl dcapi_patches`` subprocess at the contract's pace (``DOWNLOAD_DELAY=0.25``): first one
customer alone (``-a customer=Acme``; skip with ``--no-single``), then ``-a customer=all``, then
the same ``customer=all`` job again on its database (a refresh: every customer's previous
snapshot is known, so each asks for its pages 2.. while its page 1 is answered; skip with
``--no-resweep``).

Prints per job its wall time (process start to exit) and the server's span (first arrival to
last answer) against the bound (pages × 0.25 s: what the rate limit allows for the pages alone;
for ``all``, 3 × the single-customer bound) and against what all its PMP requests (customer
list, inventory, catalog, retries) need at 4 a second; token requests (one for the job);
requests the limiter refused (which, and when); peak RSS of the crawl process (``ru_maxrss``);
per customer its span, rows stored and the pause before it (the previous crawl's last answers,
then the paced spacing). The machine's load skews every figure: note it beside them.

    python benchmarks/customers.py                     # 3 x 3,317 systems at 2.5 s (~3 minutes)
    python benchmarks/customers.py --latency 0.3 --systems 1500
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from harness import RSS_BUDGET_MB, Crawl, CrawlProcess, simulator_process, tenant_pages
from pace import most_in_window

from pmp_scrapy.simulator import DatasetSpec, Scenario

CUSTOMERS = ("Acme", "Globex", "Initech")
LIMIT_DELAY = 0.25  # the contract: at most 4 requests a second
PMP_KINDS = ("customers", "page", "inventory", "catalog")


def server_record(url: str) -> tuple[list[dict[str, Any]], int]:
    """The simulator's own record of the PMP and token requests, and how many it refused for rate."""
    with urllib.request.urlopen(f"{url}/_sim/requests") as answer:
        records = json.load(answer)
    with urllib.request.urlopen(f"{url}/_sim/info") as answer:
        refused = int(json.load(answer).get("rate_limited", 0))
    return records, refused


def rows_by_customer(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT s.customer, COUNT(*) FROM patch_system_mapping m JOIN dcapi_systems s "
                                 "ON s.resource_id = m.resource_id GROUP BY s.customer").fetchall())


def spans(pmp: list[dict[str, Any]]) -> tuple[float, float]:
    return min(r["t"] for r in pmp), max(r["answered"] or r["t"] for r in pmp)


def run(scenario: Scenario, customer: str, label: str, bound: float, *, resweep: bool = False) -> None:
    """One ``-a customer=...`` job into a fresh database against a fresh simulator; prints its
    figures. ``resweep``: then the same job again (``PMP_REFRESH_INTERVAL=1``: every customer's
    previous snapshot is known, so each asks for its pages 2.. before page 1 answers)."""
    with tempfile.TemporaryDirectory() as tmp, simulator_process(scenario) as url:
        db = Path(tmp) / "bench.db"
        jobs = [(label, {})] + ([(f"{label} again", {"PMP_REFRESH_INTERVAL": 1})] if resweep else [])
        for job_label, extra in jobs:
            if extra:
                time.sleep(1.1)  # the snapshots are older than PMP_REFRESH_INTERVAL=1
                urllib.request.urlopen(urllib.request.Request(f"{url}/_sim/reset", method="POST", data=b"")).close()
            crawl = CrawlProcess(url, f"sqlite:///{db}", customer=customer, DOWNLOAD_DELAY=LIMIT_DELAY, **extra).wait()
            records, _ = server_record(url)
            report(job_label, crawl, records, rows_by_customer(db), bound)


def report(label: str, crawl: Crawl, records: list[dict[str, Any]], stored: dict[str, int], bound: float) -> None:
    """One job's figures (see the module docstring)."""
    pmp = [r for r in records if r["kind"] in PMP_KINDS]
    first, last = spans(pmp)
    span, every = last - first, len(pmp) * LIMIT_DELAY
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(Counter(r["kind"] for r in pmp).items()))
    print(f"{label:<10} exit={crawl.exit_code} wall={crawl.wall_s:6.1f}s ({crawl.wall_s / bound:.2f}x the bound "
          f"{bound:.1f}s); server span={span:6.1f}s ({span / bound:.2f}x)", flush=True)
    print(f"{'':<10} requests: {kinds}; at 4 a second they need {every:.1f}s: span {span / every:.2f}x that; "
          f"token requests {sum(r['kind'] == 'token' for r in records)}")
    refusals = [r for r in pmp if r.get("fault") == "rate_limited"]
    where = ", ".join(f"{r['kind']} {r.get('customer')} page {r.get('page')} at +{r['t'] - first:.1f}s"
                      for r in refusals)
    print(f"{'':<10} refused for rate {len(refusals)}{': ' + where if where else ''}; most PMP arrivals in 1 s "
          f"{most_in_window([r['t'] for r in pmp])}")
    print(f"{'':<10} peak RSS {crawl.peak_rss_mb:.1f} MB ({'within' if crawl.peak_rss_mb < RSS_BUDGET_MB else 'OVER'} "
          f"{RSS_BUDGET_MB:.0f} MB), cpu {crawl.cpu_s:.1f}s")
    previous_end = None
    for name in CUSTOMERS:
        own = [r for r in pmp if r.get("customer") == name]
        if not own:
            continue
        start, end = spans(own)
        pages = sum(r["kind"] == "page" and r.get("fault") is None for r in own)
        pause = f"; starts {start - previous_end:4.1f}s after the previous customer's last answer" if previous_end else ""
        print(f"{'':<10} {name:<8} span={end - start:6.1f}s ({(end - start) / (pages * LIMIT_DELAY):.2f}x its "
              f"{pages} pages x {LIMIT_DELAY}s), {len(own)} requests, {stored.get(name, 0):,} mappings{pause}")
        previous_end = end
    if crawl.exit_code != 0:
        print(crawl.stderr.strip()[-2000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", type=int, default=3317, help="managed systems per customer")
    parser.add_argument("--latency", type=float, default=2.5, help="seconds per PMP answer")
    parser.add_argument("--no-single", action="store_true", help="skip the one-customer job run first for comparison")
    parser.add_argument("--no-resweep", action="store_true", help="skip the second customer=all job (previous "
                                                                  "snapshots known)")
    args = parser.parse_args()
    customers = {name: DatasetSpec(managed_systems=args.systems, seed=11 + k) for k, name in enumerate(CUSTOMERS)}
    scenario = Scenario(customers=customers, latency=args.latency,
                        rate_limit={"max_per_second": 4, "reply": "html_200"})
    pages = {name: tenant_pages(scenario, 30, name) for name in CUSTOMERS}
    print(f"{len(CUSTOMERS)} customers x {args.systems:,} managed systems "
          f"({', '.join(f'{n} {p} pages' for n, p in pages.items())}), {args.latency:g} s per answer, "
          f"DOWNLOAD_DELAY={LIMIT_DELAY}, strict rate limiter (4 a second); bound = pages x {LIMIT_DELAY} s",
          flush=True)
    if not args.no_single:
        run(scenario, CUSTOMERS[0], CUSTOMERS[0], pages[CUSTOMERS[0]] * LIMIT_DELAY)
    run(scenario, "all", "all", sum(pages.values()) * LIMIT_DELAY, resweep=not args.no_resweep)


if __name__ == "__main__":
    main()
