"""Component tests of authentication: the token middleware built with Scrapy's test crawler and
called directly (its token calls go through a real, opened engine to a real simulator), Zoho's
token budget with injected times, where secrets come from, and the accounts server a host needs.
Each runs in well under a second."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from conftest import TEN_PAGES, UNUSED_URL, component_crawler, opened_spider
from scrapy import Request
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.defer import deferred_f_from_coro_f
from scrapy.utils.misc import build_from_crawler
from test_credentials import MemoryKeyring, UseKeyring, use_keyring  # noqa: F401 (fixture)

from pmp_scrapy.config import get_config
from pmp_scrapy.credentials import KEYRING_SERVICE
from pmp_scrapy.errors import ConfigError
from pmp_scrapy.middlewares.apikey import ApiKeyMiddleware
from pmp_scrapy.middlewares.auth import TokenMiddleware
from pmp_scrapy.simulator import DEMO_CREDENTIALS, Scenario, Simulator
from pmp_scrapy.zoho import TOKEN_BUDGET, TOKEN_BUDGET_WINDOW, TokenBudget

TOKEN_MIDDLEWARE = {"DOWNLOADER_MIDDLEWARES": {"pmp_scrapy.middlewares.auth.TokenMiddleware": 590}}
PAGE = "/dcapi/threats/systemreport/patches?page=1&pageLimit=30"


def use_oauth_environment(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    values = {"PMP_CLIENT_ID": DEMO_CREDENTIALS["client_id"], "PMP_CLIENT_SECRET": DEMO_CREDENTIALS["client_secret"],
              "PMP_REFRESH_TOKEN": DEMO_CREDENTIALS["refresh_token"], **overrides}
    for name, value in values.items():
        monkeypatch.setenv(name, value)


# --- Zoho's budget: 10 tokens per refresh token per 10 minutes ---------------------------------------

def test_token_budget_allows_ten_tokens_a_window_then_says_how_long_to_wait() -> None:
    budget = TokenBudget()
    assert (budget.budget, budget.window) == (TOKEN_BUDGET, TOKEN_BUDGET_WINDOW) == (10, 600.0)
    for second in range(10):
        assert budget.wait_before_next(float(second)) == 0.0
        budget.minted(float(second))
    # The eleventh, 9.5 s after the first: wait until the first is 10 minutes old (and 0.5 s more).
    assert budget.wait_before_next(9.5) == pytest.approx(600.0 - 9.5 + 0.5)
    assert budget.wait_before_next(599.0) == pytest.approx(1.5)
    assert budget.wait_before_next(600.0) == 0.0  # the first mint left the window
    budget.minted(600.0)
    assert budget.wait_before_next(600.5) == pytest.approx(1.0)  # the second (at 1 s) is next to leave


@deferred_f_from_coro_f
async def test_token_middleware_waits_out_the_budget_instead_of_minting_an_eleventh_token(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every request needs a new token (a 5 ms lifetime); Zoho's 10-minute window is scaled down
    to ``window`` seconds. Ten tokens come at once; the eleventh waits until the first has left
    the window. (The simulator's own limit is raised so that it would hand out an eleventh.)"""
    window, lifetime = 2.0, 0.005  # ten mints fit in the window even on a loaded machine
    use_oauth_environment(monkeypatch)
    scenario = Scenario(dataset=TEN_PAGES, omit_expires_in=True, token_limit_per_10min=50)
    with Simulator(scenario=scenario) as sim:
        crawler = component_crawler(sim=sim, PMP_TOKEN_DEFAULT_TTL=lifetime, **TOKEN_MIDDLEWARE)
        async with opened_spider(crawler):
            middleware = crawler.get_downloader_middleware(TokenMiddleware)
            assert middleware is not None
            middleware._budget = TokenBudget(window=window)  # the real budget, on a shorter clock
            for _ in range(11):
                request = Request(sim.url + PAGE)
                await middleware.process_request(request)
                assert request.headers["Authorization"].decode().startswith("Zoho-oauthtoken 1000.")
                await asyncio.sleep(2 * lifetime)  # the token is now too old for the next request
        mints = [r.t for r in sim.requests if r.kind == "token" and r.status == 200]
        issued = sim.tokens_issued

    assert len(mints) == issued == 11
    assert mints[9] - mints[0] < window  # ten at once, no waiting
    assert mints[10] - mints[0] >= window  # the eleventh only once the first left the window
    stats = crawler.stats.get_stats()
    assert (stats.get("pmp/token_refresh/run_start"), stats.get("pmp/token_refresh/proactive")) == (1, 10)
    assert stats.get("pmp/token_budget_waits") == 1
    [wait] = [r for r in caplog.records if getattr(r, "event_type", None) == "token_budget_wait"]
    assert wait.levelno == logging.WARNING and 0 < wait.wait_s <= window + 0.5
    assert "rather than be locked out" in wait.getMessage()


# --- where the secrets come from: -s setting > credentials file > keyring > environment ------------------

