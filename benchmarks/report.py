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

The PostgreSQL part creates a scratch database (``pmp_report_bench_<pid>``) on the server of
``PMP_BENCH_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``) and
drops it afterwards; it is skipped with the reason when no server answers.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from pmp_scrapy.storage.engine import open_engine

PG_ADMIN_URL = os.environ.get("PMP_BENCH_POSTGRES_URL") or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CATALOG_SIZE = 3302
SNAPSHOTS = 5
SEVERITIES = (("Critical", 0.30), ("Important", 0.70), ("Moderate", 0.90), ("Low", 1.0))
VENDORS = (("Microsoft", 0.60), ("Mozilla", 0.68), ("Google", 0.76), ("Adobe", 0.83), ("Oracle", 0.88),
           ("VideoLAN", 0.94), ("Zoom Video Communications", 0.97), ("Citrix", 1.0))


# --- the data --------------------------------------------------------------------------------------

def _pick(rng: random.Random, table: tuple[tuple[str, float], ...]) -> str:
    r = rng.random()
    return next((value for value, cumulative in table if r < cumulative), table[-1][0])


def catalog(rng: random.Random) -> list[dict[str, Any]]:
    """Patches with the simulator's mix: Microsoft KBs with MS or CVE bulletins, third parties;
    each with 0-3 CVE ids, about one CVE in ten shared by two patches (fixed by either)."""
    patches: list[dict[str, Any]] = []
    shared: list[str] = []
    for j in range(CATALOG_SIZE):
        vendor = _pick(rng, VENDORS)
        year = rng.randint(2018, 2025)
        kb: str | None
        bulletin: str | None
        if vendor == "Microsoft":
            kb = f"KB{rng.randint(2500000, 5050000)}"
            name = f"Windows10.0-{kb}-x64.msu" if rng.random() < 0.6 else f"office2016-{kb.lower()}-x64.exe"
            bulletin = f"MS{rng.randint(10, 17)}-{rng.randint(1, 130):03d}" if rng.random() < 0.35 \
                else f"CVE-{year}-{rng.randint(20000, 49999)}"
        else:
            kb = None
            name = f"{vendor.split()[0].lower()}-{rng.randint(1, 140)}.{j}-x64.exe"
            bulletin = None if rng.random() < 0.25 else f"{vendor[:4].upper()}-{year}-{j % 90:02d}"
        cves = [f"CVE-{year}-{rng.randint(1000, 99999)}" for _ in range(rng.choice((0, 1, 1, 2, 3)))]
        if bulletin and bulletin.startswith("CVE-"):
            cves.append(bulletin)
        if shared and rng.random() < 0.1:
            cves.append(shared.pop())
        elif cves and rng.random() < 0.1:
            shared.append(cves[0])
        patches.append({"patch_id": str(10001 + 3 * j + rng.randrange(3)), "patchname": name,
                        "severity": _pick(rng, SEVERITIES), "bulletinid": bulletin, "vendor_name": vendor,
                        "kb_number": kb, "cves": sorted(set(cves))})
    return patches


def patch_count(rng: random.Random, server: bool) -> int:
    if server:
        return int(rng.triangular(200, 500, 300))
    return int(rng.triangular(10, 75, 15)) if rng.random() < 0.93 else int(rng.triangular(80, 200, 85))


def ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


