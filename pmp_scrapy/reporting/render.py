"""``scrapy report --format table|json|csv``: one answer (a dict from
:mod:`pmp_scrapy.storage.reports` or :mod:`~pmp_scrapy.storage.report_subjects`) as text.

- ``json``: the answer itself, one object (the contract's keys).
- ``csv``: the rows behind the answer, one header line: the summary's systems missing something
  (worst first), a system's missing patches, a patch's systems with their status, a bulletin's
  or CVE's affected systems with theirs. Cells that a spreadsheet would run as a formula
  (``=``, ``+``, ``@``, ``-`` before a letter) are prefixed with ``'``.
- ``table``: for a person at a terminal; long lists are cut at ``limit`` lines with a note.

Pure: no database, no files.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Sequence
from typing import Any

from pmp_scrapy.reporting.codes import SEVERITIES

FORMS = ("summary", "system", "patch", "bulletin", "cve")
TABLE_LIMIT = 25  # lines of a list in the table form unless --limit says otherwise


def to_json(answer: dict[str, Any]) -> str:
    """The answer as one indented JSON object."""
    return json.dumps(answer, indent=2, ensure_ascii=False, default=str)


# --- CSV ---------------------------------------------------------------------------------------------------

def _status_rows(answer: dict[str, Any], key: str) -> list[dict[str, Any]]:
    base = {key: answer[key]}
    rows = [{**base, **entry, "status": "missing", "missing_patches": " ".join(entry["patches"])}
            for entry in answer.get("missing", [])]
    rows += [{**base, **entry, "status": "covered", "missing_patches": ""} for entry in answer.get("covered", [])]
    return sorted(rows, key=lambda row: (row["resource_name"] or "", row["resource_id"]))


def csv_table(form: str, answer: dict[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The CSV form's columns and rows for ``form``."""
    if form == "summary":
        columns = ["customer", "resource_id", "resource_name", *(f"missing_{n.lower()}" for n in SEVERITIES),
                   "missing_count", "past_sla", "oldest_missing_since", "oldest_missing_days"]
        return columns, [{"customer": answer["customer"], **row} for row in answer.get("systems_ranked", [])]
    if form == "system":
        columns = ["resource_id", "resource_name", "patch_id", "patchname", "severity", "bulletinid", "vendor_name",
                   "cves", "missing_since", "days_missing", "sla_days", "past_sla"]
        return columns, [{"resource_id": answer["resource_id"], "resource_name": answer["resource_name"], **row,
                          "cves": " ".join(row["cves"])} for row in answer["missing"]]
    if form == "patch":
        columns = ["patch_id", "patchname", "resource_id", "resource_name", "status", "installed_at",
                   "missing_since", "days_missing"]
        base = {"patch_id": answer["patch_id"], "patchname": answer["patchname"]}
        rows = ([{**base, **row, "status": "Installed"} for row in answer["installed"]]
                + [{**base, **row, "status": "Missing"} for row in answer["missing"]]
                + [{**base, **row} for row in answer["other"]])
        return columns, sorted(rows, key=lambda row: (row["resource_name"] or "", row["resource_id"]))
    key = "bulletin" if form == "bulletin" else "cve"
    return [key, "resource_id", "resource_name", "status", "missing_patches"], _status_rows(answer, key)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value and (value[0] in "=+@\t\r" or (value[0] == "-" and value[1:2].isalpha())):
        return "'" + value
    return value


_RISKY_FIRST = frozenset("=+@\t\r-")


def _cells(row: dict[str, Any], columns: list[str]) -> list[Any]:
    """The row's values in column order, text a spreadsheet would run as a formula quoted
    (:func:`_cell`, called only for text starting with a risky character: 400,000 cells a big CSV)."""
    values = [row.get(name) for name in columns]
    return [_cell(v) if type(v) is str and v and v[0] in _RISKY_FIRST else v for v in values]


def to_csv(form: str, answer: dict[str, Any]) -> str:
    """The rows behind the answer as CSV with a header line."""
    columns, rows = csv_table(form, answer)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    # Plain lists, not DictWriter: the summary's CSV is a row per system (33,000 on a big estate).
    writer.writerows(_cells(row, columns) for row in rows)
    return out.getvalue()


