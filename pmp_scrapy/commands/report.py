"""``scrapy report``: compliance answers from the database alone (no request, no credentials, no
``PMP_BASE_URL``).

    scrapy report                              # summary of the default customer
    scrapy report --system PC-SYDNEY-042       # what a system misses (resource id or name)
    scrapy report --patch KB5034441            # which systems have a patch (id, KB number or name)
    scrapy report --bulletin MS24-001          # coverage for a bulletin
    scrapy report --cve CVE-2024-21412         # coverage for a CVE (needs the patch catalog)
    scrapy report --customer acme --severity Critical,Important --format json --limit 20
    scrapy report --html /srv/reports/patch-compliance.html   # every customer, one file (0600)

``--format``: ``table`` (default), ``json`` (one object, the contract's "Compliance answers"
keys) or ``csv`` (the rows behind the answer). ``--severity`` keeps only patches of those
severities (names or codes 4-0, comma-separated; not for ``--patch``). ``--limit N``: entries per
list (the summary's lists: 10; a table's: 25; JSON and CSV: all).

Reads ``PMP_DATABASE_URL`` and ``PMP_SLA_DAYS`` (settings or environment). Exit code 0 when
answered; 1, with one line on stderr (and ``{"error": ..., "message": ...}`` on stdout with
``--format json``), when there is no database (it is never created), it holds no extraction data,
a setting or option is invalid, the database cannot be read, or the system, patch, bulletin, CVE
or customer asked about is unknown.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from scrapy.commands import ScrapyCommand
from scrapy.settings import SETTINGS_PRIORITIES

from pmp_scrapy.config import ENVIRONMENT_SETTINGS, apply_environment, database_url_from_settings
from pmp_scrapy.errors import ConfigError, StorageError
from pmp_scrapy.reporting.sla import SETTING as SLA_SETTING

# Storage (SQLAlchemy), the answers and the renderers are imported in run(): Scrapy imports
# every command module for every command, and `scrapy report --help` needs none of them.
if TYPE_CHECKING:
    import argparse

    from pmp_scrapy.storage.report_reader import Reader, Scope

HINT = "run `scrapy crawl dcapi_patches` first"
SELECTORS = ("system", "patch", "bulletin", "cve")


def sla_setting(settings: Any, environ: dict[str, str] | None = None) -> Any:
    """``PMP_SLA_DAYS`` from the settings, or from the environment when the command line did not
    give it (until ``config.ENVIRONMENT_SETTINGS`` lists it, which makes this a no-op)."""
    environ = dict(os.environ) if environ is None else environ
    if (SLA_SETTING not in ENVIRONMENT_SETTINGS and SLA_SETTING in environ
            and (settings.getpriority(SLA_SETTING) or 0) < SETTINGS_PRIORITIES["cmdline"]):
        return environ[SLA_SETTING]
    return settings.get(SLA_SETTING)


def parse_limit(value: str | None) -> int | None:
    """``--limit``: a positive integer, or ``None``."""
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ConfigError(f"--limit must be a positive integer, got {value!r}")
    return number


def answer(reader: Reader, form: str, key: str | None, scope: Scope, *, rows: bool = False) -> dict[str, Any]:
    """The answer of one form (``summary`` or a selector) for ``scope``; ``rows``: the summary
    keeps every ranked system (the CSV form)."""
    if form == "summary":
        from pmp_scrapy.storage.reports import summary

        return summary(reader, scope, every_system=rows)
    from pmp_scrapy.storage import report_subjects

    assert key is not None
    forms = {"system": report_subjects.system, "patch": report_subjects.patch,
             "bulletin": report_subjects.bulletin, "cve": report_subjects.cve}
    return forms[form](reader, scope, key)


def write_html(url: str, path: str, scope: Scope, *, every_customer: bool) -> Path:
    """Write the HTML report of ``scope``'s customer, or of every customer, to ``path`` (0600)."""
    from pmp_scrapy.reporting.html import render_html, write_private  # Jinja2 only when asked
    from pmp_scrapy.storage.engine import safe_url
    from pmp_scrapy.storage.report_overview import overview
    from pmp_scrapy.storage.report_reader import reading, utcnow

    with reading(url) as reader:
        _tell(reader.notice)
        names = (reader.customers() or [""]) if every_customer else [scope.customer]
        sections = [overview(reader, replace(scope, customer=name)) for name in names]
    return write_private(path, render_html(sections, database=safe_url(url), now=utcnow()))


