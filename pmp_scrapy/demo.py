"""Demo mode: the built-in PMP simulator on an ephemeral loopback port, in this process."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from scrapy.settings import SETTINGS_PRIORITIES

from pmp_scrapy.config import DEMO_DATABASE_URL

if TYPE_CHECKING:
    from scrapy.settings import BaseSettings

    from pmp_scrapy.simulator import Simulator

logger = logging.getLogger(__name__)


def _given(settings: BaseSettings, name: str) -> bool:
    return name in os.environ or (settings.getpriority(name) or 0) >= SETTINGS_PRIORITIES["cmdline"]


def start_demo(settings: BaseSettings) -> Simulator:
    """Start the simulator and point the run's settings at it: OAuth against its accounts
    endpoint, ``./pmp_demo.db`` unless ``PMP_DATABASE_URL`` is given, and the whole sweep in
    one run unless ``PMP_BATCH_PAGES`` is given."""
    from pmp_scrapy.simulator import Simulator

    simulator = Simulator().start()
    for name in ("PMP_BASE_URL", "PMP_ACCOUNTS_URL"):
        settings.set(name, simulator.url, priority="cmdline")
    settings.set("PMP_AUTH", "oauth", priority="cmdline")
    if not _given(settings, "PMP_DATABASE_URL"):
        settings.set("PMP_DATABASE_URL", DEMO_DATABASE_URL, priority="cmdline")
    if not _given(settings, "PMP_BATCH_PAGES"):
        settings.set("PMP_BATCH_PAGES", 0, priority="cmdline")
    logger.info("demo mode: PMP simulator listening on %s", simulator.url,
                extra={"event_type": "demo_started"})
    return simulator
