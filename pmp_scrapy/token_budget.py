"""Zoho's token budget: at most 10 access tokens per refresh token in any 10 minutes (pure
arithmetic, shared by the in-process :class:`TokenBudget` and the database-wide
:func:`pmp_scrapy.storage.token_mints.claim_mint`)."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

TOKEN_BUDGET = 10  # Zoho: access tokens per refresh token
TOKEN_BUDGET_WINDOW = 600.0  # … per 10 minutes


def budget_wait(mint_times: Sequence[float], now: float, budget: int = TOKEN_BUDGET,
                window: float = TOKEN_BUDGET_WINDOW) -> float:
    """Seconds to wait before the next mint so that no ``window`` holds more than ``budget``
    mints: 0 while fewer than ``budget`` fall in the last ``window`` seconds, else until the
    oldest of the last ``budget`` leaves it (a mint exactly ``window`` ago is out)."""
    recent = sorted(t for t in mint_times if now - t < window)
    if len(recent) < budget:
        return 0.0
    return max(0.0, recent[-budget] + window - now)


class TokenBudget:
    """Zoho's 10 tokens per refresh token per 10 minutes, as seen by this process (used when no
    database shares the budget across runs)."""

    def __init__(self, budget: int = TOKEN_BUDGET, window: float = TOKEN_BUDGET_WINDOW) -> None:
        self.budget = budget
        self.window = window
        self._mints: deque[float] = deque(maxlen=budget)

    def wait_before_next(self, now: float) -> float:
        """Seconds to wait before minting another token (0: at once)."""
        wait = budget_wait(self._mints, now, self.budget, self.window)
        return wait + 0.5 if wait else 0.0

    def minted(self, at: float) -> None:
        """Record a token minted at ``at`` (monotonic seconds)."""
        self._mints.append(at)