def _tell(notice: str | None) -> None:
    """A notice of the reader's (roll-ups brought up to date first) as one line on stderr."""
    if notice:
        print(f"pmp_scrapy: {notice}", file=sys.stderr, flush=True)


class Command(ScrapyCommand):
    """See the module docstring."""

    requires_project = True
    requires_crawler_process = False
    default_settings: ClassVar[dict[str, Any]] = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        return ("[--system NAME|ID | --patch ID|KB|NAME | --bulletin ID | --cve ID] [--customer NAME] "
                "[--severity LIST] [--format table|json|csv] [--limit N] [--html FILE]")

    def short_desc(self) -> str:
        return "Compliance answers: coverage, missing patches, patch/bulletin/CVE reach (reads the database only)"

    def add_options(self, parser: argparse.ArgumentParser) -> None:
        super().add_options(parser)
        subjects = parser.add_mutually_exclusive_group()
        subjects.add_argument("--system", metavar="NAME|ID", help="what this system is missing")
        subjects.add_argument("--patch", metavar="ID|KB|NAME", help="which systems have this patch")
        subjects.add_argument("--bulletin", metavar="ID", help="coverage for this bulletin")
        subjects.add_argument("--cve", metavar="ID", help="coverage for this CVE (patch catalog)")
        parser.add_argument("--customer", metavar="NAME", default=None,
                            help="this MSP customer ('' or none: the default customer)")
        parser.add_argument("--severity", metavar="LIST", default=None,
                            help="only these severities, e.g. Critical,Important or 4,3")
        parser.add_argument("--format", dest="output", choices=("table", "json", "csv"), default="table",
                            help="table (default), json or csv")
        parser.add_argument("--limit", metavar="N", default=None, help="entries per list")
        parser.add_argument("--html", metavar="FILE", default=None,
                            help="write the whole report as one self-contained HTML file (mode 0600)")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        from pmp_scrapy.reporting.codes import parse_severities
        from pmp_scrapy.reporting.render import to_csv, to_json, to_table
        from pmp_scrapy.reporting.sla import parse_sla_days
        from pmp_scrapy.storage.engine import safe_url
        from pmp_scrapy.storage.report_reader import NoExtractionData, Scope, UnknownSubject, reading

        assert self.settings is not None
        settings = self.settings.copy()
        apply_environment(settings)
        form = next((name for name in SELECTORS if getattr(opts, name) is not None), "summary")
        try:
            url = database_url_from_settings(settings)
            sla_days = parse_sla_days(sla_setting(settings))
            try:
                severities = parse_severities(opts.severity) if opts.severity is not None else None
            except ValueError as exc:
                raise ConfigError(f"--severity: {exc}") from None
            limit = parse_limit(opts.limit)
            if opts.html and form != "summary":
                raise ConfigError(f"--html writes the whole report; it takes no --{form}")
            scope = Scope(customer=opts.customer or "", severities=severities, limit=limit, sla_days=sla_days)
            if opts.html:
                written = write_html(url, opts.html, scope, every_customer=opts.customer is None)
                print(f"pmp_scrapy report: wrote {written}")
                return
            with reading(url) as reader:
                _tell(reader.notice)
                result = answer(reader, form, getattr(opts, form, None), scope, rows=opts.output == "csv")
        except NoExtractionData as exc:
            self._fail(opts, "no_data", f"{exc}; {HINT}")
            return
        except UnknownSubject as exc:
            self._fail(opts, f"unknown_{form}", str(exc))
            return
        except (ConfigError, StorageError) as exc:
            message = str(exc)
            kind = "no_database" if message.startswith("no database at") else "error"
            self._fail(opts, kind, f"{message}; {HINT}" if kind == "no_database" else message)
            return
        if opts.output == "json":
            print(to_json({"database": safe_url(url), "form": form, **result}))
        elif opts.output == "csv":
            sys.stdout.write(to_csv(form, result))
        else:
            print(to_table(form, result, limit))

    def _fail(self, opts: argparse.Namespace, kind: str, message: str) -> None:
        self.exitcode = 1
        if opts.output == "json":
            print(json.dumps({"error": kind, "message": message}))
        print(f"pmp_scrapy: {message}", file=sys.stderr, flush=True)
