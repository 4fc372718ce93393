"""The discovery crawl of an MSP job (``-a customer=all``): asks the server for its customers once.
Not in ``SPIDER_MODULES``: only :class:`pmp_scrapy.msp.CustomerSweep` runs it (see :mod:`pmp_scrapy.msp`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import scrapy
from scrapy import signals
from scrapy.exceptions import IgnoreRequest

from pmp_scrapy.config import apply_spider_arguments, get_config
from pmp_scrapy.customers import CustomerListError, read_customer_list

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from scrapy.crawler import Crawler
    from scrapy.http import Response
    from scrapy.settings import BaseSettings
    from twisted.python.failure import Failure

    from pmp_scrapy.msp import CustomerSweep
    from pmp_scrapy.storage.locks import TenantLock

logger = logging.getLogger("pmp_scrapy.msp")

CUSTOMERS_PATH = "/api/1.4/desktop/customers"


@dataclass
class Discovery:
    """What the discovery crawl found: the customer ``names``, or why not: ``skipped`` (another
    run holds the tenant's lock: exit 0) or ``error`` (exit 1); and the tenant's ``lock``, which
    the job holds from the discovery to its end."""

    names: list[str] | None = None
    skipped: str | None = None
    error: str | None = None
    lock: TenantLock | None = field(default=None, repr=False)


class CustomerListSpider(scrapy.Spider):
    """Asks the MSP server for its customers, once (see the module docstring). Not in
    ``SPIDER_MODULES``: only a :class:`CustomerSweep` runs it."""

    name = "pmp_customer_list"
    #: Off for the discovery: it sweeps nothing, records no run, tells no one.
    OFF: ClassVar[dict[str, tuple[str, ...]]] = {
        "EXTENSIONS": ("pmp_scrapy.extensions.checkpoint.Checkpoints", "pmp_scrapy.extensions.hook.PostExtractionHook",
                       "pmp_scrapy.extensions.slack.SlackNotifier", "pmp_scrapy.extensions.progress.ProgressBar"),
        "ITEM_PIPELINES": ("pmp_scrapy.pipelines.MappingPipeline",),
    }

    @classmethod
    def update_settings(cls, settings: BaseSettings) -> None:
        # Merged into the project's component dicts (custom_settings would replace them, and with
        # them the pacer and the prompt stop).
        super().update_settings(settings)
        for name, components in cls.OFF.items():
            settings.set(name, {**settings.getdict(name), **dict.fromkeys(components)}, priority="spider")

    def __init__(self, sweep: CustomerSweep, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sweep = sweep

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> CustomerListSpider:
        sweep = kwargs.pop("sweep")
        apply_spider_arguments(crawler.settings, kwargs)  # demo=1 and the like, as each customer's crawl
        spider = super().from_crawler(crawler, *args, sweep=sweep)
        crawler.signals.connect(spider.closed_discovery, signal=signals.spider_closed)
        return spider  # type: ignore[return-value]

    async def start(self) -> AsyncIterator[Any]:
        if not self.sweep.open_tenant(self.crawler):
            return
        yield scrapy.Request(f"{get_config(self.crawler).base_url}{CUSTOMERS_PATH}", callback=self.parse_customers,
                             errback=self.customers_failed, dont_filter=True,
                             meta={"pmp_customers": True, "handle_httpstatus_all": True})

    def parse_customers(self, response: Response) -> None:
        found = self.sweep.discovery
        try:
            found.names = read_customer_list(response.status, response.body)
        except CustomerListError as exc:
            found.error = f"cannot list the customers of the PMP server: {exc}"
        else:
            logger.info("the PMP server lists %d customer(s)", len(found.names),
                        extra={"event_type": "customers_listed", "customers": len(found.names)})

    def customers_failed(self, failure: Failure) -> None:
        if failure.check(IgnoreRequest):
            return  # the run is stopping (authentication): closed_discovery says so
        self.sweep.discovery.error = f"cannot list the customers of the PMP server: {failure.type.__name__}"

    def closed_discovery(self, spider: scrapy.Spider, reason: str) -> None:
        found = self.sweep.discovery  # the lock, if taken, stays with the job (CustomerSweep)
        if found.names is None and found.skipped is None and found.error is None:
            found.error = f"cannot list the customers of the PMP server: the request did not complete ({reason}; see the log)"