class Estate:
    """The benchmark's rows, generated deterministically and streamed table by table."""

    def __init__(self, systems: int, seed: int = 7) -> None:
        self.systems, self.seed = systems, seed
        self.now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        self.patches = catalog(random.Random(f"{seed}:catalog"))
        self.snapshot_times = [self.now - timedelta(days=SNAPSHOTS - i, hours=1) for i in range(SNAPSHOTS)]

    def system_rows(self) -> Iterator[tuple[Any, ...]]:
        for i in range(self.systems):
            rng = random.Random(f"{self.seed}:{i}")
            server = rng.random() < 0.035
            name = f"SRV-{i:05d}" if server else f"PC-{['Zurich', 'Sydney', 'Koeln', 'Perth'][i % 4]}-{i:05d}"
            yield ("", str(20001 + i), name, 0, 1, SNAPSHOTS, 1 + i // 30, ts(self.now - timedelta(hours=2)), None, None)
        for i in range(self.systems // 100):  # retired systems: kept, never counted
            yield ("", str(900001 + i), f"OLD-{i:04d}", 0, 1, 2, 1, ts(self.now - timedelta(days=4)), 3,
                   ts(self.snapshot_times[2]))

    def mappings(self) -> Iterator[tuple[str, dict[str, Any], str, str | None, int]]:
        """``(resource_id, patch, status, installed_time, missing_days)`` for every mapping."""
        for i in range(self.systems):
            rng = random.Random(f"{self.seed}:{i}")
            server = rng.random() < 0.035
            installed_rate = rng.uniform(0.65, 0.95)
            for j in sorted(rng.sample(range(CATALOG_SIZE), patch_count(rng, server))):
                installed = rng.random() < installed_rate
                when = str(rng.randrange(1_672_531_200_000, 1_763_596_800_000)) if installed else None
                yield (str(20001 + i), self.patches[j], "Installed" if installed else "Missing", when,
                       0 if installed else int(rng.triangular(0, 400, 10)))


def _copy_rows(conn: Any, table: str, columns: tuple[str, ...], rows: Iterator[tuple[Any, ...]]) -> int:
    """Bulk insert: COPY on PostgreSQL, executemany on SQLite."""
    count = 0
    raw = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
                count += 1
        return count
    cursor = raw.cursor()
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    batch: list[tuple[Any, ...]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == 20000:
            cursor.executemany(sql, batch)
            count += len(batch)
            batch = []
    cursor.executemany(sql, batch)
    return count + len(batch)


def build(url: str, estate: Estate) -> dict[str, int]:
    """Create the schema (``open_engine``: tables, views) and fill it; returns row counts. The
    rows go through a plain engine: the project's sessions carry statement timeouts made for
    batches of 500 rows, not for a COPY of 1.6 million."""
    open_engine(url).dispose()
    engine = sa.create_engine(url)
    counts: dict[str, int] = {}
    first_seen = estate.snapshot_times[0]
    with engine.begin() as conn:
        counts["dcapi_systems"] = _copy_rows(conn, "dcapi_systems", (
            "customer", "resource_id", "resource_name", "patch_count", "first_seen_snapshot", "last_seen_snapshot",
            "last_seen_page", "last_seen_at", "retired_snapshot", "retired_at"), estate.system_rows())

        def first_seen_of(status: str, days: int) -> datetime:
            # The extractor has run for a year: a missing patch was first seen when it went missing
            # (up to 400 days back); installed ones at the first kept snapshot.
            return estate.now - timedelta(days=days, hours=3) if status == "Missing" else first_seen

        def mapping_rows() -> Iterator[tuple[Any, ...]]:
            for rid, patch, status, when, days in estate.mappings():
                yield (rid, patch["patch_id"], patch["patchname"], patch["severity"], status, patch["bulletinid"],
                       patch["vendor_name"], when, ts(first_seen_of(status, days)))

        counts["patch_system_mapping"] = _copy_rows(conn, "patch_system_mapping", (
            "resource_id", "patch_id", "patchname", "severity", "patch_status", "bulletinid", "vendor_name",
            "installed_time", "created_at"), mapping_rows())

        def history_rows() -> Iterator[tuple[Any, ...]]:
            for rid, patch, status, _when, days in estate.mappings():
                since = ts(first_seen_of(status, days))
                yield ("", rid, patch["patch_id"], 1, since, status, since, 1)

        counts["dcapi_mapping_history"] = _copy_rows(conn, "dcapi_mapping_history", (
            "customer", "resource_id", "patch_id", "first_seen_snapshot", "first_seen_at", "patch_status",
            "status_since", "status_snapshot"), history_rows())

        def event_rows() -> Iterator[tuple[Any, ...]]:
            rng = random.Random(f"{estate.seed}:events")
            for rid, patch, status, _when, _days in estate.mappings():
                yield ("", rid, patch["patch_id"], 1, ts(first_seen), "first_seen", None, status)
                if status == "Installed" and rng.random() < 0.1:  # installed during the kept snapshots
                    snapshot = rng.randint(2, SNAPSHOTS)
                    yield ("", rid, patch["patch_id"], snapshot, ts(estate.snapshot_times[snapshot - 1]),
                           "status_changed", "Missing", "Installed")

        counts["dcapi_mapping_events"] = _copy_rows(conn, "dcapi_mapping_events", (
            "customer", "resource_id", "patch_id", "snapshot_id", "observed_at", "event", "old_status",
            "new_status"), event_rows())

        counts["dcapi_patch_catalog"] = _copy_rows(conn, "dcapi_patch_catalog", (
            "customer", "patch_id", "patch_name", "bulletinid", "severity", "vendor_name", "kb_number",
            "snapshot_id"), (("", p["patch_id"], p["patchname"], p["bulletinid"], p["severity"],
                               p["vendor_name"], p["kb_number"], SNAPSHOTS) for p in estate.patches))
        counts["dcapi_patch_cves"] = _copy_rows(conn, "dcapi_patch_cves", ("customer", "patch_id", "cve_id"), (
            ("", p["patch_id"], cve) for p in estate.patches for cve in p["cves"]))

        managed = estate.systems + estate.systems // 30
        for n, done in enumerate(estate.snapshot_times, start=1):
            conn.execute(sa.text(
                "INSERT INTO dcapi_snapshots (snapshot_id, customer, state, page_limit, total_pages, total_records, "
                "managed_total, started_at, completed_at, catalog_state, reconcile_state) VALUES "
                "(:n, '', 'complete', 30, :pages, :records, :managed, :started, :done, 'complete', 'reconciled')"),
                {"n": n, "pages": -(-estate.systems // 30), "records": estate.systems, "managed": managed,
                 "started": done - timedelta(hours=3), "done": done})
            conn.execute(sa.text(
                "INSERT INTO dcapi_extraction_checkpoints (snapshot_id, last_page, systems_extracted, "
                "patches_extracted, coverage_pct, created_at, updated_at) VALUES (:n, :pages, :systems, :patches, "
                ":pct, :done, :done)"),
                {"n": n, "pages": -(-estate.systems // 30), "systems": estate.systems,
                 "patches": counts["patch_system_mapping"], "pct": round(100.0 * estate.systems / managed, 2),
                 "done": done})
            conn.execute(sa.text(
                "INSERT INTO dcapi_runs (customer, snapshot_id, started_at, finished_at, close_reason, exit_code, "
                "systems_with_mappings, coverage_pct) VALUES ('', :n, :started, :done, 'finished', 0, :systems, :pct)"),
                {"n": n, "started": done - timedelta(hours=3), "done": done, "systems": estate.systems,
                 "pct": round(100.0 * estate.systems / managed, 2)})
    # Rows written behind the extractor's back: the report roll-ups are built from them as for a
    # database made before the roll-ups (at open, once), timed.
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dcapi_rollup_state"))
    started = time.perf_counter()
    open_engine(url, busy_timeout=600).dispose()
    counts["rollup build, s"] = round(time.perf_counter() - started, 1)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE")
    else:
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    engine.dispose()
    return counts


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


# --- query plans -------------------------------------------------------------------------------------------

def plan_queries(picked: dict[str, str], dialect: str) -> list[tuple[str, str, tuple[str, ...], dict[str, Any]]]:
    """(label, query, views, parameters) of the queries the forms spend their time in."""
    from pmp_scrapy.storage.rollup import _inserts

    moment = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=15)
    since: Any = moment if dialect == "postgresql" else moment.isoformat(sep=" ")
    pairs = "FROM dcapi_missing_pairs WHERE customer = ''"
    refresh = _inserts(dialect, "resource_id IN (" + ", ".join(f"'{20001 + i}'" for i in range(30)) + ")")
    return [
        ("summary: the systems' roll-up rows", "SELECT * FROM dcapi_system_rollup WHERE customer = '' AND missing > 0",
         (), {}),
        ("summary: missing systems per (patch, severity)", (f"SELECT patch_id, severity_name, COUNT(*), "
         f"MIN(missing_since) {pairs} GROUP BY patch_id, severity_name"), (), {}),
        ("summary: pairs past the Critical SLA", (f"SELECT COUNT(*) {pairs} AND severity_name = 'Critical' "
         "AND missing_since < :since"), (), {"since": since}),
        ("summary: the oldest Critical breaches", (f"SELECT missing_since, resource_id, patch_id {pairs} AND "
         "severity_name = 'Critical' AND missing_since < :since ORDER BY missing_since, resource_id, patch_id "
         "LIMIT 10"), (), {"since": since}),
        ("checkpoint: coverage", "SELECT COUNT(*) FROM dcapi_system_rollup WHERE customer = ''", (), {}),
        ("commit: a page's systems rolled up again", refresh[0], (), {}),
        ("commit: a page's missing pairs again", refresh[1], (), {}),
        ("html: systems missing a CVE several patches fix", (f"SELECT patch_id, resource_id {pairs} "
         "AND patch_id IN (SELECT patch_id FROM dcapi_patch_cves WHERE cve_id = :cve)"), (), {"cve": picked["cve"]}),
        ("summary: coverage and freshness", "SELECT * FROM dcapi_v_customers WHERE customer = ''",
         ("dcapi_v_customers",), {}),
        ("--system: its missing patches", "SELECT * FROM dcapi_v_missing WHERE customer = '' AND resource_id = :rid",
         ("dcapi_v_missing",), {"rid": picked["system_id"]}),
        ("--patch: its systems", ("SELECT resource_id, status_name, missing_since FROM dcapi_v_mappings "
         "WHERE customer = '' AND patch_id = :pid"), ("dcapi_v_mappings",), {"pid": picked["patch"]}),
        ("--bulletin: its rows", ("SELECT resource_id, patch_id, is_missing FROM dcapi_v_mappings WHERE customer = '' "
         "AND bulletinid = :b"), ("dcapi_v_mappings",), {"b": picked["bulletin"]}),
        ("--cve: the rows of its patches", ("SELECT resource_id, patch_id, is_missing FROM dcapi_v_mappings "
         "WHERE customer = '' AND patch_id IN (SELECT patch_id FROM dcapi_patch_cves WHERE cve_id = :cve)"),
         ("dcapi_v_mappings",), {"cve": picked["cve"]}),
        ("html: CVEs that concern present systems", ("SELECT COUNT(DISTINCT c.cve_id) FROM dcapi_patch_cves c "
         "WHERE c.customer = '' AND EXISTS (SELECT 1 FROM dcapi_v_mappings v WHERE v.customer = c.customer "
         "AND v.patch_id = c.patch_id)"), ("dcapi_v_mappings",), {}),
        ("html: the trend's status changes", ("SELECT snapshot_id, COUNT(*) FROM dcapi_mapping_events "
         "WHERE customer = '' AND patch_id IS NOT NULL AND snapshot_id > 1 GROUP BY snapshot_id"), (), {}),
    ]


def print_plans(url: str, picked: dict[str, str]) -> None:
    from pmp_scrapy.storage.views import with_views

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        explain = "EXPLAIN" if conn.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN"
        for label, query, views, params in plan_queries(picked, conn.dialect.name):
            sql = (with_views(conn.dialect.name, *views) if views else "") + query
            rows = conn.execute(sa.text(f"{explain} {sql}"), params).fetchall()
            print(f"  -- {label}")
            for row in rows:
                print("     " + (str(row[0]) if explain == "EXPLAIN" else f"{'  ' * (row[1] != 0)}{row[3]}"))
    engine.dispose()


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
        for url in postgres_database(options.systems, estate):
            bench("PostgreSQL", url, options.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
