"""The access token the crawlers of one ``scrapy crawl`` command hand on to each other (a
``customer=all`` job sweeps customer after customer under one token): :class:`SharedToken`, and
:func:`share_token`, which the command calls before each crawl starts (Scrapy builds the token
middleware itself, so the middleware looks its crawler up here)."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pmp_scrapy.token_budget import TokenBudget

if TYPE_CHECKING:
    from scrapy.crawler import Crawler


@dataclass
class SharedToken:
    """The access token the crawlers of one command hand on to each other (see the module
    docstring): the token, when it was obtained (monotonic seconds: one process), its lifetime,
    how many were minted, this process's count against Zoho's budget, and ``claim``, the
    database-wide budget claim for a crawler that has no run record (the customer discovery).
    The owner calls :meth:`forget` when its last crawler is done."""

    token: str | None = None
    obtained_at: float = 0.0
    lifetime: float = 0.0
    generation: int = 0
    budget: TokenBudget = field(default_factory=TokenBudget)
    claim: Callable[[], float] | None = None

    def forget(self) -> None:
        """Drop the token (the command is over)."""
        self.token = None


_shared: weakref.WeakKeyDictionary[Crawler, SharedToken] = weakref.WeakKeyDictionary()


def share_token(crawler: Crawler, shared: SharedToken) -> None:
    """Make ``crawler``'s TokenMiddleware start from, and leave its token in, ``shared``; call
    before the crawl starts."""
    _shared[crawler] = shared


def shared_token_of(crawler: Crawler) -> SharedToken | None:
    """The token ``crawler`` was given to share, if any."""
    return _shared.get(crawler)
