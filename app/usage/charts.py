"""Inline SVG bar charts for the usage page: no script, no CDN, escaped labels."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 860, 220
LEFT, BOTTOM, TOP = 56, 28, 12


def _short(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{suffix}".replace(".0", "")
    return f"{value:.0f}"


def stacked_bars(
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    title: str,
) -> str:
    """A bar per label, the series stacked (first at the bottom); an `<svg>` string.

    Args:
        series: (css class, values) pairs, each as long as `labels`.
    """
    count = max(1, len(labels))
    totals = [sum(values[i] for _, values in series) for i in range(len(labels))]
    top = max(totals, default=0) or 1
    plot_w, plot_h = WIDTH - LEFT - 8, HEIGHT - BOTTOM - TOP
    step = plot_w / count
    bar = max(1.0, step * 0.7)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - 8}" y2="{TOP + plot_h}" '
        'stroke="#c7cbd1"/>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end">{_short(top)}</text>',
        f'<text x="{LEFT - 6}" y="{TOP + plot_h}" text-anchor="end">0</text>',
    ]
    every = max(1, count // 10)
    for i, label in enumerate(labels):
        x = LEFT + i * step + (step - bar) / 2
        y: float = TOP + plot_h
        for css, values in series:
            h = plot_h * values[i] / top
            if h > 0:
                y -= h
                parts.append(
                    f'<rect class="bar {css}" x="{x:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                    f'height="{h:.1f}"><title>{escape(label)}: {values[i]:,.0f}</title></rect>'
                )
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle">'
                f"{escape(label)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)
