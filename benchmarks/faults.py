"""Benchmark: how much of a storm of transient faults the retries absorb, and at what cost.

Two full sweeps at the shipped settings (DOWNLOAD_DELAY 0.25, AutoThrottle on, backoff base
1 s, 3 attempts), each a real ``scrapy crawl`` subprocess against its own simulator (a fresh one
per sweep: Zoho's 10-tokens-per-10-minutes budget is per simulator). The first sweep is clean;
the second carries ``--faults`` transient faults from ``Scenario.random_transient_faults``
(503, 502, 429 with Retry-After 1, dropped connection, 0.5 s slow answer; at most two per page,
on attempts 1 and 2, so a third attempt always succeeds). Both use a short token lifetime
(``--ttl``) so that proactive refreshes happen during the sweep.

Prints, for the faulty sweep: the share of faulted pages recovered without a gap, token-expiry
failures (401 answers and pages lost to them), and the wall-time cost against the clean sweep.

    python benchmarks/faults.py                         # 120 faults over 107 pages of 30
    python benchmarks/faults.py --faults 200 --pages 120 --ttl 30
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness import CrawlProcess, tenant_pages

from pmp_scrapy.simulator import DatasetSpec, Fault, Scenario, Simulator

#: DCAPI pages of 30 of the default simulator tenant (3,210 of its 3,317 systems have patch data)
DEFAULT_PAGES = tenant_pages()


@dataclass
class Sweep:
    label: str
    exit_code: int
    wall_s: float
    page_requests: int
    pages: int
    gaps: list[tuple[int, str]]
    mappings: int
    expected_mappings: int
    unauthorized: int
    tokens: int
    faults_served: int


def run_sweep(label: str, scenario: Scenario, workdir: Path, delay: float) -> Sweep:
    db = workdir / f"{label}.db"
    # In this process: the request record is read from the Simulator itself.
    with Simulator(scenario=scenario) as sim:
        crawl = CrawlProcess(sim.url, f"sqlite:///{db}", DOWNLOAD_DELAY=delay,
                             LOG_FILE=workdir / f"{label}.log").wait()
        time.sleep(1.0)  # slow answers the client gave up on are recorded when their server thread wakes
        requests = sim.requests
        expected = sum(1 for _ in sim.expected_mappings())
        pages = sim.total_pages(30)
        tokens = sim.tokens_issued
    with sqlite3.connect(db) as conn:
        gaps = conn.execute("SELECT page_num, error_type FROM dcapi_extraction_gaps ORDER BY page_num").fetchall()
        mappings = conn.execute("SELECT COUNT(*) FROM patch_system_mapping").fetchone()[0]
    page_requests = [r for r in requests if r.kind == "page"]
    return Sweep(label, crawl.exit_code, crawl.wall_s, len(page_requests), pages, [tuple(g) for g in gaps], mappings,
                 expected, sum(1 for r in page_requests if r.status == 401), tokens,
                 sum(1 for r in page_requests if r.fault))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", type=int, default=120, help="transient faults to inject (default 120)")
    parser.add_argument("--pages", type=int, default=DEFAULT_PAGES,
                        help=f"pages of 30 systems (default {DEFAULT_PAGES}, as many as the default tenant's)")
    parser.add_argument("--ttl", type=float, default=20.0, help="token lifetime in seconds (default 20)")
    parser.add_argument("--delay", type=float, default=0.25, help="DOWNLOAD_DELAY (default 0.25)")
    parser.add_argument("--seed", type=int, default=1)
    opts = parser.parse_args()

    dataset = DatasetSpec(managed_systems=opts.pages * 30, no_patch_share=0.0)
    faults: list[Fault] = Scenario.random_transient_faults(opts.faults, opts.pages, opts.seed)
    faulted_pages = {f.page for f in faults}
    kinds: dict[str, int] = {}
    for f in faults:
        kinds[f.kind] = kinds.get(f.kind, 0) + 1

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        clean = run_sweep("clean", Scenario(dataset=dataset, token_ttl=opts.ttl), workdir, opts.delay)
        faulty = run_sweep("faulty", Scenario(dataset=dataset, token_ttl=opts.ttl, faults=faults), workdir,
                           opts.delay)

    print(f"estate: {opts.pages} pages of 30 systems; token lifetime {opts.ttl:g} s; DOWNLOAD_DELAY {opts.delay:g} s; "
          "AutoThrottle on; PMP_BACKOFF_BASE 1 s; PMP_MAX_ATTEMPTS 3")
    print(f"injected: {len(faults)} transient faults on {len(faulted_pages)} pages "
          f"({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))}); served: {faulty.faults_served}")
    for s in (clean, faulty):
        print(f"{s.label:<7} exit={s.exit_code} wall={s.wall_s:6.1f}s page_requests={s.page_requests} "
              f"gaps={len(s.gaps)} mappings={s.mappings}/{s.expected_mappings} tokens={s.tokens} "
              f"401s={s.unauthorized}")
    gap_pages = {p for p, _ in faulty.gaps}
    recovered = len(faulted_pages - gap_pages)
    share = 100.0 * recovered / len(faulted_pages) if faulted_pages else 100.0
    print(f"recovered without a gap: {recovered}/{len(faulted_pages)} faulted pages ({share:.1f}%); "
          f"gaps: {faulty.gaps or 'none'}")
    lost_to_401 = sum(1 for _, t in faulty.gaps if t == "unexpected_status")
    print(f"token-expiry failures: {faulty.unauthorized} 401 answers in the faulty sweep, {clean.unauthorized} in "
          f"the clean one; pages lost to them: {lost_to_401}")
    cost = faulty.wall_s - clean.wall_s
    print(f"wall-time cost of the faults: {cost:+.1f} s ({100.0 * cost / clean.wall_s:+.1f}%), "
          f"{faulty.page_requests - clean.page_requests} extra page requests")
    ok = faulty.exit_code == 0 and not faulty.gaps and faulty.mappings == faulty.expected_mappings
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
