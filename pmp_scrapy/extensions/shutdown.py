"""PromptStop: a stop (SIGTERM, SIGINT, or the run stopping itself) is prompt, commits what is
fetched, records the run and exits 2 ("interrupted"), also when the signal comes twice.

**Waits end at once.** Every wait of the project (retry backoff, ``Retry-After``, Zoho's token
budget, the pause between token tries) is :func:`pause`, which returns early as soon as the
spider starts closing, for whatever reason: Scrapy's own shutdown path (its first-signal handler
stops the engine, which closes the spider), a fatal stop of the run, or the end of the sweep.
The engine's ``close_spider_async`` is wrapped to say so; the caller then drops its request
(``IgnoreRequest``), which leaves the page unclaimed for the next run. Scrapy's close waits for
requests in progress, so without this a 120 s ``Retry-After`` held the stop for 120 s.

**Signals.** Scrapy's ``CrawlerProcess`` handles the first SIGTERM/SIGINT (a graceful stop) and
makes the second one kill the reactor at once, which loses the pages buffered for the final
commit and never records the run (exit 1, "the run ended without a result"). This extension
chains in front of Scrapy's handler, only when Scrapy's handler is the one installed (never in a
test runner or an embedding application):

1. first signal: Scrapy's graceful stop runs as before and the waits end; if the run is not
   recorded :data:`FORCE_AFTER` seconds later (a download still in flight, which Scrapy's close
   waits for up to ``DOWNLOAD_TIMEOUT``), the buffered pages are committed and the run recorded
   without it, then the reactor stops: exit 2;
2. second signal: the same at once, instead of Scrapy's unclean stop (exit 1, nothing
   recorded); the running hook is killed, Slack's last message is not waited for;
3. third signal: the process exits at once with code 2 (what is committed stays consistent:
   checkpoints only cover committed pages; this run is not recorded).

Listens to ``engine_started``; writes the stat ``pmp/stop_signals``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scrapy import signals
from scrapy.utils.asyncio import is_asyncio_available, sleep
from scrapy.utils.ossignal import install_shutdown_handlers, signal_names

if TYPE_CHECKING:
    from typing import Self

    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

FORCE_AFTER = 10.0  # seconds after a first signal before the stop stops waiting for downloads in flight
_SCRAPY_HANDLERS = ("_signal_shutdown", "_signal_shutdown_reactorless")


@dataclass
class StopState:
    """The crawl's stop, shared by the waits and this extension."""

    stopping: asyncio.Event = field(default_factory=asyncio.Event)  # the spider is closing
    hurry: asyncio.Event = field(default_factory=asyncio.Event)  # a second signal: no more waiting
    reason: str | None = None


_states: weakref.WeakKeyDictionary[Crawler, StopState] = weakref.WeakKeyDictionary()


def stop_state(crawler: Crawler) -> StopState:
    """The crawl's :class:`StopState` (created on first use, with or without this extension)."""
    state = _states.get(crawler)
    if state is None:
        state = _states[crawler] = StopState()
    return state


def is_stopping(crawler: Crawler) -> bool:
    return stop_state(crawler).stopping.is_set()


