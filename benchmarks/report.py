"""Benchmark: every ``scrapy report`` form, and the HTML report, on a large database.

Builds a database of 33,000 present systems (about 1.6 million mappings, the simulator's mix of
severities, vendors and bulletins), a patch catalog with CVE ids, five complete snapshots with
their runs and checkpoints, the mapping history (every mapping first seen, missing ones with a
"missing since" up to 400 days back) and status-change events, by bulk inserts straight into the
tables (a sweep of that size would take hours at 4 requests a second). Then, for SQLite and
PostgreSQL, times each form in process (the queries and rendering: median of ``--runs``) and as
a real ``scrapy report`` subprocess (what a user waits for, Python start-up included), and prints
the query plans of the queries the forms run.

    python benchmarks/report.py                    # 33,000 systems, SQLite and PostgreSQL
    python benchmarks/report.py --systems 5000     # smaller
    python benchmarks/report.py --only sqlite      # or: --only postgresql
    python benchmarks/report.py --keep /tmp/big.db # build once, reuse the SQLite file next time
    PMP_BENCH_POSTGRES_URL=postgresql+psycopg://user@host/db python benchmarks/report.py
    python benchmarks/report.py --postgres-url postgresql+psycopg://postgres@127.0.0.1/kept  # reuse one

The PostgreSQL part creates a scratch database (``pmp_report_bench_<pid>``) on the server of
``PMP_BENCH_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and
drops it afterwards; it is skipped with the reason when no server answers.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import sqlalchemy as sa
from report_data import Estate, build
from report_plans import print_plans
from sqlalchemy.engine import make_url

PG_ADMIN_URL = os.environ.get("PMP_BENCH_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --- timing ----------------------------------------------------------------------------------------------

def subjects(url: str) -> dict[str, str]:
    """A system, a patch, a KB number, a bulletin and a CVE of the database to ask about."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        def one(query: str) -> str:
            return str(conn.execute(sa.text(query)).scalar_one())

        picked = {
            "system": one("SELECT resource_name FROM dcapi_systems WHERE retired_at IS NULL "
                          "ORDER BY patch_count DESC, resource_id LIMIT 1"),
            "system_id": one("SELECT resource_id FROM dcapi_systems WHERE retired_at IS NULL "
                             "ORDER BY resource_id LIMIT 1"),
            "patch": one("SELECT patch_id FROM patch_system_mapping WHERE resource_id = "
                         "(SELECT MIN(resource_id) FROM dcapi_systems) ORDER BY patch_id LIMIT 1"),
            "kb": one("SELECT kb_number FROM dcapi_patch_catalog WHERE kb_number IS NOT NULL "
                      "GROUP BY kb_number HAVING COUNT(*) = 1 ORDER BY kb_number LIMIT 1"),
            "bulletin": one("SELECT bulletinid FROM dcapi_patch_catalog WHERE bulletinid LIKE 'MS%' "
                            "GROUP BY bulletinid ORDER BY COUNT(*) DESC, bulletinid LIMIT 1"),
            "cve": one("SELECT cve_id FROM dcapi_patch_cves GROUP BY cve_id ORDER BY COUNT(*) DESC, cve_id LIMIT 1"),
        }
    engine.dispose()
    return picked


def forms(picked: dict[str, str], html: Path) -> list[tuple[str, list[str]]]:
    return [
        ("summary", []),
        ("summary --format json", ["--format", "json"]),
        ("summary --severity Critical", ["--severity", "Critical"]),
        ("summary --format csv (every system)", ["--format", "csv"]),
        ("--system NAME", ["--system", picked["system"]]),
        ("--system ID", ["--system", picked["system_id"], "--format", "json"]),
        ("--patch ID", ["--patch", picked["patch"], "--format", "json"]),
        ("--patch KB", ["--patch", picked["kb"], "--format", "json"]),
        ("--bulletin", ["--bulletin", picked["bulletin"], "--format", "json"]),
        ("--cve", ["--cve", picked["cve"], "--format", "json"]),
        ("--html (10 s budget)", ["--html", str(html)]),
    ]


