"""The text of ``python -m pmp_scrapy.simulator --help``: credentials, scenario format, example.

Fault kinds and the demo credentials are read from the code, so the help cannot drift from
them; tests check that every scenario field is described.
"""

from __future__ import annotations

import textwrap

from .api import CATALOG_MODES
from .changes import DIRECTIONS
from .estate import WHERE
from .faults import FAULT_ENDPOINTS, FAULT_MEANINGS, PAGE_FAULT_KINDS, TOKEN_FAULT_KINDS
from .scenario import DEMO_CREDENTIALS
from .traffic import RATE_LIMIT_REPLIES

DESCRIPTION = textwrap.fill(
    "A fake ManageEngine Patch Manager Plus cloud and Zoho accounts server on one local port: "
    "DCAPI system report, patch catalog, inventory, MSP customers, the OAuth token endpoint, "
    "and /_sim/ control endpoints for tests. Prints 'PMP simulator listening on <url>' and "
    "serves until SIGTERM or SIGINT.", 88)

EXAMPLE = """{"dataset": {"managed_systems": 600, "no_patch_share": 0.05},
 "customers": {"Acme": {"managed_systems": 120}},
 "latency": 0.8, "latency_jitter": 0.3, "latency_per_system": 0.02,
 "rate_limit": {"max_per_second": 4, "reply": "html_200"},
 "drop_reused": {"every": 5},
 "faults": [{"page": 3, "attempts": [1], "kind": "http_503"},
            {"endpoint": "catalog", "kind": "truncated_200", "attempts": [1]}],
 "token_faults": [{"attempts": [1], "kind": "access_denied"}],
 "mutations": [{"after_page_requests": 5, "add_systems": {"count": 10, "where": "middle"}},
               {"after_page_requests": 8, "flip_status": {"share": 0.02}}]}"""


def _kinds(kinds: frozenset[str]) -> str:
    return textwrap.fill(", ".join(sorted(kinds)), 88, initial_indent=" " * 21,
                         subsequent_indent=" " * 21).lstrip()


def _choices(values: tuple[str, ...]) -> str:
    return " | ".join(f'"{v}"' for v in values)


def _meanings() -> str:
    return "\n".join(f"  {kind:<15}{meaning}" for kind, meaning in FAULT_MEANINGS.items())


def epilog() -> str:
    """The help's epilog."""
    c = DEMO_CREDENTIALS
    return f"""\
credentials (fixed unless the scenario overrides them):
  OAuth (PMP_AUTH=oauth): POST /oauth/v2/token with grant_type=refresh_token and
    client_id      {c["client_id"]}
    client_secret  {c["client_secret"]}
    refresh_token  {c["refresh_token"]}
  then "Authorization: Zoho-oauthtoken <access_token>" on API requests.
  API key (PMP_AUTH=apikey): "Authorization: {c["api_key"]}" (api_key).
  PMP_BASE_URL and PMP_ACCOUNTS_URL are both the printed URL.

endpoints: GET /dcapi/threats/systemreport/patches?page=N&pageLimit=L,
  GET /dcapi/threats/patches?page=N&pageLimit=L (catalog), GET /api/1.4/som/computers,
  GET /api/1.4/desktop/customers; each takes customername=<exact name> for a customer.
  Control (unrecorded): GET /_sim/requests, GET /_sim/info, POST /_sim/reset,
  POST /_sim/revoke, POST /_sim/scenario (scenario JSON), POST /_sim/mutate (mutation JSON).

scenario file (--scenario FILE.json): one JSON object, every field optional:
  dataset            the default estate: {{"managed_systems": 3317, "no_patch_share": 0.03,
                     "seed": null, "name_prefix": null}}; DCAPI omits systems without patches
  customers          {{"<exact name>": <dataset>, ...}}: MSP customers, listed by
                     /api/1.4/desktop/customers; any other customername is HTTP 400
  faults             page faults: {{"kind", "page" (null: any), "attempts" ([1, 2] or "all"),
                     "endpoint" ({_choices(FAULT_ENDPOINTS)}), "customer", "status",
                     "retry_after", "delay", "body" (replaces the body)}}; kinds:
                     {_kinds(PAGE_FAULT_KINDS)}
  token_faults       token faults by token-request number ("attempts"); kinds:
                     {_kinds(TOKEN_FAULT_KINDS)}
  mutations          tenant changes made once "after_page_requests" page requests arrived:
                     "remove_systems": N (front) | {{"count", "where"}} | {{"resource_ids": [..]}},
                     "add_systems": N (end) | {{"count", "where"}}
                       where: {_choices(WHERE)} (new systems get fresh, in-order ids),
                     "remove_patches" / "add_patches": {{"systems", "per_system"}},
                     "flip_status": {{"share" | "count", "direction"}}: pairs flipped
                       Missing <-> Installed; direction: {_choices(DIRECTIONS)},
                     "customer": name (default: the default estate); applied in that order
  revoke_after_page_requests  invalidate every token at that page request
  token_ttl          access-token lifetime, s (3600)
  omit_expires_in    send no expires_in; tokens then live hidden_token_ttl s
  hidden_token_ttl   lifetime when expires_in is omitted (60)
  token_limit_per_10min  tokens per refresh token per 10 minutes (10), then "Access Denied"
  max_live_tokens    live tokens per refresh token (15); the next kills the oldest
  latency            seconds before every PMP API answer (0)
  latency_jitter     ± uniform seconds on top, a sequence fixed by --seed (0)
  latency_per_system seconds per system on a page / per 30 catalog entries (0)
  rate_limit         null, or {{"max_per_second": N, "reply": {_choices(RATE_LIMIT_REPLIES)}}}: an
                     API request arriving when N arrived in the last second is refused
                     (429 + Retry-After: 1, or HTTP 200 with an HTML throttling page)
  drop_reused        null, or {{"every": N}}: every N-th API request arriving on an already
                     used keep-alive connection is read and the connection closed unanswered
  catalog            {_choices(CATALOG_MODES)}: the catalog endpoint exists,
                     answers HTTP 404, or HTTP 200 {{"error_code": "10022", ...}} (unsupported)
  client_id, client_secret, refresh_token, api_key   replace the demo credentials

fault kinds (recorded in the request's "fault"; the traffic rules' refusals are recorded as
"rate_limited" and "drop_reused": they count as arrivals for the limiter, but use no fault
attempt and no page request):
{_meanings()}

tenant changes between runs: POST /_sim/mutate with the fields of a mutation, without
after_page_requests (Python: Simulator.mutate(**fields)).

example:
{EXAMPLE}
"""