# --- table -------------------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def when(value: str | None) -> str:
    """``2025-11-26T10:00:00Z`` as ``2025-11-26 10:00 UTC``."""
    return "-" if not value else value.replace("T", " ")[:16] + " UTC"


def day(value: str | None) -> str:
    """An ISO time as its date."""
    return "-" if not value else value[:10]


def grid(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, indent: str = "  ") -> list[str]:
    """Aligned columns: numbers right, text left."""
    cells = [[_text(value) for value in row] for row in rows]
    widths = [max([len(header)] + [len(row[i]) for row in cells]) for i, header in enumerate(headers)]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) and rows
               for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return indent + "  ".join(v.rjust(w) if numeric[i] else v.ljust(w)
                                  for i, (v, w) in enumerate(zip(values, widths, strict=True))).rstrip()

    return [line(list(headers)), *(line(row) for row in cells)]


def _cut(entries: list[Any], total: int | None, limit: int, what: str) -> tuple[list[Any], list[str]]:
    shown = entries[:limit]
    hidden = (total if total is not None else len(entries)) - len(shown)
    note = [f"  ... and {hidden:,} more {what} (--limit N, or --format csv for all)"] if hidden > 0 else []
    return shown, note


def _customer(answer: dict[str, Any]) -> str:
    return f"customer {answer['customer']!r}" if answer.get("customer") else "default customer"


def _summary(answer: dict[str, Any], limit: int) -> list[str]:
    snap = answer.get("latest_snapshot") or {}
    lines = [f"Patch compliance, {_customer(answer)}: data as of {when(answer['data_as_of'])}"
             + (f" (latest snapshot {snap['snapshot_id']}: {snap['state']})" if snap else ""),
             f"  systems:  {answer['systems']:,} present"
             + (f" of {answer['managed_total']:,} managed ({_text(answer['coverage_pct'])}% coverage)"
                if answer.get("managed_total") else ""),
             (f"            {answer['systems_missing_any']:,} missing at least one patch, "
             f"{answer['systems_fully_patched']:,} fully patched")]
    others = [name for name in answer.get("customers", []) if name != answer["customer"]]
    if not answer["systems"] and others:
        lines.append(f"  customers in this database: {', '.join(repr(n) if n else '(default)' for n in others)} "
                     "(--customer NAME)")
    if answer.get("severity_filter"):
        lines.append(f"  severity: {', '.join(answer['severity_filter'])} only")
    sla = answer["sla"]["by_severity"]
    lines += ["", *grid(["severity", "systems missing", "patches missing", "SLA days", "systems past SLA"],
                        [[name, counts["systems_missing"], counts["patches_missing"],
                          sla.get(name, {}).get("sla_days"), sla.get(name, {}).get("systems_past_sla")]
                         for name, counts in answer["by_severity"].items()])]
    lines += ["", "Worst systems (most missing critical patches)"]
    lines += grid(["resource_id", "name", "critical", "important", "moderate", "low", "missing", "past SLA",
                   "missing since"],
                  [[s["resource_id"], s["resource_name"], s["missing_critical"], s["missing_important"],
                    s["missing_moderate"], s["missing_low"], s["missing_count"], s["past_sla"],
                    day(s["oldest_missing_since"])] for s in answer["worst_systems"][:limit]])
    lines += ["", "Most missed patches"]
    lines += grid(["patch_id", "name", "severity", "bulletin", "systems missing", "installed"],
                  [[p["patch_id"], p["patchname"], p["severity"], p["bulletinid"], p["systems_missing"],
                    p["systems_installed"]] for p in answer["most_missed_patches"][:limit]])
    lines += ["", f"SLA breaches: {sla_line(answer)}"]
    if answer["sla_breaches"]:
        lines += grid(["system", "patch", "severity", "missing since", "days", "SLA days"],
                      [[b["resource_name"] or b["resource_id"], b["patchname"] or b["patch_id"], b["severity"],
                        day(b["missing_since"]), b["days_missing"], b["sla_days"]]
                       for b in answer["sla_breaches"][:limit]])
    lines += ["", "CVE data: " + ("available (scrapy report --cve CVE-ID)" if answer["cve_data"] == "available"
                                  else "unavailable (the PMP server did not serve the patch catalog)")]
    return lines


