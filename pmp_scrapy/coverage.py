"""Coverage arithmetic and the explanation of a coverage that stalls (pure functions).

Coverage is the number of present systems with mappings; its denominator is, in order, the
configured ``PMP_TOTAL_SYSTEMS``, the managed-system count of the inventory endpoint (this run's,
else the snapshot's), else DCAPI's ``totalRecords``. Everything that needs the denominator calls
:func:`denominator`, so the fallback chain is written once.
"""

from __future__ import annotations


def target_systems(target: float, denominator: int) -> int:
    """Systems needed to meet ``target`` of ``denominator`` (95% of 3,317 is 3,152)."""
    needed = target * denominator
    whole = int(needed)
    return whole if whole == needed else whole + 1


def denominator(configured: int | None, managed: int | None, known_managed: int | None,
                total_records: int | None) -> int | None:
    """The denominator of coverage: the first of the contract's sources that is known."""
    for value in (configured, managed, known_managed, total_records):
        if value:
            return int(value)
    return None


def coverage_pct(coverage: int, total: int | None) -> float | None:
    """``coverage`` as a percentage of ``total`` (two decimals), or ``None`` without a total."""
    return round(100.0 * coverage / total, 2) if total else None


def target_met(coverage: int, total: int | None, target: float) -> bool:
    """Whether ``coverage`` meets ``target`` of ``total`` (never without a total)."""
    return bool(total) and coverage >= target_systems(target, int(total or 0))


def format_pct(coverage: int, total: int) -> str:
    """A percentage with two decimals that never rounds up across a target: 94.999% reads
    "94.99%", not "95.00%"."""
    hundredths = (10000 * coverage) // total
    return f"{hundredths // 100}.{hundredths % 100:02d}%"


def stall_explanation(coverage: int, total: int, total_records: int | None, target: float) -> str:
    """Why a complete sweep ended below the target, and what the operator can do."""
    needed = target_systems(target, total)
    text = (f"the sweep is complete but coverage is {coverage} of {total} managed systems "
            f"({format_pct(coverage, total)}), below the target of {needed}")
    if total_records is not None and total_records < total:
        text += (f": DCAPI reports only {total_records} systems; {total - total_records} managed systems have "
                 "no patch records in DCAPI, so no sweep can reach the target (lower PMP_COVERAGE_TARGET "
                 "or set PMP_TOTAL_SYSTEMS to the systems you expect to have patch data)")
    return text
