"""Self-contained SVG charts for the comparison report (no JavaScript, no external files)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

ARM_LABELS = {
    "base": "Base (closed book)",
    "rag": "RAG",
    "ft": "Fine-tuned",
    "ft_rag": "Fine-tuned + RAG",
}


def secs(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "–"
    if x < 1:
        return f"{1000 * x:.0f} ms"
    if x < 120:
        return f"{x:.1f} s"
    return f"{x / 60:.1f} min"


def pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


# --- SVG charts -----------------------------------------------------------------------------


def bar_chart(
    title: str,
    bars: Sequence[tuple[str, float, tuple[float, float] | None, str]],
    ymax: float = 1.0,
    fmt: str = "{:.2f}",
) -> str:
    """Vertical bars with optional error bars: (label, value, (lo, hi) or None, colour)."""
    w, h, left, bottom, top = 420, 240, 40, 40, 28
    plot_h = h - bottom - top
    n = max(1, len(bars))
    slot = (w - left - 10) / n
    ymax = ymax or 1.0
    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{w / 2}" y="16" class="ct">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" class="axis"/>',
    ]
    for frac in (0.25, 0.5, 0.75, 1.0):
        y = h - bottom - frac * plot_h
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{w - 10}" y2="{y:.1f}" class="grid"/>')
        parts.append(
            f'<text x="{left - 4}" y="{y + 4:.1f}" class="tick">{fmt.format(frac * ymax)}</text>'
        )
    for i, (label, value, ci, color) in enumerate(bars):
        x = left + i * slot + slot * 0.2
        bw = slot * 0.6
        v = 0.0 if value is None or math.isnan(value) else value
        bh = max(0.0, min(1.0, v / ymax)) * plot_h
        parts.append(
            f'<rect x="{x:.1f}" y="{h - bottom - bh:.1f}" width="{bw:.1f}" height="{bh:.1f}" '
            f'fill="{color}"><title>{html.escape(label)}: {fmt.format(v)}</title></rect>'
        )
        if ci is not None and not any(math.isnan(c) for c in ci):
            y1 = h - bottom - min(1.0, ci[0] / ymax) * plot_h
            y2 = h - bottom - min(1.0, ci[1] / ymax) * plot_h
            cx = x + bw / 2
            parts.append(
                f'<path d="M{cx:.1f} {y1:.1f}V{y2:.1f}M{cx - 5:.1f} {y1:.1f}h10M{cx - 5:.1f} '
                f'{y2:.1f}h10" class="err"/>'
            )
        label_y = h - bottom - bh - 4
        if ci is not None and not any(math.isnan(c) for c in ci):
            label_y = min(label_y, h - bottom - min(1.0, ci[1] / ymax) * plot_h - 4)
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{max(top - 2, label_y):.1f}" class="val">'
            f"{fmt.format(v)}</text>"
        )
        parts.append(
            f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 16:.1f}" class="lab">'
            f"{html.escape(label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: Sequence[tuple[str, Sequence[tuple[float, float]], str]]) -> str:
    """Lines over a shared x axis: (name, [(x, y), ...], colour)."""
    pts = [p for _, s, _ in series for p in s]
    w, h, left, bottom, top = 420, 240, 44, 36, 28
    if not pts:
        return f'<p class="muted">{html.escape(title)}: no data.</p>'
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = 0.0, max(p[1] for p in pts) * 1.05 or 1.0
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - 10)

    def sy(y: float) -> float:
        return h - bottom - (y - y0) / (y1 - y0) * (h - bottom - top)

    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{w / 2}" y="16" class="ct">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" class="axis"/>',
        f'<text x="{left - 4}" y="{sy(y1) + 4:.1f}" class="tick">{y1:.2f}</text>',
        f'<text x="{left - 4}" y="{h - bottom:.1f}" class="tick">0</text>',
        f'<text x="{w - 10}" y="{h - 8}" class="tick">{x1:g}</text>',
        f'<text x="{left}" y="{h - 8}" class="tick">{x0:g}</text>',
    ]
    for i, (name, s, color) in enumerate(series):
        if not s:
            continue
        d = " ".join(
            f"{'M' if j == 0 else 'L'}{sx(x):.1f} {sy(y):.1f}" for j, (x, y) in enumerate(s)
        )
        parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        parts.append(
            f'<text x="{w - 14}" y="{top + 14 + 14 * i}" class="legend" fill="{color}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def scatter_chart(
    title: str,
    points: Sequence[tuple[str, float | None, float | None, str]],
    xlabel: str,
    ylabel: str,
) -> str:
    """Labelled points (label, x, y, colour), None values left out; x on a log scale
    (log10(1 + x)) when it spans more than 100×."""
    w, h, left, bottom, top = 420, 240, 44, 40, 28
    good = [
        (lab, float(x), float(y), c) for lab, x, y, c in points if x is not None and y is not None
    ]
    if not good:
        return f'<p class="muted">{html.escape(title)}: no data.</p>'
    xs = [max(x, 0.0) for _, x, _, _ in good]
    log = max(xs) > 100 * max(1.0, min(xs))

    def tx(x: float) -> float:
        return math.log10(1 + max(x, 0.0)) if log else x

    lo, hi = min(tx(x) for x in xs), max(tx(x) for x in xs)
    hi = hi if hi > lo else lo + 1
    ymax = max(1e-9, max(y for _, _, y, _ in good)) * 1.15

    parts = [
        f'<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{html.escape(title)}">',
        f'<text x="{w / 2}" y="16" class="ct">{html.escape(title)}</text>',
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" class="axis"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" class="axis"/>',
        f'<text x="{w / 2}" y="{h - 6}" class="tick mid">{html.escape(xlabel)}'
        f"{' (log scale)' if log else ''}</text>",
        f'<text x="12" y="{h / 2}" class="tick mid" transform="rotate(-90 12 {h / 2})">'
        f"{html.escape(ylabel)}</text>",
    ]
    for lab, x, y, color in good:
        px = left + 12 + (tx(x) - lo) / (hi - lo) * (w - left - 150)
        py = h - bottom - y / ymax * (h - bottom - top)
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="6" fill="{color}"/>')
        parts.append(
            f'<text x="{px + 9:.1f}" y="{py + 4:.1f}" class="plabel">'
            f"{html.escape(lab)} ({secs(x)}, {y:.2f})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --- the HTML page ---------------------------------------------------------------------------
