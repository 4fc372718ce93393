"""The unrecorded ``/_sim/*`` endpoints, for tests that drive a simulator in another process.

| request | effect |
|---|---|
| ``GET /_sim/requests`` | the request record (JSON list of ``RecordedRequest``) |
| ``GET /_sim/info`` | url, managed_total, dcapi_systems, tokens_issued, rate_limited |
| ``POST /_sim/reset`` | clear the request record |
| ``POST /_sim/revoke`` | invalidate every access token |
| ``POST /_sim/scenario`` | replace the scenario (body: scenario JSON) |
| ``POST /_sim/mutate`` | apply a tenant change now (body: mutation JSON without after_page_requests) |
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .records import records_json
from .replies import Reply, json_reply
from .scenario import Scenario

if TYPE_CHECKING:
    from .server import Simulator


def _json_body(body: bytes, what: str) -> Any:
    try:
        return json.loads(body.decode("utf-8") or "{}")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} body is not JSON: {exc}") from None


def scenario_from_body(body: bytes) -> Scenario:
    """Parse a POST /_sim/scenario body; raises ValueError."""
    return Scenario.from_dict(_json_body(body, "scenario"))


def control_reply(sim: Simulator, method: str, path: str, body: bytes) -> Reply:
    """Answer one /_sim/ request against ``sim`` (see the module docstring)."""
    route = (method, path)
    if route == ("GET", "/_sim/requests"):
        return Reply(200, records_json(sim.requests))
    if route == ("GET", "/_sim/info"):
        return json_reply(200, {"url": sim.url, "managed_total": sim.managed_total(),
                                "dcapi_systems": len(sim.dcapi_system_ids()),
                                "tokens_issued": sim.tokens_issued,
                                "rate_limited": sim.rate_limited_count})
    try:
        if route == ("POST", "/_sim/reset"):
            sim.reset_requests()
        elif route == ("POST", "/_sim/revoke"):
            sim.revoke_tokens()
        elif route == ("POST", "/_sim/scenario"):
            sim.set_scenario(scenario_from_body(body))
        elif route == ("POST", "/_sim/mutate"):
            fields = _json_body(body, "mutation")
            if not isinstance(fields, dict):
                raise ValueError("a mutation must be a JSON object")
            sim.mutate(**fields)
        else:
            return json_reply(404, {"error": "unknown control endpoint"})
    except (ValueError, TypeError) as exc:  # TypeError: a field named like mutate's own arguments
        return json_reply(400, {"error": str(exc)})
    return json_reply(200, {"ok": True})
