"""The freshness chart as inline SVG, drawn on the server: no script, nothing fetched.

Freshness spans milliseconds (a profile sync) to hours (a flow send after a long wait), so the
value axis is logarithmic. Each destination has a colour; p50 is a solid line with filled dots,
p99 a dashed one with hollow dots, broken where a minute had no deliveries. Every dot carries a
<title> for hovering.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from html import escape

from markupsafe import Markup

from tidings.ui.queries import FreshnessPoint

WIDTH, HEIGHT = 960, 280
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 12, 30
COLOURS = ("#2563eb", "#d97706", "#059669", "#dc2626", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f")
FLOOR = 0.01  # seconds: the bottom of the axis (a zero or tiny value is drawn there)


def colour(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def seconds_label(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.3g} s"
    if value < 7200:
        return f"{value / 60:.3g} min"
    return f"{value / 3600:.3g} h"


def axis_label(decade: int) -> str:
    """A decade on the value axis, in seconds (so the steps read evenly): 10 ms, 1 s, 1,000 s."""
    return f"{10**decade * 1000:.0f} ms" if decade < 0 else f"{10**decade:,} s"


def freshness_svg(series: dict[str, list[FreshnessPoint]], since: datetime, now: datetime) -> Markup:
    values = [v for points in series.values() for p in points for v in (p.p50, p.p99)]
    if not values:
        return Markup('<p class="empty">No deliveries with an event time in the last hour.</p>')
    low = math.floor(math.log10(max(FLOOR, min(values))))
    high = max(low + 1, math.ceil(math.log10(max(FLOOR, max(values)))))
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    span = (now - since).total_seconds()

    def x(at: datetime) -> float:
        return LEFT + plot_w * min(1.0, max(0.0, (at - since).total_seconds() / span))

    def y(value: float) -> float:
        return TOP + plot_h * (1 - (math.log10(max(FLOOR, value)) - low) / (high - low))

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        'aria-label="Data freshness p50 and p99 per destination, per minute, last hour" '
        'xmlns="http://www.w3.org/2000/svg" font-size="11" font-family="sans-serif">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#ffffff" stroke="#d1d5db"/>',
    ]
    for decade in range(low, high + 1):
        ty = y(10.0**decade)
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#e5e7eb"/>')
        parts.append(
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" fill="#4b5563">'
            f"{axis_label(decade)}</text>"
        )
    for minutes_ago in range(60, -1, -10):
        at = now - timedelta(minutes=minutes_ago)
        tx = x(at)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{TOP}" y2="{TOP + plot_h}" stroke="#f3f4f6"/>')
        label = "now" if minutes_ago == 0 else f"-{minutes_ago} min"
        parts.append(
            f'<text x="{tx:.1f}" y="{HEIGHT - 10}" text-anchor="middle" fill="#4b5563">{label}</text>'
        )
    for index, (name, points) in enumerate(sorted(series.items())):
        stroke = colour(index)
        for attr, dash in (("p50", ""), ("p99", ' stroke-dasharray="5 3"')):
            path = _path(points, attr, x, y)
            parts.append(
                f'<path d="{path}" fill="none" stroke="{stroke}" stroke-width="2"{dash} '
                f'data-destination="{escape(name)}" data-quantile="{attr}"/>'
            )
        for p in points:
            centre = x(p.minute + timedelta(seconds=30))
            tip = escape(
                f"{name} {p.minute:%H:%M} UTC: p50 {seconds_label(p.p50)}, p99 {seconds_label(p.p99)}, "
                f"{p.count} deliveries"
            )
            # p50 filled, p99 hollow: a minute alone (no line to its neighbours) still shows both
            parts.append(
                f'<circle cx="{centre:.1f}" cy="{y(p.p50):.1f}" r="3" fill="{stroke}">'
                f"<title>{tip}</title></circle>"
            )
            parts.append(
                f'<circle cx="{centre:.1f}" cy="{y(p.p99):.1f}" r="3.5" fill="#ffffff" stroke="{stroke}" '
                f'stroke-width="1.5"><title>{tip}</title></circle>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def _path(
    points: list[FreshnessPoint], attr: str, x: Callable[[datetime], float], y: Callable[[float], float]
) -> str:
    out: list[str] = []
    previous: datetime | None = None
    for p in points:
        command = "L" if previous is not None and p.minute - previous <= timedelta(minutes=1) else "M"
        out.append(f"{command}{x(p.minute + timedelta(seconds=30)):.1f} {y(getattr(p, attr)):.1f}")
        previous = p.minute
    return " ".join(out)
