"""A fake ManageEngine Patch Manager Plus cloud (plus Zoho accounts) on a real local socket.

Standard library only, and deliberately sharing no parsing code with the crawler: it is the
independent reference of the wire format. Used by tests, by ``-a demo=1`` (in-process, in a
daemon thread) and standalone (``python -m pmp_scrapy.simulator``).

    with Simulator(Scenario(faults=[Fault(page=3, attempts=(1,), kind="http_503")])) as sim:
        ...  # sim.url serves /dcapi/..., /api/1.4/..., /oauth/v2/token and /_sim/...
"""

from __future__ import annotations

from .data import DatasetSpec
from .scenario import DEMO_CREDENTIALS, Fault, Scenario
from .server import RecordedRequest, Simulator

__all__ = ["DEMO_CREDENTIALS", "DatasetSpec", "Fault", "RecordedRequest", "Scenario", "Simulator"]
