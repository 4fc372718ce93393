"""A fake ManageEngine Patch Manager Plus cloud (plus Zoho accounts) on a real local socket.

Standard library only, and deliberately sharing no parsing code with the crawler: it is the
independent reference of the wire format. Used by tests, by ``-a demo=1`` (in-process, in a
daemon thread) and standalone (``python -m pmp_scrapy.simulator --help`` documents the
credentials, options and scenario format).

    with Simulator(Scenario(faults=[Fault(page=3, attempts=(1,), kind="http_503")])) as sim:
        ...  # sim.url serves /dcapi/..., /api/1.4/..., /oauth/v2/token and /_sim/...

Modules: ``server`` (the Simulator and its Python API), ``handler`` (HTTP), ``api`` (routes
and bodies), ``tokens`` (Zoho), ``control`` (/_sim), ``traffic`` (latency, rate limiter,
dropped connections), ``faults``, ``scenario``, ``mutations`` / ``mutate`` / ``changes`` /
``estate`` (tenant changes), ``data`` / ``systems`` / ``catalogue`` / ``applicable`` (the data).
"""

from __future__ import annotations

from .data import DatasetSpec
from .faults import Fault
from .mutations import Mutation
from .records import RecordedRequest
from .scenario import DEMO_CREDENTIALS, Scenario
from .server import Simulator
from .traffic import DropReused, RateLimit

__all__ = ["DEMO_CREDENTIALS", "DatasetSpec", "DropReused", "Fault", "Mutation", "RateLimit",
           "RecordedRequest", "Scenario", "Simulator"]