def in_process(url: str, args: list[str]) -> Callable[[], Any]:
    """The form's work without Python's and Scrapy's start-up: the queries and the rendering."""
    from pmp_scrapy.commands.report import answer, write_html
    from pmp_scrapy.reporting.render import to_csv, to_json, to_table
    from pmp_scrapy.storage.report_reader import Scope, reading

    options = dict(zip(args[::2], args[1::2], strict=True))
    severities = tuple(options["--severity"].split(",")) if "--severity" in options else None
    scope = Scope(severities=severities)
    form = next((name for name in ("system", "patch", "bulletin", "cve") if f"--{name}" in options), "summary")
    output = options.get("--format", "table")

    def run() -> Any:
        if "--html" in options:
            return write_html(url, options["--html"], scope, every_customer=True)
        with reading(url) as reader:
            result = answer(reader, form, options.get(f"--{form}"), scope, rows=output == "csv")
        return {"json": to_json, "csv": lambda r: to_csv(form, r), "table": lambda r: to_table(form, r)}[output](result)

    return run


def as_user(url: str, args: list[str]) -> Callable[[], Any]:
    """``scrapy report ARGS`` as a real subprocess (Python and Scrapy start-up included)."""
    env = {**os.environ, "PMP_DATABASE_URL": url, "SCRAPY_SETTINGS_MODULE": "pmp_scrapy.settings",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    def run() -> Any:
        result = subprocess.run([sys.executable, "-m", "scrapy", "report", *args], cwd=ROOT, env=env, check=False,
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"scrapy report {' '.join(args)}: {result.stderr.strip()}")
        return result

    return run


def _cpu() -> float:
    """CPU seconds of this process and its finished children (user + system)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def median_seconds(run: Callable[[], Any], runs: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``runs`` runs (CPU: this process and the subprocess; on a
    busy machine the wall time grows, the CPU time much less; PostgreSQL's own CPU is not in it)."""
    walls, cpus = [], []
    for _ in range(runs):
        started, cpu = time.perf_counter(), _cpu()
        run()
        walls.append(time.perf_counter() - started)
        cpus.append(_cpu() - cpu)
    return statistics.median(walls), statistics.median(cpus)


# --- main ----------------------------------------------------------------------------------------------------

def bench(name: str, url: str, runs: int) -> None:
    picked = subjects(url)
    print(f"\n{name}: {url.split('@')[-1]}")
    print(f"  subjects: {picked}")
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "report.html"
        print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; median of {runs} runs, wall (CPU)")
        print(f"  {'form':<38} {'in process':>16} {'scrapy report':>16}")
        for label, args in forms(picked, html):
            inner, inner_cpu = median_seconds(in_process(url, args), runs)
            outer, outer_cpu = median_seconds(as_user(url, args), runs)
            print(f"  {label:<38} {inner:>6.2f} s ({inner_cpu:4.2f}) {outer:>6.2f} s ({outer_cpu:4.2f})")
        print(f"  HTML file: {html.stat().st_size / 1024:.0f} KB")
    print("  query plans:")
    print_plans(url, picked)


def postgres_database(systems: int, estate: Estate) -> Iterator[str]:
    """A scratch PostgreSQL database built for the benchmark, dropped afterwards."""
    import psycopg

    admin = make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"pmp_report_bench_{os.getpid()}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    url = make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg", database=name).render_as_string(
        hide_password=False)
    try:
        started = time.perf_counter()
        counts = build(url, estate)
        print(f"built PostgreSQL in {time.perf_counter() - started:.0f} s: {counts}")
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--systems", type=int, default=33000)
    parser.add_argument("--runs", type=int, default=3, help="runs per form; the median is shown")
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    parser.add_argument("--keep", type=Path, help="SQLite file to build once and reuse")
    parser.add_argument("--postgres-url", help="a PostgreSQL database this script built before: reused, not dropped")
    options = parser.parse_args(argv)
    estate = Estate(options.systems)
    if options.only != "postgresql":
        with tempfile.TemporaryDirectory() as tmp:
            path = options.keep or Path(tmp) / "report.db"
            url = f"sqlite:///{path}"
            if not path.exists():
                started = time.perf_counter()
                counts = build(url, estate)
                print(f"built SQLite in {time.perf_counter() - started:.0f} s: {counts}")
            bench("SQLite", url, options.runs)
    if options.only != "sqlite":
        try:
            import psycopg

            admin = make_url(PG_ADMIN_URL).set(drivername="postgresql").render_as_string(hide_password=False)
            psycopg.connect(admin, connect_timeout=3).close()
        except Exception as exc:  # noqa: BLE001 - any failure: skip PostgreSQL with the reason
            print(f"\nPostgreSQL skipped: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
            return 0
        if options.postgres_url:
            bench("PostgreSQL", options.postgres_url, options.runs)
            return 0
        for url in postgres_database(options.systems, estate):
            bench("PostgreSQL", url, options.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
