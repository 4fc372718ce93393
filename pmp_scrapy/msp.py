"""All customers of an MSP server in one job: ``-a customer=all`` or ``-a customer=Acme,Globex``.

The crawl command hands such a selection to a :class:`CustomerSweep`, which runs on the command's
crawler process and reactor, one crawl after another:

1. **Discovery** (:class:`CustomerListSpider`, a crawler of its own without the checkpoint
   extension, the pipeline, Slack, the hook or the progress bar): takes the tenant's run lock
   (held by another run: the job is skipped, exit 0, ``run_skipped``, nothing sent) and asks
   ``GET {PMP_BASE_URL}/api/1.4/desktop/customers`` as every PMP request is asked (the token or
   API-key middleware authorises it, the pacer paces it, the retry middleware retries it). The
   job holds that lock until its last customer's crawl is over, lending it to each customer's
   crawl (:mod:`pmp_scrapy.lock_share`): no other run of the tenant starts between customers.
2. **The selection** is resolved against that list (:func:`pmp_scrapy.customers.resolve`): a name
   the server does not list is a configuration error before any sweep.
3. **One** ``dcapi_patches`` **crawler per customer**, each with ``customer=<name>`` and the
   job's other spider arguments, its own run record, snapshot, gaps, coverage, outcome,
   ``dcapi_runs`` row, Slack messages and hook: what a one-customer job does. They share one
   :class:`~pmp_scrapy.middlewares.auth.SharedToken` (the discovery's token serves every
   customer while it is fresh: one token for the job) and one rate: one crawler runs at a time,
   and the next one's first request leaves at least the pace's spacing (``DOWNLOAD_DELAY`` ×
   (1 + ``PMP_RATE_MARGIN``)) after the previous crawl ended.

The sweep stops early when the process is stopping (a signal: the customer in progress records
its run and exits 2 as a one-customer job would) or when a customer's run was fatal (the token,
the credentials and the database are every customer's); the customers it did not reach are
reported as not swept (exit 2). Scrapy installs its signal handlers once per process and each
crawler's :class:`~pmp_scrapy.extensions.shutdown.PromptStop` chains in front of the one it
finds, so the handlers found before the first crawl are put back before each next one.

Reads the settings every crawl reads (through each crawler); writes no table itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from typing import TYPE_CHECKING, Any

import scrapy
from scrapy import signals
from twisted.internet.defer import Deferred

from pmp_scrapy.config import get_config, read
from pmp_scrapy.credentials import resolve_secret
from pmp_scrapy.customers import (
    CustomerResult,
    CustomerSelection,
    not_swept,
    resolve,
)
from pmp_scrapy.errors import ConfigError, StorageError
from pmp_scrapy.footprint import trim_heap
from pmp_scrapy.lock_share import lend_lock
from pmp_scrapy.middlewares.auth import SharedToken, share_token
from pmp_scrapy.msp_discovery import CustomerListSpider, Discovery
from pmp_scrapy.outcome import FATAL_REASONS, SKIPPED_REASON, TARGET_MET_REASON
from pmp_scrapy.pacing import paced_delay
from pmp_scrapy.run import find_run
from pmp_scrapy.storage.locks import LockHeld, acquire_tenant_lock, fingerprint, tenant_key
from pmp_scrapy.storage.token_mints import claim_mint
from pmp_scrapy.storage.watchdog import call_within

if TYPE_CHECKING:

    from scrapy.crawler import Crawler, CrawlerProcessBase

    from pmp_scrapy.config import PMPConfig

logger = logging.getLogger(__name__)

#: Close reasons after which the next customer is swept (a run that ended by itself).
CONTINUE_REASONS = frozenset({"finished", TARGET_MET_REASON, SKIPPED_REASON})
_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGBREAK", None)) if s is not None)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


class CustomerSweep:
    """Discovery, then one crawler per customer in turn (see the module docstring). ``run``
    blocks until the last crawl is over; then :meth:`results` says how each customer ended."""

    def __init__(self, process: CrawlerProcessBase, spider_name: str, arguments: dict[str, Any],
                 selection: CustomerSelection) -> None:
        self.process = process
        self.spider_name = spider_name
        self.arguments = {k: v for k, v in arguments.items() if k != "customer"}
        self.selection = selection
        self.shared = SharedToken()
        self.discovery = Discovery()
        self.customers: list[str] = []
        self.config: PMPConfig | None = None  # as the last customer's crawl saw it (a demo's database too)
        self._swept: list[CustomerResult] = []  # the customers whose crawl is over
        self._current: tuple[str, Crawler] | None = None  # the crawl in progress
        self.close_reasons: dict[str, str] = {}
        self.config_error: str | None = None
        self.failure: str | None = None
        self._spacing = 0.0
        self._stopping = asyncio.Event()
        self._handlers: dict[int, Any] = {}
        self._task: asyncio.Task[None] | None = None

    # --- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        """Run the sweep on the process's reactor; returns when it is over (or stopped)."""
        self._task = asyncio.get_event_loop().create_task(self._sweep())
        _reactor().addSystemEventTrigger("before", "shutdown", self._reactor_stopping)
        self.process.start(stop_after_crawl=False)  # _sweep stops the reactor when done
        self._release_lock()  # stopped by a signal before _sweep's own release
        self.shared.forget()

    def _reactor_stopping(self) -> Deferred[Any] | None:
        """The reactor stops (the sweep is over, or a signal stopped the crawl in progress): start
        no other crawl; the crawl in progress is Scrapy's own shutdown to finish."""
        self._stopping.set()
        task = self._task
        if task is None or task.done():
            return None
        task.cancel()  # it awaits a crawl through a shield: the crawl itself goes on stopping
        return Deferred.fromFuture(task).addErrback(lambda _: None)

    async def _sweep(self) -> None:
        self._handlers = {s: signal.getsignal(s) for s in _SIGNALS}
        try:
            discovery = self.process.create_crawler(CustomerListSpider)
            share_token(discovery, self.shared)
            await self._crawl(discovery, sweep=self, **self.arguments)
            self._collect()
            del discovery
            if self.discovery.names is None:
                return
            try:
                self.customers = resolve(self.selection, self.discovery.names)
            except ConfigError as exc:
                self.config_error = str(exc)
                return
            for name in self.customers:
                if not await self._space():
                    return
                crawler = self.process.create_crawler(self.spider_name)
                share_token(crawler, self.shared)
                if self.discovery.lock is not None:
                    lend_lock(crawler, self.discovery.lock)
                crawler.signals.connect(self._closed_reason(name), signal=signals.spider_closed, weak=False)
                self._current = (name, crawler)
                await self._crawl(crawler, customer=name, **self.arguments)
                self._swept.append(self._result(name, crawler))
                self._current = None
                self.config = get_config(crawler)
                go_on = self._go_on(name, crawler)
                del crawler
                self._collect()
                if not go_on:
                    return
        except Exception as exc:  # a bug here must still stop the reactor, and say why
            logger.exception("the customer sweep failed", extra={"event_type": "customer_sweep_failed"})
            self.failure = f"the customer sweep failed: {type(exc).__name__}: {exc}"
        finally:
            self._release_lock()
            with contextlib.suppress(RuntimeError):  # already stopping
                _reactor().stop()

    def _release_lock(self) -> None:
        """Give the tenant's lock back (after the last customer's commit): the next run may start.
        Bounded: a PostgreSQL that stopped answering frees the lock itself when the session goes."""
        lock, self.discovery.lock = self.discovery.lock, None
        if lock is not None and not call_within(lock.release, 15.0):
            logger.warning("the run lock was not released: the database does not answer (it frees the lock "
                           "when the session ends)", extra={"event_type": "run_lock_release_failed"})

    async def _crawl(self, crawler: Crawler, **arguments: Any) -> None:
        """One crawl, to its end; a crawl that cannot start is logged (its customer then has no
        run record: exit 1)."""
        self._restore_signal_handlers()
        started = self.process.crawl(crawler, **arguments)
        future = asyncio.ensure_future(started) if not isinstance(started, Deferred) else started.asFuture(
            asyncio.get_event_loop())
        try:
            await asyncio.shield(future)
        except (ConfigError, StorageError) as exc:
            logger.error("the crawl could not start: %s", exc, extra={"event_type": "crawl_not_started"})
        finally:
            self._spacing = self._pace_spacing(crawler)

    def _closed_reason(self, name: str) -> Any:
        def closed(spider: scrapy.Spider, reason: str) -> None:
            self.close_reasons[name] = reason
        return closed

    def _go_on(self, name: str, crawler: Crawler) -> bool:
        """Whether the next customer is swept: after a run that ended by itself and not fatally."""
        run = find_run(crawler)
        reason = self.close_reasons.get(name)
        if run is None or run.outcome is None or run.outcome.exit_code == 1 or reason in FATAL_REASONS:
            return False
        return reason in CONTINUE_REASONS and not self._stopping.is_set()

    async def _space(self) -> bool:
        """Wait out the pace's spacing since the previous crawl; ``False`` if the process is
        stopping meanwhile."""
        if self._spacing > 0 and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._spacing)
        return not self._stopping.is_set()

    @staticmethod
    def _pace_spacing(crawler: Crawler) -> float:
        try:
            return paced_delay(float(read(crawler.settings, "DOWNLOAD_DELAY")),
                               float(read(crawler.settings, "PMP_RATE_MARGIN")))
        except ConfigError:
            return 0.25  # the crawl refused the setting already; the contract's spacing

    def _collect(self) -> None:
        """Let the crawl that just ended go before the next one starts: its prompt-stop handler is
        still the process's signal handler (a reference the garbage collector cannot see, which
        kept each finished customer's crawler, engine and caches alive through the next
        customer's sweep), so the handlers found before the first crawl are put back, then its
        cycles are collected and the freed heap given back to the system."""
        self._restore_signal_handlers()
        gc.collect()
        trim_heap()

    def _restore_signal_handlers(self) -> None:
        if self._stopping.is_set():
            return
        for signum, handler in self._handlers.items():
            if callable(handler) and signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)

    # --- the tenant (called by the discovery spider) ------------------------------------------------
    def open_tenant(self, crawler: Crawler) -> bool:
        """Take the tenant's run lock for the discovery and share Zoho's token budget through the
        database (as each customer's crawl does); ``False`` when the discovery must not ask."""
        config = get_config(crawler)
        secret_name = "PMP_API_KEY" if config.auth == "apikey" else "PMP_CLIENT_ID"
        credential = resolve_secret(secret_name, crawler.settings) or ""
        try:
            held = acquire_tenant_lock(config.database_url, tenant_key(config.base_url, credential))
        except StorageError as exc:
            self.discovery.error = str(exc)
            return False
        if isinstance(held, LockHeld):
            self.discovery.skipped = (f"another run of this tenant is in progress ({held.describe()}); "
                                      "this one sent nothing")
            logger.info("run skipped: another run of this tenant is in progress, %s", held.describe(),
                        extra={"event_type": "run_skipped", "holder_host": held.host, "holder_pid": held.pid,
                               "holder_since": held.since.isoformat() if held.since else None})
            return False
        self.discovery.lock = held
        if config.auth == "oauth" and credential and not config.demo:
            url, client = config.database_url, fingerprint(credential)
            self.shared.claim = lambda: claim_mint(url, client, time.time())
        return True

    # --- the result ----------------------------------------------------------------------------------
    @staticmethod
    def _result(name: str, crawler: Crawler) -> CustomerResult:
        run = find_run(crawler)
        if run is None or run.outcome is None:
            return CustomerResult(name, 1, "the run ended without a result (see the log)")
        return CustomerResult(
            name, run.outcome.exit_code, run.outcome.message, pages_committed=run.pages_committed,
            gaps_opened=run.gaps_opened, gaps_resolved=run.gaps_resolved, mappings=run.mappings_upserted,
            coverage=run.coverage, total=run.denominator(), target_met=run.target_met())

    def results(self) -> list[CustomerResult]:
        """How each customer ended, in the order swept (the one in progress when the process was
        stopped too), then those not reached."""
        results = list(self._swept)
        if self._current is not None:
            name, crawler = self._current
            results.append(self._result(name, crawler))
            self.config = get_config(crawler)
        reached = {result.customer for result in results}
        why = "the job stopped before it (see the customer before)"
        return results + [not_swept(name, why) for name in self.customers if name not in reached]
