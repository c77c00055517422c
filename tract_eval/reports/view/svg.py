"""A scatter plot as inline SVG text (no plotting library, no script): prediction against gold, or for
RewardBench the rejected response's score against the chosen one's."""
from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT, MARGIN = 360, 300, 44


@dataclass
class Point:
    x: float
    y: float
    label: str  # the sample id, shown as the point's tooltip


def _ticks(low: float, high: float) -> list[float]:
    step = 1.0 if high - low <= 10 else math.ceil((high - low) / 10)
    first = math.ceil(low)
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def scatter_svg(points: list[Point], scale: tuple[float, float], x_label: str, y_label: str,
                title: str) -> str:
    """Both axes span the score scale (widened to any point outside it); the diagonal is y = x."""
    values = [v for p in points for v in (p.x, p.y)]
    low = min([scale[0], *values]) - 0.25
    high = max([scale[1], *values]) + 0.25
    span = high - low

    def sx(v: float) -> float:
        return MARGIN + (v - low) / span * (WIDTH - MARGIN - 10)

    def sy(v: float) -> float:
        return HEIGHT - MARGIN - (v - low) / span * (HEIGHT - MARGIN - 10)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="scatter" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}">',
             f"<title>{escape(title)}</title>",
             f'<line class="diag" x1="{sx(low):.1f}" y1="{sy(low):.1f}" x2="{sx(high):.1f}" y2="{sy(high):.1f}"/>']
    for tick in _ticks(low, high):
        parts.append(f'<line class="grid" x1="{sx(tick):.1f}" y1="{sy(low):.1f}" x2="{sx(tick):.1f}" '
                     f'y2="{sy(high):.1f}"/><text class="tick" x="{sx(tick):.1f}" y="{HEIGHT - MARGIN + 14}" '
                     f'text-anchor="middle">{tick:g}</text>')
        parts.append(f'<line class="grid" x1="{sx(low):.1f}" y1="{sy(tick):.1f}" x2="{sx(high):.1f}" '
                     f'y2="{sy(tick):.1f}"/><text class="tick" x="{MARGIN - 6}" y="{sy(tick) + 4:.1f}" '
                     f'text-anchor="end">{tick:g}</text>')
    parts.append(f'<text class="axis" x="{(MARGIN + WIDTH) / 2:.0f}" y="{HEIGHT - 8}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text class="axis" x="12" y="{(HEIGHT - MARGIN) / 2:.0f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {(HEIGHT - MARGIN) / 2:.0f})">{escape(y_label)}</text>')
    for point in points:
        parts.append(f'<circle cx="{sx(point.x):.1f}" cy="{sy(point.y):.1f}" r="3.5">'
                     f"<title>{escape(point.label)}: ({point.x:.3g}, {point.y:.3g})</title></circle>")
    parts.append("</svg>")
    return "".join(parts)
