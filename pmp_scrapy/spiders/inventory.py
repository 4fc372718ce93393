"""The inventory's part of the ``dcapi_patches`` spider (a mixin): the managed-system count from
``/api/1.4/som/computers``, the denominator of coverage; when it fails, coverage falls back to
DCAPI's ``totalRecords``."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import IgnoreRequest
from twisted.python.failure import Failure

from pmp_scrapy.items import InventoryTotal

if TYPE_CHECKING:
    from scrapy.http import Response

logger = logging.getLogger("pmp_scrapy.spiders.dcapi_patches")

INVENTORY_PATH = "/api/1.4/som/computers"


class InventoryRequests:
    """The inventory callbacks (the spider supplies ``plan``, ``crawler`` and ``_refused_customer``)."""

    crawler: Any
    plan: Any
    _refused_customer: Any

    def parse_inventory(self, response: Response) -> Iterator[Any]:
        """The managed-system count, the denominator of coverage."""
        assert self.plan is not None
        if self._refused_customer(response):
            return
        total = None
        if response.status == 200:
            try:
                total = int(json.loads(response.body)["message_response"]["total"])
            except (ValueError, KeyError, TypeError):
                total = None
        if total is None or total < 0:
            logger.warning(
                "the inventory endpoint gave no managed-system total (HTTP %d); coverage falls back "
                "to DCAPI totalRecords", response.status, extra={"event_type": "inventory_unavailable"})
            return
        self.crawler.stats.set_value("pmp/managed_total", total)
        yield InventoryTotal(snapshot_id=self.plan.snapshot_id, managed_total=total)

    def inventory_failed(self, failure: Failure) -> None:
        """The inventory request raised; coverage falls back to DCAPI totalRecords."""
        if failure.check(IgnoreRequest):
            return
        logger.warning("the inventory request failed (%s); coverage falls back to DCAPI totalRecords",
                       failure.type.__name__, extra={"event_type": "inventory_unavailable"})