def settle_signals(exit_code: int) -> None:
    """Once the run is over (recorded, its exit code known) a signal has nothing left to stop:
    SIGINT is ignored and SIGTERM exits at once with ``exit_code``. Without this, a second quick
    Ctrl-C that lands while the interpreter shuts down (which puts the default handlers back)
    killed the finished process: exit -2 instead of 2 for a run already recorded. SIG_IGN is
    kept through that shutdown, a Python handler is not (SIGTERM then ends it as usual)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(exit_code))


async def pause(crawler: Crawler, seconds: float) -> bool:
    """Wait ``seconds``; ``False`` (at once) when the run starts stopping meanwhile or already
    has, ``True`` when the whole wait passed."""
    state = stop_state(crawler)
    if state.stopping.is_set():
        return False
    if seconds <= 0:
        return True
    if not is_asyncio_available():  # a reactor without asyncio: waits cannot be cut short
        await sleep(seconds)
        return not state.stopping.is_set()
    try:
        await asyncio.wait_for(state.stopping.wait(), timeout=seconds)
    except TimeoutError:
        return True
    return False


class PromptStop:
    """See the module docstring."""

    def __init__(self, crawler: Crawler) -> None:
        self.crawler = crawler
        self.state = stop_state(crawler)
        self._signals = 0
        self._scrapy_handler: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._force: asyncio.Future[None] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> Self:
        extension = cls(crawler)
        crawler.signals.connect(extension.engine_started, signal=signals.engine_started)
        return extension

    def engine_started(self) -> None:
        self._wrap_engine()
        self._chain_signal_handlers()

    # --- any close ends the waits ----------------------------------------------------------------
    def _wrap_engine(self) -> None:
        engine = self.crawler.engine
        original = engine.close_spider_async

        async def close_spider_async(*, reason: str = "cancelled") -> None:
            self.begin_stop(reason)
            await original(reason=reason)

        engine.close_spider_async = close_spider_async  # type: ignore[method-assign]

    def begin_stop(self, reason: str) -> None:
        """The spider is closing: every :func:`pause` returns now."""
        if self.state.reason is None:
            self.state.reason = reason
        self.state.stopping.set()

    # --- signals -------------------------------------------------------------------------------------
    def _chain_signal_handlers(self) -> None:
        handler = signal.getsignal(signal.SIGTERM)
        owner = getattr(handler, "__self__", None)
        if getattr(handler, "__name__", None) not in _SCRAPY_HANDLERS or owner is None:
            return  # not Scrapy's CrawlerProcess (a test runner, an embedding application): leave it
        self._scrapy_handler = handler
        self._loop = asyncio.get_event_loop() if is_asyncio_available() else None
        install_shutdown_handlers(self._on_signal)

    def _call_soon(self, fn: Any, *args: Any) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn, *args)
        else:
            from twisted.internet import reactor

            reactor.callFromThread(fn, *args)  # type: ignore[attr-defined]

    def _on_signal(self, signum: int, frame: Any) -> None:
        # A signal handler: no logging here (the interrupted code may be writing the same stream).
        self._signals += 1
        if self._signals == 1:
            self._scrapy_handler(signum, frame)  # Scrapy's graceful stop; it installs its killer...
            install_shutdown_handlers(self._on_signal)  # ...which this replaces
            self._call_soon(self._first_signal, signum)
        elif self._signals == 2:
            self._call_soon(self._second_signal, signum)
        else:
            os.write(2, f"pmp_scrapy: exit 2: {signal_names.get(signum, signum)} received a third time; "
                        "stopping at once (only committed pages are checkpointed)\n".encode())
            os._exit(2)

    def _first_signal(self, signum: int) -> None:
        self.crawler.stats.set_value("pmp/stop_signals", 1)
        self.begin_stop("shutdown")
        name = signal_names.get(signum, str(signum))
        logger.warning("%s received: stopping; waits are cut short, the pages fetched are committed and the run is "
                       "recorded (exit 2), without waiting more than %.0f s for downloads in flight; a second "
                       "signal stops at once", name, FORCE_AFTER,
                       extra={"event_type": "stop_requested", "signal": name, "signals": 1})
        if self._force is None:
            self._force = asyncio.ensure_future(self._force_stop())

    def _second_signal(self, signum: int) -> None:
        self.crawler.stats.set_value("pmp/stop_signals", 2)
        self.begin_stop("shutdown")
        self.state.hurry.set()
        name = signal_names.get(signum, str(signum))
        logger.warning("%s received again: stopping now, without waiting for downloads in flight or the hook; the "
                       "pages fetched are still committed and the run recorded (exit 2); a third signal exits at "
                       "once", name, extra={"event_type": "stop_requested", "signal": name, "signals": 2})
        if self._force is None:
            self._force = asyncio.ensure_future(self._force_stop())

    async def _force_stop(self) -> None:
        """Unless the stop has finished :data:`FORCE_AFTER` seconds after the first signal (at once
        after a second one): commit what is buffered, record the run, stop the reactor."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.state.hurry.wait(), timeout=FORCE_AFTER)
        from pmp_scrapy.extensions.checkpoint import Checkpoints
        from pmp_scrapy.pipelines import MappingPipeline

        checkpoints = self.crawler.get_extension(Checkpoints)
        run = checkpoints.run if checkpoints is not None else None
        forced = checkpoints is not None and run is not None and run.outcome is None
        if forced and checkpoints is not None and self.crawler.spider is not None:
            logger.warning("the stop did not finish in time: committing the pages fetched and recording the run "
                           "without waiting for downloads in flight", extra={"event_type": "stop_forced"})
            pipeline = self.crawler.get_item_pipeline(MappingPipeline)
            if pipeline is not None:
                await pipeline.close_spider()
            await checkpoints.spider_closed(self.crawler.spider, "shutdown")
        if forced or self.state.hurry.is_set():
            from twisted.internet import reactor

            with contextlib.suppress(RuntimeError):  # already stopping
                reactor.stop()  # type: ignore[attr-defined,misc]
