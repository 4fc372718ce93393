"""What one run will do (set by the checkpoint extension, read by the spider and the pipeline),
and the watermark: the highest page such that every page up to it is committed or a gap."""

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

    def settled_beyond(self) -> int:
        """Pages settled above the watermark (waiting for a lower page)."""
        return len(self._done)


@dataclass
class RunPlan:
    """The run's starting state. ``first_page`` is None when the run only retries gaps."""

    snapshot_id: int
    customer: str
    first_page: int | None
    batch_end: int | None  # last page this run may request; None: through the last page
    retry_pages: list[int] = field(default_factory=list)
    known_total_pages: int | None = None
    known_managed_total: int | None = None
    new_snapshot: bool = False
    watermark: Watermark = field(default_factory=Watermark)
