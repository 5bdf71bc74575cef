"""Plots and the fleet map as SVG drawn on the server: no script, no internet, no CDN.

Pure: figures in, SVG markup out (presentation attributes only, so the strict content security
policy, which refuses inline styles, allows them). Every plot is `role="img"` with a title and
a description pointing at the table beside it, which is what a screen reader reads; a
suppressed figure is drawn as an empty outline at the base line, never as zero. The map
projects each kiosk's longitude and latitude into the box (equirectangular, fine for a city),
draws each town's extent as a labelled rectangle, and marks kiosks by state with a shape as
well as a colour (circle online, triangle late, square offline).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup

INK = "#1d2b36"
BAR = "#1f5f8b"
GRID = "#c9d3db"
STATE_COLOURS = {"online": "#1b7a3a", "late": "#9a6400", "offline": "#b3261e"}
_ids = itertools.count(1)


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _nice_top(value: int) -> int:
    if value <= 5:
        return 5
    magnitude = 10 ** (len(str(value)) - 1)
    for step in (1, 2, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def bar_chart(
    title: str,
    description: str,
    labels: Sequence[str],
    values: Sequence[int | None],
    *,
    suppressed: str,
    width: int = 640,
    height: int = 220,
) -> Markup:
    """Vertical bars, one per label; None (suppressed) as a dashed outline marked `suppressed`."""
    uid = next(_ids)
    left, right, top, bottom = 48, 8, 12, 44
    plot_w, plot_h = width - left - right, height - top - bottom
    known = [v for v in values if v is not None]
    peak = _nice_top(max(known, default=0))
    n = max(1, len(values))
    slot = plot_w / n
    bar_w = max(2.0, slot * 0.7)
    parts = [
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-labelledby="chart-{uid}-t chart-{uid}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="chart-{uid}-t">{_e(title)}</title>',
        f'<desc id="chart-{uid}-d">{_e(description)}</desc>',
    ]
    for k in range(5):
        y = top + plot_h - plot_h * k / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" '
            f'fill="{INK}">{peak * k // 4}</text>'
        )
    every = max(1, n // 12)
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = left + i * slot + (slot - bar_w) / 2
        if value is None:
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - 14}" width="{bar_w:.1f}" height="14" '
                f'fill="none" stroke="{INK}" stroke-dasharray="3 2"><title>{_e(label)}: '
                f"{_e(suppressed)}</title></rect>"
            )
        else:
            h = plot_h * value / peak
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w:.1f}" '
                f'height="{h:.1f}" fill="{BAR}"><title>{_e(label)}: {value}</title></rect>'
            )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                f'font-size="11" fill="{INK}">{_e(label[-7:])}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


@dataclass(frozen=True)
class MapPoint:
    kiosk_id: str
    latitude: float
    longitude: float
    town: str
    state: str  # online | late | offline
    label: str  # what the point's tooltip says


def _marker(x: float, y: float, state: str) -> str:
    colour = STATE_COLOURS.get(state, INK)
    if state == "online":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}" stroke="#fff"/>'
    if state == "late":
        return (
            f'<polygon points="{x:.1f},{y - 7:.1f} {x + 7:.1f},{y + 6:.1f} {x - 7:.1f},{y + 6:.1f}" '
            f'fill="{colour}" stroke="#fff"/>'
        )
    return f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="{colour}" stroke="#fff"/>'


def fleet_map(
    title: str, description: str, points: Sequence[MapPoint], *, width: int = 640, height: int = 420
) -> Markup:
    """The kiosks over their towns' extents; an empty map says so in its description."""
    uid = next(_ids)
    pad = 28
    parts = [
        f'<svg class="map" viewBox="0 0 {width} {height}" width="100%" role="img" '
        f'aria-labelledby="map-{uid}-t map-{uid}-d" xmlns="http://www.w3.org/2000/svg">',
        f'<title id="map-{uid}-t">{_e(title)}</title>',
        f'<desc id="map-{uid}-d">{_e(description)}</desc>',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f7f9" stroke="{GRID}"/>',
    ]
    if points:
        lats = [p.latitude for p in points]
        lons = [p.longitude for p in points]
        south, north = min(lats), max(lats)
        west, east = min(lons), max(lons)
        span_lat = max(north - south, 1e-3)
        span_lon = max(east - west, 1e-3)

        def project(lat: float, lon: float) -> tuple[float, float]:
            x = pad + (lon - west) / span_lon * (width - 2 * pad)
            y = pad + (north - lat) / span_lat * (height - 2 * pad)
            return x, y

        towns: dict[str, list[tuple[float, float]]] = {}
        for p in points:
            towns.setdefault(p.town, []).append(project(p.latitude, p.longitude))
        for town, xy in sorted(towns.items()):
            xs, ys = [x for x, _ in xy], [y for _, y in xy]
            x0, y0 = min(xs) - 14, min(ys) - 14
            parts.append(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(xs) - min(xs) + 28:.1f}" '
                f'height="{max(ys) - min(ys) + 28:.1f}" fill="none" stroke="{GRID}" '
                f'stroke-dasharray="4 3"/><text x="{x0 + 2:.1f}" y="{y0 - 3:.1f}" '
                f'font-size="11" fill="{INK}">{_e(town)}</text>'
            )
        for p in points:
            x, y = project(p.latitude, p.longitude)
            parts.append(f"<g>{_marker(x, y, p.state)}<title>{_e(p.label)}</title></g>")
    parts.append("</svg>")
    return Markup("".join(parts))
