"""What one run will do, decided from what the database says (pure: no Scrapy, no SQL).

:class:`RunState` is what the store reads about a customer before a run; :func:`decide` turns it
and the configuration into a :class:`PlanDecision` (continue the snapshot, retry its gaps only,
or start a new one, and why); :func:`make_plan` turns the decision and the snapshot id into the
:class:`RunPlan` the spider follows. :class:`Watermark` is the highest page such that every page
up to it is committed or a gap.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    last_page: int | None = None
    total_pages: int | None = None
    managed_total: int | None = None
    page_limit: int | None = None
    open_gap_pages: list[int] = field(default_factory=list)
    orphan_checkpoint_snapshot: int | None = None


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


def decide(state: RunState, *, reset: bool) -> PlanDecision:
    """Continue the current snapshot, retry its open gaps, or start a new snapshot."""
    abandon = state.snapshot_id if state.snapshot_state == "running" else None
    if reset:
        return PlanDecision("reset requested", abandon, 1, ())
    problem = _checkpoint_problem(state)
    if problem is not None:
        return PlanDecision(problem, abandon, 1, (), invalid_checkpoint=True)
    if state.snapshot_id is None:
        return PlanDecision("first run", None, 1, ())
    if state.snapshot_state != "running":
        if state.open_gap_pages:
            return PlanDecision(None, None, None, tuple(state.open_gap_pages))
        return PlanDecision("the previous sweep is complete", None, 1, ())
    return PlanDecision(None, None, (state.last_page or 0) + 1, tuple(state.open_gap_pages))


def make_plan(decision: PlanDecision, state: RunState, snapshot_id: int, batch_pages: int) -> RunPlan:
    """The plan of ``decision`` for ``snapshot_id`` (a new one when the decision says so)."""
    first = decision.first_page
    batch_end = first + batch_pages - 1 if (first is not None and batch_pages) else None
    new = decision.new_snapshot_reason is not None
    return RunPlan(
        snapshot_id=snapshot_id, first_page=first, batch_end=batch_end,
        retry_pages=list(decision.retry_pages),
        known_total_pages=None if new else state.total_pages,
        known_managed_total=state.managed_total, new_snapshot=new,
        watermark=Watermark((first or 1) - 1),
    )
