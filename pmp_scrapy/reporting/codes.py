"""The vocabulary of severities and patch statuses, and how the codes PMP sometimes sends
translate into names (PMP-API.md: severity 0 Unrated, 1 Low, 2 Moderate, 3 Important,
4 Critical; status 201 Installed, 202 Missing, 203 Failed, 206 Failed in older builds).

The database keeps what the server sent; these tables are used only where an answer is shown:
by :mod:`pmp_scrapy.storage.views` (which compiles them into SQL ``CASE`` expressions, so the
views and every report group by the same names) and by the renderers. Pure: no imports.
"""

from __future__ import annotations

#: Severity names, most severe first, with their rank (the PMP code).
SEVERITY_RANKS: dict[str, int] = {"Critical": 4, "Important": 3, "Moderate": 2, "Low": 1, "Unrated": 0}
SEVERITIES: tuple[str, ...] = tuple(SEVERITY_RANKS)

#: What servers send (compared case-insensitively) -> the severity name.
SEVERITY_ALIASES: dict[str, str] = {
    "critical": "Critical", "4": "Critical",
    "important": "Important", "high": "Important", "3": "Important",
    "moderate": "Moderate", "medium": "Moderate", "2": "Moderate",
    "low": "Low", "1": "Low",
    "unrated": "Unrated", "0": "Unrated", "": "Unrated",
}

INSTALLED, MISSING, FAILED = "Installed", "Missing", "Failed"

#: What servers send (case-insensitive) -> the status name. A system *misses* a
#: patch only when the status is Missing (202); Failed (203/206) is shown, never counted.
STATUS_ALIASES: dict[str, str] = {
    "installed": INSTALLED, "201": INSTALLED,
    "missing": MISSING, "202": MISSING,
    "failed": FAILED, "203": FAILED, "206": FAILED,
}


def raw_values(aliases: dict[str, str], name: str) -> tuple[str, ...]:
    """Every lower-case spelling in ``aliases`` that means ``name``."""
    return tuple(raw for raw, meant in aliases.items() if meant == name)


def severity_name(raw: object) -> str:
    """The severity name of a stored value (``None`` and '' are Unrated; an unknown word is
    shown as sent)."""
    text = "" if raw is None else str(raw)
    return SEVERITY_ALIASES.get(text.lower(), text)


def status_name(raw: object) -> str | None:
    """The status name of a stored value (an unknown value is shown as sent)."""
    if raw is None:
        return None
    text = str(raw)
    return STATUS_ALIASES.get(text.lower(), text)


def parse_severities(text: str) -> tuple[str, ...]:
    """``--severity Critical,important,4`` -> ``("Critical", "Important")``, most severe first.

    Raises :class:`ValueError` with a one-line message for an unknown severity."""
    chosen: set[str] = set()
    for part in text.split(","):
        word = part.strip()
        if not word:
            continue
        name = SEVERITY_ALIASES.get(word.lower())
        if name is None:
            raise ValueError(f"unknown severity {word!r} (known: {', '.join(SEVERITIES)} or 4-0)")
        chosen.add(name)
    if not chosen:
        raise ValueError(f"--severity needs a severity such as Critical (known: {', '.join(SEVERITIES)})")
    return tuple(name for name in SEVERITIES if name in chosen)
