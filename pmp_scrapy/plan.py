"""What one run will do, decided from what the database says (pure: no Scrapy, no SQL).

:class:`RunState` is what the store reads about a customer before a run; :func:`decide` turns it
and the configuration into a :class:`PlanDecision` (continue the snapshot, retry its gaps only,
or start a new one, and why); :func:`make_plan` turns the decision and the snapshot id into the
:class:`RunPlan` the spider follows (a new snapshot expects the page count of the one before,
:func:`expected_pages`). :class:`Watermark` is the highest page such that every page
up to it is committed or a gap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime


class Watermark:
    """Contiguous progress over pages that finish out of order."""

    def __init__(self, start: int = 0) -> None:
        self.value = start
        self._done: set[int] = set()

    def mark(self, page: int) -> int:
        """Record ``page`` as settled and return the new watermark."""
        if page > self.value:
            self._done.add(page)
            while self.value + 1 in self._done:
                self.value += 1
                self._done.discard(self.value)
        return self.value

    def peek(self, pages: list[int]) -> int:
        """The watermark ``mark`` would give after ``pages``, without recording them (used to
        write a checkpoint in the same transaction as the pages' rows)."""
        pending = self._done | set(pages)
        value = self.value
        while value + 1 in pending:
            value += 1
        return value


@dataclass
class RunState:
    """What the database says about a customer's extraction before a run."""

    snapshot_id: int | None = None
    snapshot_state: str | None = None
    catalog_state: str | None = None  # the snapshot's patch catalog: None (not swept), complete, partial, unavailable
    last_page: int | None = None
    total_pages: int | None = None
    managed_total: int | None = None
    page_limit: int | None = None
    open_gap_pages: list[int] = field(default_factory=list)
    orphan_checkpoint_snapshot: int | None = None
    #: when the customer's latest complete snapshot completed (naive UTC), or None
    last_complete_at: datetime | None = None
    #: page -> totalRecords it was answered with, for the latest snapshot's pages
    page_totals: dict[int, int] = field(default_factory=dict)
    total_records: int | None = None
    #: mappings a system in the latest snapshot's checkpoint (what a page's size depends on)
    mappings_per_system: float | None = None


@dataclass
class RunPlan:
    """The run's starting state. ``first_page`` is None when the run only retries gaps."""

    snapshot_id: int
    first_page: int | None
    batch_end: int | None  # last page this run may request; None: through the last page
    retry_pages: list[int] = field(default_factory=list)
    known_total_pages: int | None = None
    known_managed_total: int | None = None
    new_snapshot: bool = False
    watermark: Watermark = field(default_factory=Watermark)
    page_limit: int = 30  # the snapshot's page size (pageLimit), kept for its whole life
    abandoned: int | None = None  # the running snapshot this new one replaced
    #: page -> totalRecords it was answered with, in earlier runs of this snapshot
    known_page_totals: dict[int, int] = field(default_factory=dict)
    #: a new snapshot's page count as the previous snapshot suggests it (a guess, not a fact: the
    #: spider asks for these pages before the first answer and drops answers past the real end)
    expected_total_pages: int | None = None
    #: mappings a page of this snapshot can expect, from the latest checkpoint (None: unknown)
    expected_page_rows: int | None = None

    def planned_pages(self, total_pages: int | None) -> int | None:
        """Pages this run will settle: its range of new pages plus the gaps it retries, or
        ``None`` while the page count is unknown."""
        pages = len(self.retry_pages)
        if self.first_page is not None:
            last = total_pages if self.batch_end is None else (
                self.batch_end if total_pages is None else min(self.batch_end, total_pages))
            if last is None:
                return None
            pages += max(last - self.first_page + 1, 0)
        return pages


@dataclass(frozen=True)
class PlanDecision:
    """What :func:`decide` chose. ``new_snapshot_reason`` set: start a new snapshot (marking
    ``abandon`` abandoned); else continue ``state.snapshot_id`` from ``first_page`` (None: only
    retry ``retry_pages``). ``invalid_checkpoint``: the reason was a checkpoint that cannot be
    right (logged at WARNING)."""

    new_snapshot_reason: str | None
    abandon: int | None
    first_page: int | None
    retry_pages: tuple[int, ...]
    invalid_checkpoint: bool = False
    idle_reason: str | None = None  # set: the run sends nothing (target met and data fresh)


def _checkpoint_problem(state: RunState) -> str | None:
    if state.orphan_checkpoint_snapshot is not None:
        return f"the newest checkpoint points at snapshot {state.orphan_checkpoint_snapshot}, which does not exist"
    if state.snapshot_id is None:
        return None
    if state.last_page is not None and state.last_page < 0:
        return f"the checkpoint of snapshot {state.snapshot_id} is at page {state.last_page}"
    if state.last_page is not None and state.total_pages is not None and state.last_page > state.total_pages:
        return (f"the checkpoint of snapshot {state.snapshot_id} is at page {state.last_page}, "
                f"past the last page {state.total_pages}")
    return None


def stale_pages(page_totals: dict[int, int], total_records: int | None, total_pages: int | None) -> list[int]:
    """Pages answered with another ``totalRecords`` than the latest: read before the tenant
    changed, so systems may have shifted past them (DCAPI pages are positions in a sorted list)."""
    if total_records is None:
        return []
    return sorted(page for page, total in page_totals.items()
                  if total != total_records and (total_pages is None or page <= total_pages))


def page_list(pages: Sequence[int], shown: int = 20) -> str:
    """``pages`` as a log line lists them: the first ``shown``, then "…" when there are more."""
    return ", ".join(map(str, pages[:shown])) + (" …" if len(pages) > shown else "")


def _age_seconds(completed_at: datetime | None, now: datetime) -> float | None:
    return None if completed_at is None else (now - completed_at).total_seconds()


def decide(state: RunState, *, reset: bool, target_met: bool = False, refresh_interval: float = 0,
           now: datetime | None = None) -> PlanDecision:
    """Continue the current sweep, retry its open gaps, idle, or start a new snapshot.

    A sweep in progress is always continued until complete, whatever the coverage. Once the latest
    sweep is complete with no open gap, a run idles while the target is met and that sweep is
    younger than ``refresh_interval`` seconds (0: never refresh, the spec's stop-forever)."""
    abandon = state.snapshot_id if state.snapshot_state == "running" else None
    if reset:
        return PlanDecision("reset requested", abandon, 1, ())
    problem = _checkpoint_problem(state)
    if problem is not None:
        return PlanDecision(problem, abandon, 1, (), invalid_checkpoint=True)
    if state.snapshot_id is None:
        return PlanDecision("first run", None, 1, ())
    if state.snapshot_state == "running":
        last = state.last_page or 0
        if state.total_pages is not None and last >= state.total_pages:
            # Every page is in, but some were read before the tenant changed: read them again.
            shifted = stale_pages(state.page_totals, state.total_records, state.total_pages)
            return PlanDecision(None, None, None, tuple(sorted(set(state.open_gap_pages) | set(shifted))))
        return PlanDecision(None, None, last + 1, tuple(state.open_gap_pages))
    if state.open_gap_pages:
        return PlanDecision(None, None, None, tuple(state.open_gap_pages))
    age = _age_seconds(state.last_complete_at, now or datetime.now(UTC).replace(tzinfo=None))
    if target_met:
        if refresh_interval <= 0:
            return PlanDecision(None, None, None, (), idle_reason="target met (PMP_REFRESH_INTERVAL=0: never refresh)")
        if age is not None and age < refresh_interval:
            return PlanDecision(None, None, None, (), idle_reason=(
                f"target met and the data is {format_age(age)} old; the next sweep is due in "
                f"{format_age(refresh_interval - age)}"))
        if age is not None:
            return PlanDecision(f"refresh: the last complete sweep is {format_age(age)} old "
                                f"(PMP_REFRESH_INTERVAL {refresh_interval:g} s)", None, 1, ())
    return PlanDecision("the previous sweep is complete", None, 1, ())


def format_age(seconds: float) -> str:
    """A duration for people: 45 s, 12 min, 5.2 h, 3.1 days."""
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def expected_pages(state: RunState, page_limit: int) -> int | None:
    """The page count a new snapshot of ``page_limit`` systems a page can expect: the latest
    snapshot's own count at the same page size, else its ``totalRecords`` at the new size;
    ``None`` when it never learnt either."""
    if state.total_pages and state.page_limit == page_limit:
        return state.total_pages
    if state.total_records and page_limit > 0:
        return math.ceil(state.total_records / page_limit)
    return None


def make_plan(decision: PlanDecision, state: RunState, snapshot_id: int, batch_pages: int,
              page_limit: int) -> RunPlan:
    """The plan of ``decision`` for ``snapshot_id`` (a new one when the decision says so). A new
    snapshot takes ``page_limit`` (``PMP_PAGE_LIMIT``); a continued one keeps its own."""
    first = decision.first_page
    batch_end = first + batch_pages - 1 if (first is not None and batch_pages) else None
    new = decision.new_snapshot_reason is not None
    limit = page_limit if new or not state.page_limit else state.page_limit
    return RunPlan(
        snapshot_id=snapshot_id, first_page=first, batch_end=batch_end,
        retry_pages=list(decision.retry_pages),
        known_total_pages=None if new else state.total_pages,
        known_managed_total=state.managed_total, new_snapshot=new,
        watermark=Watermark((first or 1) - 1),
        page_limit=limit,
        known_page_totals={} if new else dict(state.page_totals),
        abandoned=decision.abandon if new else None,
        expected_total_pages=expected_pages(state, limit) if new and first is not None else None,
        expected_page_rows=round(state.mappings_per_system * limit) if state.mappings_per_system else None,
    )
