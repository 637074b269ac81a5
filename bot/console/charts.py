"""Charts as server-rendered SVG: no script, no library, nothing fetched by the browser."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from markupsafe import Markup


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    """One column: its label, its stacked parts (bottom first) and its tooltip."""

    label: str
    parts: tuple[float, ...]
    title: str


def bar_chart(
    bars: Sequence[Bar],
    *,
    legend: Sequence[str],
    line: Sequence[float] | None = None,
    line_label: str = "",
    width: int = 760,
    height: int = 240,
    aria: str = "chart",
    kind: str = "",
) -> Markup:
    """Stacked bars (one colour per part, classes `p0`, `p1`…) with an optional line on its
    own scale (`line`), labelled below every few bars."""
    left, bottom, top = 56, 28, 16
    plot_w, plot_h = width - left - 8, height - bottom - top
    peak = max((sum(b.parts) for b in bars), default=0) or 1
    line_peak = max(line or [0]) or 1
    step = plot_w / max(1, len(bars))
    every = max(1, len(bars) // 10)
    out = [
        f'<svg class="chart {escape(kind)}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(aria)}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for frac in (0, 0.5, 1):
        y = top + plot_h * (1 - frac)
        out.append(f'<line class="grid" x1="{left}" x2="{width - 8}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(
            f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{escape(_short(peak * frac))}</text>"
        )
    points = []
    for n, bar in enumerate(bars):
        x = left + n * step
        y = top + plot_h
        out.append(f"<g><title>{escape(bar.title)}</title>")
        for k, part in enumerate(bar.parts):
            h = plot_h * part / peak
            y -= h
            out.append(
                f'<rect class="p{k}" x="{x + step * 0.15:.1f}" y="{y:.1f}" '
                f'width="{step * 0.7:.1f}" height="{h:.1f}"/>'
            )
        out.append("</g>")
        if n % every == 0:
            out.append(
                f'<text class="axis" x="{x + step / 2:.1f}" y="{height - 10}" '
                f'text-anchor="middle">{escape(bar.label)}</text>'
            )
        if line is not None:
            ly = top + plot_h * (1 - line[n] / line_peak)
            points.append(f"{x + step / 2:.1f},{ly:.1f}")
    if points:
        out.append(f'<polyline class="line" points="{" ".join(points)}"/>')
    keys = [*legend, *([line_label] if line is not None and line_label else [])]
    for k, name in enumerate(keys):
        cls = f"p{k}" if k < len(legend) else "line-key"
        x = left + k * 150
        out.append(f'<rect class="{cls}" x="{x}" y="0" width="10" height="10"/>')
        out.append(f'<text class="axis" x="{x + 14}" y="9">{escape(name)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _short(value: float) -> str:
    """1234567 → 1.2M, 5400 → 5.4k."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.1f}{unit}"
    return f"{value:.3g}"