def sla_line(answer: dict[str, Any]) -> str:
    """``N systems and M patches past their SLA (Critical 15 d, ...)``."""
    sla = answer["sla"]
    days = ", ".join(f"{name} {d} d" for name, d in answer["sla_days"].items())
    return (f"{sla['systems_past_sla']:,} systems and {sla['patches_past_sla']:,} patches past their SLA "
            f"({days})")


def _system(answer: dict[str, Any], limit: int) -> list[str]:
    lines = [f"System {answer['resource_name']} (resource id {answer['resource_id']}, {_customer(answer)})",
             f"  {answer['installed_count']:,} installed, {answer['missing_count']:,} missing"
             + (f", {answer['other_count']:,} other (failed ...)" if answer["other_count"] else "")
             + (f"; severity {', '.join(answer['severity_filter'])} only" if answer.get("severity_filter") else "")]
    shown, note = _cut(answer["missing"], answer["missing_count"], limit, "missing patches")
    if shown:
        lines += ["", *grid(["patch_id", "name", "severity", "bulletin", "CVEs", "missing since", "days", "past SLA"],
                            [[m["patch_id"], m["patchname"], m["severity"], m["bulletinid"], " ".join(m["cves"]) or "-",
                              day(m["missing_since"]), m["days_missing"], m["past_sla"]] for m in shown]), *note]
    return lines


def _patch(answer: dict[str, Any], limit: int) -> list[str]:
    lines = [(f"Patch {answer['patch_id']}: {answer['patchname'] or '-'} ({answer['severity'] or '-'}, "
             f"bulletin {answer['bulletinid'] or '-'}{', ' + ' '.join(answer['cves']) if answer['cves'] else ''})"),
             f"  {answer['systems']:,} systems have it: {answer['systems_installed']:,} installed, "
             f"{answer['systems_missing']:,} missing" + (f", {answer['systems_other']:,} other" if answer["systems_other"]
                                                         else "")
             + (f" ({_text(answer['coverage_pct'])}% covered)" if answer["coverage_pct"] is not None else "")]
    for title, key, total, headers, row in (
            ("Missing on", "missing", answer["systems_missing"], ["resource_id", "name", "missing since", "days"],
             lambda e: [e["resource_id"], e["resource_name"], day(e["missing_since"]), e["days_missing"]]),
            ("Installed on", "installed", answer["systems_installed"], ["resource_id", "name", "installed"],
             lambda e: [e["resource_id"], e["resource_name"], day(e["installed_at"])]),
            ("Other status on", "other", answer["systems_other"], ["resource_id", "name", "status"],
             lambda e: [e["resource_id"], e["resource_name"], e["status"]])):
        shown, note = _cut(answer[key], total, limit, "systems")
        if shown:
            lines += ["", f"{title}:", *grid(headers, [row(e) for e in shown]), *note]
    return lines


def reach_lines(answer: dict[str, Any], what: str, limit: int) -> list[str]:
    """The table form of a bulletin or CVE answer."""
    if answer.get("cve_data") == "unavailable":
        return [(f"CVE {answer['cve']}: CVE data unavailable (the PMP server did not serve the patch catalog, "
                "so no CVE is known)")]
    lines = [f"{what} {answer[what.lower()]}: fixed by {len(answer['patches'])} patch(es): {' '.join(answer['patches'])}",
             f"  {answer['systems_affected']:,} systems affected: {answer['systems_covered']:,} covered, "
             f"{answer['systems_missing']:,} missing"
             + (f" ({_text(answer['coverage_pct'])}% covered)" if answer["coverage_pct"] is not None else "")]
    shown, note = _cut(answer["missing"], answer["systems_missing"], limit, "systems")
    if shown:
        lines += ["", "Missing on:", *grid(["resource_id", "name", "missing patches"],
                                           [[e["resource_id"], e["resource_name"], " ".join(e["patches"])]
                                            for e in shown]), *note]
    return lines


_TABLES: dict[str, Callable[[dict[str, Any], int], list[str]]] = {
    "summary": _summary, "system": _system, "patch": _patch,
    "bulletin": lambda answer, limit: reach_lines(answer, "Bulletin", limit),
    "cve": lambda answer, limit: reach_lines(answer, "CVE", limit),
}


def to_table(form: str, answer: dict[str, Any], limit: int | None = None) -> str:
    """The answer for a terminal; lists cut at ``limit`` lines (25)."""
    return "\n".join(_TABLES[form](answer, limit if limit is not None else TABLE_LIMIT))
