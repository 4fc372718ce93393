"""``scrapy status [--json] [--customer NAME]``: where the extraction stands, from the database
alone (no request, no credentials, no ``PMP_BASE_URL``).

For each customer ('' is the single-tenant default; without ``--customer`` every customer in
the database is listed): systems with mappings over managed systems and over the systems DCAPI
reports, whether the coverage target is met, the current snapshot and its state, the checkpoint
page of the total, open and resolved gaps (page, error_type, attempts, last error) and the last
run's time and outcome.

Reads ``PMP_DATABASE_URL``, ``PMP_COVERAGE_TARGET``, ``PMP_TOTAL_SYSTEMS`` (settings or
environment). Exit code 0 when the status was read; 1 when there is no database (it is never
created), it holds no extraction data, a setting is invalid or the database cannot be read.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.commands import ScrapyCommand

from pmp_scrapy.config import (
    DEMO_DATABASE_URL,
    apply_environment,
    coverage_target_from_settings,
    database_url_from_settings,
    read,
    total_systems_from_settings,
)
from pmp_scrapy.coverage import target_systems
from pmp_scrapy.errors import ConfigError, NoDatabase, StorageError

# Storage (SQLAlchemy) is imported in _run(): Scrapy imports every command module for every
# command, and `scrapy status --help` or `scrapy version` need none of it.
if TYPE_CHECKING:
    import argparse

    from pmp_scrapy.storage.status import CustomerStatus

HINT = "run `scrapy crawl dcapi_patches` first"


def no_database_hint(settings: Any) -> str:
    """What to do when there is no database: after a demo, how to look at the demo's."""
    if (settings.getpriority("PMP_DATABASE_URL") or 0) < 40 and Path("pmp_demo.db").is_file():
        return (f"a demo database is here: scrapy status -s PMP_DATABASE_URL={DEMO_DATABASE_URL} "
                f"(or {HINT})")
    return HINT


def _pct(part: int, whole: int | None) -> float | None:
    return round(100.0 * part / whole, 1) if whole else None


def freshness(last_complete_at: str | None, refresh_interval: float,
              now: datetime | None = None) -> dict[str, Any]:
    """How old the data is and when the next sweep is due (``PMP_REFRESH_INTERVAL``; 0: never)."""
    if last_complete_at is None:
        return {"data_as_of": None, "age_seconds": None, "next_refresh_due": None,
                "refresh_interval": refresh_interval}
    completed = datetime.fromisoformat(last_complete_at).replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    due = completed + timedelta(seconds=refresh_interval) if refresh_interval > 0 else None
    return {"data_as_of": completed.isoformat(timespec="seconds"),
            "age_seconds": round((now - completed).total_seconds()),
            "next_refresh_due": due.isoformat(timespec="seconds") if due else None,
            "refresh_interval": refresh_interval}


def summarise(status: CustomerStatus, target: float, total_systems: int | None,
              refresh_interval: float = 86400) -> dict[str, Any]:
    """The JSON-ready report of one customer."""
    covered = status.systems_with_mappings
    denominator = total_systems or status.managed_total or status.dcapi_total
    needed = target_systems(target, denominator) if denominator else None
    snapshot = status.snapshot or {}
    checkpoint = status.checkpoint or {}
    return {
        "customer": status.customer,
        "systems_with_mappings": covered,
        "mappings": status.mappings,
        "managed_systems": status.managed_total,
        "dcapi_systems": status.dcapi_total,
        "coverage_of_managed_pct": _pct(covered, status.managed_total),
        "coverage_of_dcapi_pct": _pct(covered, status.dcapi_total),
        "dcapi_omits": (status.managed_total - status.dcapi_total
                        if status.managed_total and status.dcapi_total is not None else None),
        "target": {"fraction": target, "denominator": denominator, "systems_needed": needed,
                   "met": bool(needed) and covered >= (needed or 0)},
        "coverage_above_denominator": bool(denominator) and covered > (denominator or 0),
        "snapshot": status.snapshot,
        "checkpoint": {**checkpoint, "total_pages": snapshot.get("total_pages")} if status.checkpoint else None,
        "gaps": {"open": [vars(g) for g in status.open_gaps], "resolved": [vars(g) for g in status.resolved_gaps]},
        "last_run": status.last_run,
        "freshness": freshness(status.last_complete_at, refresh_interval),
        "retired_systems": status.retired_systems,
    }


