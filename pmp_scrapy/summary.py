"""The end of a crawl as a person at a terminal reads it: a few lines under 80 columns saying
what was done, where the data is and what to run next (pure: takes the run record's values).
Off a terminal (cron, scrapyd) the crawl command prints its one machine-friendly line instead."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pmp_scrapy.coverage import format_pct

if TYPE_CHECKING:
    from pmp_scrapy.customers import CustomerResult

OUTCOMES = {0: "done", 1: "fatal", 2: "partial"}
WIDTH = 80


def _fit(line: str) -> str:
    return line if len(line) <= WIDTH else line[:WIDTH - 1] + "…"


def _wrap(label: str, text: str) -> list[str]:
    """``label`` then ``text`` wrapped at word boundaries under :data:`WIDTH` columns."""
    indent = " " * 13
    lines, current = [], f"  {label:<10} "
    for word in text.split():
        if len(current) + len(word) + 1 > WIDTH and current.strip():
            lines.append(current.rstrip())
            current = indent
        current += word + " "
    lines.append(current.rstrip())
    return [_fit(line) for line in lines]


def _next_lines(exit_code: int, status_command: str) -> list[str]:
    if exit_code == 0:
        return _wrap("next", status_command)
    if exit_code == 2:
        return _wrap("next", f"{status_command}   (which pages, and why)")
    return _wrap("next", "fix the cause above, then run the same command again")


def terminal_summary(*, exit_code: int, message: str, pages_committed: int, gaps_opened: int,
                     gaps_resolved: int, mappings: int, coverage: int, total: int | None, target_met: bool,
                     database: str, status_command: str) -> str:
    """The summary block (see the module docstring)."""
    lines = [f"pmp_scrapy: exit {exit_code} ({OUTCOMES.get(exit_code, '?')})"]
    gaps = f"{gaps_opened} new gap(s)" + (f", {gaps_resolved} healed" if gaps_resolved else "")
    lines += _wrap("pages", f"{pages_committed:,} committed, {gaps}")
    lines += _wrap("mappings", f"{mappings:,} written")
    if total:
        verdict = "target met" if target_met else "target not met"
        lines += _wrap("coverage", f"{coverage:,} of {total:,} systems ({format_pct(coverage, total)}), {verdict}")
    else:
        lines += _wrap("coverage", f"{coverage:,} systems")
    if exit_code != 0:
        lines += _wrap("result", message)
    lines += _wrap("data", database)
    lines += _next_lines(exit_code, status_command)
    return "\n".join(lines)


def _customer_line(result: CustomerResult) -> str:
    outcome = f"exit {result.exit_code} ({OUTCOMES.get(result.exit_code, '?')})"
    if not result.swept:
        return f"{outcome}: {result.message}"
    gaps = f"{result.gaps_opened} new gap(s)" + (f", {result.gaps_resolved} healed" if result.gaps_resolved else "")
    if result.total:
        coverage = f"{result.coverage:,} of {result.total:,} systems ({format_pct(result.coverage, result.total)})"
    else:
        coverage = f"{result.coverage:,} systems"
    text = f"{outcome}: {result.pages_committed:,} pages, {gaps}, {result.mappings:,} mappings, {coverage}"
    return text + (f"; {result.message}" if result.exit_code != 0 else "")


def customers_summary(*, exit_code: int, message: str, results: Sequence[CustomerResult], database: str,
                      status_command: str) -> str:
    """The summary block of a job that swept several MSP customers: the job's result, one
    entry per customer (its name, then how it ended), where the data is and what to run next."""
    lines = [f"pmp_scrapy: exit {exit_code} ({OUTCOMES.get(exit_code, '?')})", *_wrap("customers", message)]
    for result in results:
        label = result.customer if len(result.customer) <= 10 else ""
        if not label:
            lines.append(_fit(f"  {result.customer}"))
        lines += _wrap(label, _customer_line(result))
    lines += _wrap("data", database)
    lines += _next_lines(exit_code, status_command)
    return "\n".join(lines)
