"""Zoho accounts: the refresh-token grant, access-token bookkeeping and its limits."""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .records import Incoming
from .replies import ACCESS_DENIED, Reply, json_reply

if TYPE_CHECKING:
    from .scenario import Scenario


class TokenStore:
    """Zoho's bookkeeping of access tokens: expiry, the live-token cap and the 10-minute limit.

    Not thread-safe; ``ZohoAccounts`` holds its lock around every call.
    """

    def __init__(self) -> None:
        self.expiry: dict[str, float] = {}
        self.issued: list[str] = []
        self._live: dict[str, deque[str]] = {}
        self._issued_at: dict[str, deque[float]] = {}

    def throttled(self, refresh: str, limit: int, now: float) -> bool:
        """Whether ``refresh`` has used up its tokens for the rolling 10 minutes."""
        times = self._issued_at.setdefault(refresh, deque())
        while times and now - times[0] >= 600:
            times.popleft()
        return len(times) >= limit

    def issue(self, refresh: str, ttl: float, max_live: int, now: float) -> str:
        """A new access token living ``ttl`` s; beyond ``max_live`` the oldest one dies."""
        token = f"1000.{secrets.token_hex(16)}.{secrets.token_hex(16)}"
        self.expiry[token] = now + ttl
        live = self._live.setdefault(refresh, deque())
        live.append(token)
        while len(live) > max_live:
            self.expiry.pop(live.popleft(), None)
        self._issued_at.setdefault(refresh, deque()).append(now)
        self.issued.append(token)
        return token

    def valid(self, token: str, now: float) -> bool:
        """Whether ``token`` is live and unexpired."""
        expiry = self.expiry.get(token)
        return expiry is not None and now < expiry

    def revoke(self) -> None:
        """Invalidate every access token."""
        self.expiry.clear()
        for live in self._live.values():
            live.clear()

    def reset_throttle(self) -> None:
        """Forget the issue times (a new scenario starts with a fresh 10-minute window)."""
        self._issued_at.clear()


class ZohoAccounts:
    """``POST /oauth/v2/token`` and the questions the PMP side asks about tokens. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._store = TokenStore()
        self._requests = 0

    def new_scenario(self) -> None:
        """Restart the token-fault attempt count and the 10-minute window; tokens stay valid."""
        with self._lock:
            self._requests = 0
            self._store.reset_throttle()

    def answer(self, inc: Incoming, scenario: Scenario, api_domain: str) -> Reply:
        """The token endpoint's reply to ``inc`` (token faults by token-request number)."""
        with self._lock:
            self._requests += 1
            n = self._requests
        fault = next((f for f in scenario.token_faults if f.attempts == "all" or n in f.attempts), None)
        if fault is not None:
            return fault.reply(lambda _variant: self._grant(inc, scenario, api_domain), n)
        return self._grant(inc, scenario, api_domain)

    def _grant(self, inc: Incoming, sc: Scenario, api_domain: str) -> Reply:
        fields = {**inc.query, **inc.form}  # Zoho also reads the query string
        if fields.get("grant_type") != "refresh_token":
            return json_reply(200, {"error": "unsupported_grant_type"})
        if (fields.get("client_id"), fields.get("client_secret"), fields.get("refresh_token")) != (
                sc.client_id, sc.client_secret, sc.refresh_token):
            return json_reply(200, {"error": "invalid_code"})
        now = time.monotonic()
        with self._lock:
            if self._store.throttled(sc.refresh_token, sc.token_limit_per_10min, now):
                return json_reply(200, ACCESS_DENIED)
            ttl = sc.hidden_token_ttl if sc.omit_expires_in else sc.token_ttl
            token = self._store.issue(sc.refresh_token, ttl, sc.max_live_tokens, now)
        body: dict[str, Any] = {"access_token": token, "api_domain": api_domain, "token_type": "Bearer"}
        if not sc.omit_expires_in:
            body["expires_in"] = int(ttl) if float(ttl).is_integer() else ttl
        return json_reply(200, body)

    def valid(self, token: str) -> bool:
        """Whether ``token`` would be accepted now."""
        with self._lock:
            return self._store.valid(token, time.monotonic())

    def live(self) -> set[str]:
        """Tokens that would be accepted now."""
        now = time.monotonic()
        with self._lock:
            return {t for t, exp in self._store.expiry.items() if now < exp}

    def issued(self) -> list[str]:
        """Every access token ever issued, oldest first."""
        with self._lock:
            return list(self._store.issued)

    def revoke(self) -> None:
        """Invalidate every access token now."""
        with self._lock:
            self._store.revoke()
