"""Geometry of the HTML report's inline SVG charts: numbers in, coordinates out. The template
(``templates/report.html.j2``) draws them; nothing here writes markup, so every label the
database supplies is escaped by Jinja2. Pure functions."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

#: Colours of the severities (Critical to Unrated) and of the charts' series.
SEVERITY_COLOURS: dict[str, str] = {"Critical": "#b42318", "Important": "#e04f16", "Moderate": "#ca8504",
                                    "Low": "#1570ef", "Unrated": "#667085"}
OTHER_COLOUR = "#475467"


@dataclass(frozen=True)
class Bar:
    """One horizontal bar: its label, value, share of the whole and width in the chart."""

    label: str
    value: int
    share: float  # 0..1 of ``whole``
    width: float  # px
    colour: str
    extra: int | None = None  # a second value drawn over the first (past SLA)
    extra_width: float = 0.0


def severity_bars(by_severity: dict[str, dict[str, int]], sla: dict[str, dict[str, Any]], systems: int,
                  width: float = 420.0) -> list[Bar]:
    """Per severity: systems missing a patch of it, as a share of the present systems, with the
    systems past the severity's SLA drawn over it."""
    bars = []
    for name, counts in by_severity.items():
        value = counts["systems_missing"]
        past = sla.get(name, {}).get("systems_past_sla")
        share = value / systems if systems else 0.0
        bars.append(Bar(name, value, share, round(width * share, 1), SEVERITY_COLOURS.get(name, OTHER_COLOUR),
                        past, round(width * (past / systems), 1) if systems and past else 0.0))
    return bars


def donut(pct: float | None, radius: float = 52.0) -> dict[str, float]:
    """A ring's circumference and the dash drawing ``pct`` percent of it."""
    circumference = 2 * math.pi * radius
    share = max(0.0, min(100.0, pct or 0.0)) / 100
    return {"radius": radius, "circumference": round(circumference, 2), "dash": round(circumference * share, 2)}


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(step * magnitude for step in (1, 2, 2.5, 5, 10) if step * magnitude >= raw)


def line_chart(values: list[float | None], labels: list[str], *, width: float = 460.0, height: float = 150.0,
               pad_left: float = 56.0, pad_bottom: float = 26.0, floor_zero: bool = False) -> dict[str, Any] | None:
    """A polyline over ``values`` (``None`` skipped) with y ticks and x labels; ``None`` when
    fewer than one value is known."""
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    if not known:
        return None
    low, high = min(v for _, v in known), max(v for _, v in known)
    if floor_zero:
        low = 0.0
    if high == low:
        low, high = (low - 1, high + 1) if low else (0.0, 1.0)
    step = _nice_step(high - low, 4)
    low, high = math.floor(low / step) * step, math.ceil(high / step) * step
    plot_w, plot_h = width - pad_left - 10, height - pad_bottom - 10

    def x(i: int) -> float:
        return round(pad_left + (plot_w * i / (len(values) - 1) if len(values) > 1 else plot_w / 2), 1)

    def y(v: float) -> float:
        return round(10 + plot_h * (1 - (v - low) / (high - low)), 1)

    points = [{"x": x(i), "y": y(v), "value": v, "label": labels[i]} for i, v in known]
    ticks, tick = [], low
    while tick <= high + step / 1000:
        ticks.append({"y": y(tick), "value": tick})
        tick += step
    every = max(1, math.ceil(len(labels) / 6))
    return {"width": width, "height": height, "left": pad_left, "right": width - 10, "bottom": height - pad_bottom,
            "path": " ".join(f"{p['x']},{p['y']}" for p in points), "points": points, "ticks": ticks,
            "labels": [{"x": x(i), "text": label, "anchor": _anchor(i, len(labels))} for i, label in enumerate(labels)
                       if i % every == 0 or i == len(labels) - 1]}


def _anchor(i: int, count: int) -> str:
    """The first x label starts at its point and the last ends there, so neither is clipped."""
    if count > 1 and i == 0:
        return "start"
    return "end" if count > 1 and i == count - 1 else "middle"


def split_bar(covered: int, missing: int, width: float = 160.0) -> dict[str, float]:
    """A covered/missing bar of ``width`` px."""
    total = covered + missing
    green = round(width * covered / total, 1) if total else 0.0
    return {"covered": green, "missing": round(width - green, 1) if total else 0.0, "width": width}
