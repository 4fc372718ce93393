"""The tenant's run lock a ``customer=all`` job holds for its whole life, lent to each customer's
crawl (contract, "One run per tenant": one lock for the job, all its customers inside it).

:class:`pmp_scrapy.msp.CustomerSweep` takes the lock before it asks for the customer list and
gives it back when the last customer's crawl is over; before each customer's crawl starts it
calls :func:`lend_lock`, and that crawl's checkpoint extension takes :func:`lent_lock` instead
of the lock itself (the same process could not take it twice: a file lock or an advisory lock
on another session refuses it). Releasing a lent lock does nothing: only the job gives it back.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from pmp_scrapy.storage.locks import TenantLock

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

_lent: weakref.WeakKeyDictionary[Crawler, TenantLock] = weakref.WeakKeyDictionary()


def lend_lock(crawler: Crawler, lock: TenantLock) -> None:
    """Let ``crawler`` run under ``lock``, which its owner holds; call before the crawl starts."""
    _lent[crawler] = lock


def lent_lock(crawler: Crawler) -> TenantLock | None:
    """A stand-in for the lock lent to ``crawler`` (its ``release`` does nothing), or ``None``
    when the crawl must take the tenant's lock itself; ``None`` too once the owner released it."""
    lock = _lent.get(crawler)
    if lock is None or not lock.held:
        return None
    return TenantLock()  # no release: the owner gives the lock back
