"""``PMP_SLA_DAYS``: how many days a missing patch of each severity may stay missing before the
report lists it as an SLA breach. The defaults are CISA BOD 19-02's 15 days for critical and 30
for high (Important) findings, and 90/180 for Moderate/Low; Unrated patches have no SLA unless
the setting gives one.

    PMP_SLA_DAYS="Critical=7,Important=30"   # the others keep their defaults
    PMP_SLA_DAYS="4=15,3=30,2=90,1=180"      # PMP's severity codes work too

Pure: parsing only; :mod:`pmp_scrapy.storage.reports` applies the days.
"""

from __future__ import annotations

from typing import Any

from pmp_scrapy.errors import ConfigError
from pmp_scrapy.reporting.codes import SEVERITIES, SEVERITY_ALIASES

SETTING = "PMP_SLA_DAYS"
DEFAULT = "Critical=15,Important=30,Moderate=90,Low=180"


def parse_sla_days(value: Any) -> dict[str, int]:
    """``"Critical=15,Important=30"`` -> ``{"Critical": 15, "Important": 30, "Moderate": 90,
    "Low": 180}`` (severities not named keep their default; most severe first).

    Raises :class:`ConfigError` with one line naming ``PMP_SLA_DAYS`` for a malformed pair, an
    unknown severity, a severity given twice or days that are not a non-negative integer."""
    merged = _pairs(DEFAULT)
    if value is not None and str(value).strip():
        merged.update(_pairs(str(value)))
    return {name: merged[name] for name in SEVERITIES if name in merged}


def _pairs(text: str) -> dict[str, int]:
    found: dict[str, int] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        key, sep, number = part.partition("=")
        if not sep:
            raise ConfigError(f"{SETTING} must be SEVERITY=DAYS pairs such as {DEFAULT}, got {part.strip()!r}")
        name = SEVERITY_ALIASES.get(key.strip().lower()) if key.strip() else None
        if name is None:
            raise ConfigError(f"{SETTING}: unknown severity {key.strip()!r} "
                              f"(known: {', '.join(SEVERITIES)} or the codes 4-0)")
        if name in found:
            raise ConfigError(f"{SETTING} gives {name} twice")
        try:
            count = int(number.strip())
        except ValueError:
            count = -1
        if count < 0:
            raise ConfigError(f"{SETTING}: days for {name} must be a non-negative integer, got {number.strip()!r}")
        found[name] = count
    return found