def render(report: dict[str, Any]) -> str:
    """The human-readable form of one customer's report."""
    from pmp_scrapy.plan import format_age

    t = report["target"]
    lines = [f"customer: {report['customer'] or '(default)'}"]
    covered = report["systems_with_mappings"]
    cov = f"  coverage:  {covered:,} systems with mappings"
    if report["mappings"] is not None:
        cov += f" ({report['mappings']:,} mappings)"
    lines.append(cov)
    for label, key, pct in (("managed systems", "managed_systems", "coverage_of_managed_pct"),
                            ("systems DCAPI reports", "dcapi_systems", "coverage_of_dcapi_pct")):
        if report[key]:
            lines.append(f"             {report[pct]}% of {report[key]:,} {label}")
    if t["systems_needed"] is None:
        lines.append("  target:    unknown (no managed-system count yet)")
    else:
        verdict = "MET" if t["met"] else f"NOT MET ({t['systems_needed'] - covered:,} short)"
        lines.append(f"  target:    {t['fraction']:.0%} of {t['denominator']:,} = {t['systems_needed']:,} systems: {verdict}")
        if not t["met"] and report["dcapi_omits"]:
            lines.append(f"             DCAPI does not report {report['dcapi_omits']:,} managed systems "
                         "(no patch records), so a sweep cannot cover them")
        if report.get("coverage_above_denominator"):
            lines.append(f"             WARNING: coverage is above 100% ({covered:,} of {t['denominator']:,}): the "
                         "denominator (PMP_TOTAL_SYSTEMS, else the managed-system count) is too low")
    snap = report["snapshot"]
    if snap is None:
        lines.append("  snapshot:  none yet")
    else:
        lines.append(f"  snapshot:  {snap['snapshot_id']} ({snap['state']}), started {snap['started_at']}"
                     + (f", completed {snap['completed_at']}" if snap["completed_at"] else ""))
    point = report["checkpoint"]
    if point is not None:
        lines.append(f"  checkpoint: page {point['last_page']} of {point['total_pages'] or '?'} "
                     f"(saved {point['updated_at']})")
    open_gaps, resolved = report["gaps"]["open"], report["gaps"]["resolved"]
    lines.append(f"  gaps:      {len(open_gaps)} open, {len(resolved)} resolved")
    for title, rows in (("open", open_gaps), ("resolved", resolved)):
        for gap in rows:
            lines.append(f"    {title:<8} page {gap['page']:<5} {gap['error_type']:<18} "
                         f"{gap['attempts']} attempt(s)  {gap['last_error'] or ''}")
    fresh = report["freshness"]
    if fresh["data_as_of"] is None:
        lines.append("  data:      no complete sweep yet")
    else:
        due = fresh["next_refresh_due"]
        lines.append(f"  data:      as of {fresh['data_as_of']} ({format_age(fresh['age_seconds'])} old); "
                     + (f"next sweep due {due}" if due else "never refreshed (PMP_REFRESH_INTERVAL=0)")
                     + (f"; {report['retired_systems']:,} retired system(s) in history"
                        if report["retired_systems"] else ""))
    run = report["last_run"]
    if run is None:
        lines.append("  last run:  none recorded")
    else:
        outcome = {0: "done", 1: "fatal", 2: "partial"}.get(run["exit_code"], "?")
        lines.append(f"  last run:  finished {run['finished_at']} UTC, exit {run['exit_code']} ({outcome}): "
                     f"{run['message'] or run['close_reason']}")
    return "\n".join(lines)


class Command(ScrapyCommand):
    """See the module docstring."""

    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return "[--json] [--customer NAME]"

    def short_desc(self) -> str:
        return "Show coverage, checkpoint, gaps and the last run (reads the database only)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        parser.add_argument("--json", action="store_true", help="print JSON for machines")
        parser.add_argument("--customer", metavar="NAME", default=None,
                            help="only this MSP customer ('' is the single-tenant default)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Every failure is one line without the database password, never a traceback."""
        assert self.settings is not None
        raw_url = str(self.settings.get("PMP_DATABASE_URL") or "")
        try:
            self._run(args, opts)
        except Exception as exc:  # noqa: BLE001 - a traceback could show the database URL's password
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            self._fail(opts, "error", f"cannot show the status: {type(exc).__name__}: {first}", raw_url)

    def _run(self, args: list[str], opts: argparse.Namespace) -> None:
        from pmp_scrapy.storage.engine import safe_url
        from pmp_scrapy.storage.status import NoExtractionData, read_status

        assert self.settings is not None
        settings = self.settings.copy()
        apply_environment(settings)
        url = ""
        try:
            url = database_url_from_settings(settings)
            target = coverage_target_from_settings(settings)
            total = total_systems_from_settings(settings)
            refresh = float(read(settings, "PMP_REFRESH_INTERVAL"))
            statuses = read_status(url, opts.customer, busy_timeout=15.0)
        except NoExtractionData as exc:
            self._fail(opts, "no_data", f"{exc}; {HINT}")
            return
        except NoDatabase as exc:
            self._fail(opts, "no_database", f"{exc}; {no_database_hint(settings)}")
            return
        except (ConfigError, StorageError) as exc:
            self._fail(opts, "error", str(exc), url or str(settings.get("PMP_DATABASE_URL") or ""))
            return
        unknown = [s.customer for s in statuses if opts.customer is not None and s.snapshot is None
                   and s.last_run is None and not s.systems_with_mappings]
        if unknown:
            self._fail(opts, "unknown_customer", f"no customer {opts.customer!r} in {safe_url(url)} "
                       "(customer names are exact; `scrapy status` lists them)")
            return
        reports = [summarise(s, target, total, refresh) for s in statuses]
        if opts.json:
            print(json.dumps({"database": safe_url(url), "customers": reports}, indent=2, default=str))
        else:
            print(f"pmp_scrapy status: {safe_url(url)}")
            print("\n".join(render(r) for r in reports))

    def _fail(self, opts: argparse.Namespace, kind: str, message: str, url: str = "") -> None:
        from pmp_scrapy.storage.engine import without_password

        self.exitcode = 1
        message = without_password(message, url) if url else message
        if opts.json:
            print(json.dumps({"error": kind, "message": message}))
        print(f"pmp_scrapy: {message}", file=sys.stderr, flush=True)
