"""``scrapy report --html FILE``: the whole report as one self-contained HTML file (inline CSS,
inline SVG charts, no script, no network: a Content-Security-Policy forbids every fetch), from
``templates/report.html.j2`` through Jinja2 with autoescaping on, one section per customer.

:func:`render_html` turns the sections (:func:`pmp_scrapy.storage.report_overview.overview`
answers) into the page; :func:`write_private` writes it with mode 0600, atomically. Reads no
database and no setting.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from pmp_scrapy.errors import ConfigError
from pmp_scrapy.reporting import charts
from pmp_scrapy.reporting.codes import SEVERITIES
from pmp_scrapy.reporting.render import day, sla_line, when

TEMPLATE = "report.html.j2"


def _number(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return f"{value:,}"


def _share(part: int | None, whole: int | None) -> str:
    return f"{100.0 * part / whole:.1f}%" if part is not None and whole else "–"


def age(iso_value: str | None, now: datetime) -> str:
    """How long ago an ISO UTC time was, in words (``3 h``, ``2 days``)."""
    if not iso_value:
        return "never"
    hours = (now - datetime.fromisoformat(iso_value.rstrip("Z"))).total_seconds() / 3600
    if hours < 1:
        return "less than an hour ago"
    if hours < 48:
        return f"{hours:.0f} h ago"
    return f"{hours / 24:.0f} days ago"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("pmp_scrapy.reporting", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(num=_number, when=when, day=day)
    env.globals.update(share=_share, colours=charts.SEVERITY_COLOURS, severities=SEVERITIES)
    return env


def _section(section: dict[str, Any], now: datetime) -> dict[str, Any]:
    """A customer's answers plus the geometry of its charts."""
    summary, trend = section["summary"], section["trend"]
    points = trend["points"]
    labels = [day(p["completed_at"])[5:] for p in points]
    cves = section["cves"]
    if cves.get("worst"):
        cves = {**cves, "worst": [{**w, "bar": charts.split_bar(w["systems_covered"], w["systems_missing"])}
                                  for w in cves["worst"]]}
    return {
        **section, "cves": cves,
        "title": f"Customer {summary['customer']}" if summary["customer"] else "Default customer",
        "anchor": "c-" + "".join(ch if ch.isalnum() else "-" for ch in summary["customer"] or "default"),
        "freshness": age(summary["data_as_of"], now),
        "sla_text": sla_line(summary),
        "coverage_ring": charts.donut(summary["coverage_pct"]),
        "critical_systems": summary["by_severity"].get("Critical", {}).get("systems_missing"),
        "bars": charts.severity_bars(summary["by_severity"], summary["sla"]["by_severity"], summary["systems"]),
        "coverage_chart": charts.line_chart([p["coverage_pct"] for p in points], labels),
        "missing_chart": (charts.line_chart([p["missing_pairs"] for p in points], labels, floor_zero=True)
                          if trend["history"] else None),
    }


def render_html(sections: list[dict[str, Any]], *, database: str, now: datetime) -> str:
    """The report page for ``sections`` (one per customer, in order)."""
    template = _environment().get_template(TEMPLATE)
    return template.render(sections=[_section(s, now) for s in sections], database=database,
                           generated=now.replace(microsecond=0).isoformat() + "Z")


def write_private(path: str | os.PathLike[str], content: str) -> Path:
    """Write ``content`` to ``path`` with mode 0600 (a temporary file beside it, then renamed, so
    a reader never sees half a report and an existing file's wider mode is not kept). Raises
    :class:`ConfigError` with one line when the directory cannot take it."""
    target = Path(path).expanduser()
    try:
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ConfigError(f"--html: cannot write {target}: {exc.strerror}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(content)
        os.chmod(temporary, 0o600)
        os.replace(temporary, target)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise ConfigError(f"--html: cannot write {target}: {exc.strerror}") from None
    return target
