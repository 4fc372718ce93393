"""ProgressBar: a live bar on the terminal (rich): pages done of the run's total, mappings,
errors (pages that ended as gaps) and the time remaining.

Reads ``PMP_PROGRESS``: ``auto`` (default) shows the bar only when stderr is a terminal and the
run is not a scrapyd job, so cron and scrapyd stay silent; ``on`` forces it; ``off`` disables
it. Listens to ``engine_started``, ``item_scraped`` and ``spider_closed``. Writes nothing; it
shares :func:`pmp_scrapy.logformat.console` with the console log handler so log lines print
above the bar.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.exceptions import NotConfigured

from pmp_scrapy.config import get_config
from pmp_scrapy.items import PageGap, PatchPage
from pmp_scrapy.logformat import console
from pmp_scrapy.run import find_run

if TYPE_CHECKING:
    from typing import Self

    from rich.progress import Progress, TaskID
    from scrapy.crawler import Crawler


def progress_wanted(setting: str, *, stderr_tty: bool, environ: dict[str, str] | os._Environ[str]) -> bool:
    """Whether to show the bar: ``on``, or ``auto`` on a terminal outside scrapyd."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return stderr_tty and "SCRAPY_JOB" not in environ


class ProgressBar:
    """See the module docstring."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.progress: Progress | None = None
        self.task: TaskID | None = None
        self.done = 0
        self.mappings = 0
        self.errors = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        setting = get_config(crawler).progress
        if not progress_wanted(setting, stderr_tty=sys.stderr.isatty(), environ=os.environ):
            raise NotConfigured  # silent: cron, scrapyd and pipes get no bar
        extension = cls(crawler)
        crawler.signals.connect(extension.engine_started, signal=signals.engine_started)
        crawler.signals.connect(extension.item_scraped, signal=signals.item_scraped)
        crawler.signals.connect(extension.spider_closed, signal=signals.spider_closed)
        return extension

    def _planned(self) -> int | None:
        run = find_run(self.crawler)
        return run.planned_pages() if run is not None else None

    def engine_started(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]pages"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[mappings]:,} mappings"), TextColumn("{task.fields[errors]} errors"),
            TextColumn("ETA"), TimeRemainingColumn(),
            console=console(), transient=False, refresh_per_second=4,
        )
        self.task = self.progress.add_task("pages", total=self._planned(), mappings=0, errors=0)
        self.progress.start()

    def item_scraped(self, item: Any) -> None:
        if self.progress is None or self.task is None:
            return
        if isinstance(item, PatchPage):
            self.mappings += len(item.rows.mappings)
        elif isinstance(item, PageGap):
            self.errors += 1
        else:
            return
        self.done += 1
        self.progress.update(self.task, completed=self.done, total=self._planned(),
                             mappings=self.mappings, errors=self.errors)

    def spider_closed(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