@deferred_f_from_coro_f
async def test_token_middleware_takes_each_secret_from_the_first_source_that_has_it(
        monkeypatch: pytest.MonkeyPatch, use_keyring: UseKeyring) -> None:  # noqa: F811
    """Zoho accepts only the right three values, and each source but one holds a wrong one: the
    client id is right only as a setting, the client secret only in the keyring, the refresh
    token only in the environment. A token is minted only if each came from the right source."""
    use_keyring(MemoryKeyring({(KEYRING_SERVICE, "PMP_CLIENT_ID"): "1000.WRONG-IN-KEYRING",
                               (KEYRING_SERVICE, "PMP_CLIENT_SECRET"): DEMO_CREDENTIALS["client_secret"]}))
    use_oauth_environment(monkeypatch, PMP_CLIENT_ID="1000.WRONG-IN-ENV", PMP_CLIENT_SECRET="wrong-in-env")
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        crawler = component_crawler(sim=sim, PMP_CLIENT_ID=DEMO_CREDENTIALS["client_id"], **TOKEN_MIDDLEWARE)
        async with opened_spider(crawler):
            middleware = crawler.get_downloader_middleware(TokenMiddleware)
            assert middleware is not None
            request = Request(sim.url + PAGE)
            await middleware.process_request(request)
        issued = sim.issued_tokens
    assert len(issued) == 1
    assert request.headers["Authorization"].decode() == f"Zoho-oauthtoken {issued[0]}"
    assert "pmp/abort_reason" not in crawler.stats.get_stats()


def test_api_key_comes_from_the_keyring_before_the_environment(
        monkeypatch: pytest.MonkeyPatch, use_keyring: UseKeyring) -> None:  # noqa: F811
    use_keyring(MemoryKeyring({(KEYRING_SERVICE, "PMP_API_KEY"): "KEY-FROM-KEYRING"}))
    monkeypatch.setenv("PMP_API_KEY", "KEY-FROM-ENV")
    middleware = build_from_crawler(ApiKeyMiddleware, component_crawler(PMP_AUTH="apikey"))
    request = Request(UNUSED_URL + PAGE)
    middleware.process_request(request)
    assert request.headers["Authorization"] == b"KEY-FROM-KEYRING"



# --- PMP_ACCOUNTS_URL ---------------------------------------------------------------------------------

def test_accounts_url_is_required_for_a_host_outside_the_zoho_data_centres(monkeypatch: pytest.MonkeyPatch) -> None:
    use_oauth_environment(monkeypatch)
    crawler = component_crawler(PMP_BASE_URL="https://pmp.corp.example", PMP_ACCOUNTS_URL=None)
    with pytest.raises(ConfigError) as info:
        build_from_crawler(TokenMiddleware, crawler)
    assert str(info.value) == ("PMP_ACCOUNTS_URL is required: cannot derive the Zoho accounts server from "
                               "'https://pmp.corp.example'")

    # Given, it is used; a Zoho data centre derives its own; API-key mode needs none.
    given = component_crawler(PMP_BASE_URL="https://pmp.corp.example", PMP_ACCOUNTS_URL="https://sso.corp.example")
    assert get_config(given).token_url == "https://sso.corp.example/oauth/v2/token"
    zoho = component_crawler(PMP_BASE_URL="https://patch.manageengine.eu", PMP_ACCOUNTS_URL=None)
    assert get_config(zoho).token_url == "https://accounts.zoho.eu/oauth/v2/token"
    monkeypatch.setenv("PMP_API_KEY", "KEY")
    on_premises = component_crawler(PMP_BASE_URL="https://pmp.corp.example", PMP_ACCOUNTS_URL=None, PMP_AUTH="apikey")
    build_from_crawler(ApiKeyMiddleware, on_premises)
    assert get_config(on_premises).accounts_url == ""


# --- three refused tokens stop the run; no fourth token ---------------------------------------------------

@deferred_f_from_coro_f
async def test_the_third_refused_token_stops_the_run_whatever_order_the_answers_come_in(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages 3, 4 and 5 go out with the first token; PMP refuses pages 4 and 5 whatever the token
    (as in the crawl test), and page 3's success is processed after page 4's refusal, as happens
    when answers of concurrent requests come back out of order. Three tokens are refused, so the
    run stops on the first refusal of the third one, before a fourth is asked for."""
    use_oauth_environment(monkeypatch)
    with Simulator(scenario=Scenario(dataset=TEN_PAGES)) as sim:
        crawler = component_crawler(sim=sim, **TOKEN_MIDDLEWARE)
        async with opened_spider(crawler):
            middleware = crawler.get_downloader_middleware(TokenMiddleware)
            assert middleware is not None

            async def send(request: Request) -> Request:
                await middleware.process_request(request)
                return request

            def answer(request: Request, status: int) -> Any:
                return middleware.process_response(request, Response(request.url, status=status, request=request))

            page_3, page_4, page_5 = [await send(Request(f"{sim.url}{PAGE}&p={page}", meta={"pmp_page": page}))
                                      for page in (3, 4, 5)]
            retry_4 = answer(page_4, 401)  # token 1 refused
            answer(page_3, 200)  # token 1 worked for page 3, but that answer is processed after the refusal
            page_4 = await send(retry_4)  # token 2
            page_5 = await send(answer(page_5, 401))  # refused with the superseded token 1: not counted
            retry_4, retry_5 = answer(page_4, 401), answer(page_5, 401)  # token 2 refused twice
            page_4, page_5 = await send(retry_4), await send(retry_5)  # token 3
            with pytest.raises(IgnoreRequest):
                answer(page_5, 401)  # token 3 refused: the third fresh token refused, stop
        issued = sim.tokens_issued
    assert issued == 3
    assert crawler.stats.get_value("pmp/abort_reason") == "pmp_auth_failed"
