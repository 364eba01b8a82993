"""The comparison report: a verdict written from the numbers, ``results.json``,
``summary.md`` and a self-contained ``index.html`` (inline CSS and SVG charts; it opens
offline and prints well).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS_SCHEMA = 1
ARM_LABELS = {
    "base": "Base (closed book)",
    "rag": "RAG",
    "ft": "Fine-tuned",
    "ft_rag": "Fine-tuned + RAG",
}
ARM_COLORS = {"base": "#8c8c8c", "rag": "#1f77b4", "ft": "#d62728", "ft_rag": "#9467bd"}


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _secs(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "–"
    if x < 1:
        return f"{1000 * x:.0f} ms"
    if x < 120:
        return f"{x:.1f} s"
    return f"{x / 60:.1f} min"


# --- the verdict ---------------------------------------------------------------------------


def _pair(results: dict[str, Any], a: str, b: str, metric: str) -> dict[str, Any] | None:
    for s in results.get("significance", []):
        if s["metric"] == metric and {s["a"], s["b"]} == {a, b}:
            return dict(s)
    return None


def _significance_words(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "significance not tested"
    if p < 0.01:
        return f"significant (p = {p:.3g})"
    if p < 0.05:
        return f"significant at 5% (p = {p:.2g})"
    return f"not significant (p = {p:.2g})"


def write_verdict(results: dict[str, Any]) -> dict[str, str]:
    """Sentences that state who won on knowledge, on behaviour and on freshness, by how
    much, with what confidence and at what cost — all taken from ``results``."""
    arms: dict[str, dict[str, Any]] = results["arms"]
    out: dict[str, str] = {}
    scored = {a: m for a, m in arms.items() if m.get("f1") is not None}
    if scored:
        ranked = sorted(scored, key=lambda a: (-scored[a]["f1"], a))
        best = ranked[0]
        b = scored[best]
        parts = [
            f"On knowledge, {ARM_LABELS.get(best, best)} answered best: token F1 "
            f"{b['f1']:.3f} (95% CI {b['f1_ci'][0]:.3f}–{b['f1_ci'][1]:.3f}), answer found in "
            f"{_pct(b.get('contains'))} of {b['n']} held-out questions."
        ]
        for other in ranked[1:]:
            o = scored[other]
            sig = _pair(results, best, other, "f1")
            parts.append(
                f"Against {ARM_LABELS.get(other, other)} (F1 {o['f1']:.3f}) the margin is "
                f"{b['f1'] - o['f1']:+.3f}, {_significance_words(sig['p'] if sig else None)}."
            )
        prep = b.get("prep_s")
        if prep is not None:
            latency = _secs(b.get("latency_p50_s"))
            parts.append(
                f"It cost {_secs(prep)} of preparation and answers in {latency} (median, batched)."
            )
        out["knowledge"] = " ".join(parts)
    fmt = {a: m for a, m in arms.items() if m.get("format_ok") is not None}
    if fmt:
        ranked = sorted(fmt, key=lambda a: (-fmt[a]["format_ok"], a))
        best = ranked[0]
        parts = [
            f"On behaviour (the required answer format), {ARM_LABELS.get(best, best)} complied "
            f"most often: {_pct(fmt[best]['format_ok'])} of answers."
        ]
        for other in ranked[1:]:
            sig = _pair(results, best, other, "format_ok")
            parts.append(
                f"{ARM_LABELS.get(other, other)}: {_pct(fmt[other]['format_ok'])}"
                f" ({_significance_words(sig['p'] if sig else None)})."
            )
        out["behaviour"] = " ".join(parts)
    fresh = results.get("freshness")
    if fresh and fresh.get("arms"):
        parts = [f"After {fresh['n']} facts were changed in the documents:"]
        for arm, f in fresh["arms"].items():
            line = f"{ARM_LABELS.get(arm, arm)} gave the new value for {f['reflected']}/{f['n']}"
            if f.get("kept_old"):
                line += f" (the old one for {f['kept_old']}/{f['n']})"
            if f.get("reingest_s") is not None:
                line += f" right after a {_secs(f['reingest_s'])} re-ingest"
            if f.get("reflected_after_retrain") is not None:
                line += (
                    f"; after retraining ({_secs(f.get('retrain_s'))}) it gave the new value "
                    f"for {f['reflected_after_retrain']}/{f['n']}"
                )
            elif f.get("how", "").startswith("not retrained"):
                line += f" ({f['how']})"
            parts.append(line + ".")
        out["freshness"] = " ".join(parts)
    out["text"] = " ".join(out[k] for k in ("knowledge", "behaviour", "freshness") if k in out)
    return out


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
            f"{html.escape(lab)} ({_secs(x)}, {y:.2f})</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --- the HTML page ---------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;
background:#fafafa}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #ddd}
.muted{color:#666}.verdict{background:#fff;border-left:4px solid #1f77b4;padding:4px 16px;
box-shadow:0 1px 2px #0001}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px}
.chart{width:100%;height:auto;background:#fff;border:1px solid #e5e5e5;border-radius:6px}
.ct{font-size:13px;font-weight:600;text-anchor:middle}.tick{font-size:10px;fill:#666;
text-anchor:end}.mid{text-anchor:middle}.val{font-size:11px;text-anchor:middle}
.lab{font-size:11px;text-anchor:middle}.legend{font-size:11px;text-anchor:end}
.plabel{font-size:11px;text-anchor:start}
.axis{stroke:#999}.grid{stroke:#eee}.err{stroke:#222;stroke-width:1.5;fill:none}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13.5px}
th,td{border:1px solid #e3e3e3;padding:5px 8px;vertical-align:top;text-align:left}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{color:#17813b}.bad{color:#b3261e}.cite{font-size:12px}
.src{background:#fff;border:1px solid #e3e3e3;padding:8px 12px;margin:8px 0;border-radius:4px}
.src:target{outline:3px solid #1f77b4}.src pre{white-space:pre-wrap;margin:4px 0;font-size:12.5px}
code{background:#f0f0f0;padding:0 3px;border-radius:3px}
"""


QUALITY_COLUMNS = [
    ("n", "n", _fmt),
    ("em", "EM", _fmt),
    ("f1", "F1", _fmt),
    ("contains", "answer found", _pct),
    ("recall_at_k", "retrieval recall@k", _pct),
    ("citation_correct", "citations correct", _pct),
    ("grounded", "groundedness", _pct),
    ("format_ok", "format adherence", _pct),
]
COST_COLUMNS = [
    ("prep_s", "preparation", _secs),
    ("tokens_trained", "tokens trained", _fmt),
    ("peak_memory_mb", "peak memory (MB)", lambda v: _fmt(v, 0)),
    ("artefact_mb", "artefact on disk (MB)", lambda v: _fmt(v, 1)),
    ("latency_p50_s", "latency p50", _secs),
    ("latency_p95_s", "latency p95", _secs),
    ("tokens_per_s", "generated tokens/s", lambda v: _fmt(v, 1)),
]


def _arm_table(arms: dict[str, dict[str, Any]], cols: list[tuple[str, str, Any]]) -> str:
    head = "<tr><th>arm</th>" + "".join(f"<th>{t}</th>" for _, t, _ in cols) + "</tr>"
    rows = []
    for arm, m in arms.items():
        cells = []
        for key, _, f in cols:
            v = m.get(key)
            text = f(v) if v is not None else "–"
            if key == "f1" and m.get("f1_ci"):
                text += f' <span class="muted">({m["f1_ci"][0]:.2f}–{m["f1_ci"][1]:.2f})</span>'
            cells.append(f'<td class="num">{text}</td>')
        rows.append(f"<tr><th>{html.escape(ARM_LABELS.get(arm, arm))}</th>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _questions_table(results: dict[str, Any], limit: int) -> tuple[str, str]:
    arms = list(results["arms"])
    head = (
        "<tr><th>question</th><th>gold</th>"
        + "".join(f"<th>{html.escape(ARM_LABELS.get(a, a))}</th>" for a in arms)
        + "</tr>"
    )
    rows, sources = [], {}
    for q in results["questions"][:limit]:
        cells = []
        for arm in arms:
            r = q["arms"].get(arm)
            if r is None:
                cells.append("<td>–</td>")
                continue
            mark = "ok" if r.get("contains") else "bad"
            cites = []
            for c in r.get("citations", []):
                anchor = "src-" + "".join(ch if ch.isalnum() else "-" for ch in c["chunk_id"])
                sources[anchor] = c
                how = "" if c.get("how") == "model" else " (attributed)"
                cites.append(
                    f'<a href="#{anchor}" title="{html.escape(c["source"])}">[{c["marker"]}] '
                    f"{html.escape(c['doc_id'])}</a>{how}"
                )
            cite_html = f'<div class="cite">{"; ".join(cites)}</div>' if cites else ""
            cells.append(
                f'<td><span class="{mark}">{html.escape(r["answer"]) or "<i>(empty)</i>"}</span>'
                f"{cite_html}</td>"
            )
        gold = html.escape(" | ".join(q.get("answers", [])))
        rows.append(
            f"<tr><td>{html.escape(q['question'])}</td><td>{gold}</td>{''.join(cells)}</tr>"
        )
    src_html = "".join(
        f'<div class="src" id="{a}"><b>{html.escape(c["doc_id"])}</b> '
        f'<span class="muted">{html.escape(c["source"])}, characters {c["start"]}–{c["end"]}'
        f"</span><pre>{html.escape(c['text'])}</pre></div>"
        for a, c in sources.items()
    )
    return f"<table>{head}{''.join(rows)}</table>", src_html


def _freshness_table(fresh: dict[str, Any]) -> str:
    rows = []
    for arm, f in fresh.get("arms", {}).items():
        after = (
            f"{f['reflected_after_retrain']}/{f['n']} after {_secs(f.get('retrain_s'))}"
            if f.get("reflected_after_retrain") is not None
            else "–"
        )
        rows.append(
            f"<tr><th>{html.escape(ARM_LABELS.get(arm, arm))}</th>"
            f'<td class="num">{f["reflected"]}/{f["n"]}</td>'
            f'<td class="num">{f.get("kept_old", 0)}/{f["n"]}</td>'
            f"<td>{_secs(f.get('seconds_to_reflect'))} {html.escape(f.get('how', ''))}</td>"
            f"<td>{after}</td></tr>"
        )
    changes = "".join(
        f"<li><code>{html.escape(c['doc_id'])}</code>: {html.escape(c['old'])} → "
        f"{html.escape(c['new'])}</li>"
        for c in fresh.get("changes", [])
    )
    return (
        "<table><tr><th>arm</th><th>new value given</th><th>old value kept</th>"
        "<th>time to reflect</th><th>after retraining</th></tr>"
        f"{''.join(rows)}</table><ul>{changes}</ul>"
    )


def _diff_section(diff: dict[str, Any]) -> str:
    rows = []
    for arm, d in diff.items():
        if d is None:
            rows.append(
                f"<tr><th>{html.escape(ARM_LABELS.get(arm, arm))}</th><td>none — weights "
                "untouched</td><td></td></tr>"
            )
            continue
        top = ", ".join(f"{html.escape(m)} {r:.4f}" for m, r in d.get("top", [])[:5])
        rows.append(
            f"<tr><th>{html.escape(ARM_LABELS.get(arm, arm))}</th>"
            f'<td class="num">‖ΔW‖/‖W‖ = {d["total"]:.5f}</td><td>{top}</td></tr>'
        )
    return (
        "<table><tr><th>arm</th><th>weight change</th><th>largest relative changes</th></tr>"
        f"{''.join(rows)}</table>"
    )


def render_html(results: dict[str, Any], max_questions: int = 60) -> str:
    arms: dict[str, dict[str, Any]] = results["arms"]
    verdict = results.get("verdict", {})
    charts = []
    charts.append(
        bar_chart(
            "Token F1 per arm (95% CI)",
            [
                (
                    a,
                    m.get("f1") or 0.0,
                    tuple(m["f1_ci"]) if m.get("f1_ci") else None,
                    ARM_COLORS.get(a, "#555"),
                )
                for a, m in arms.items()
            ],
        )
    )
    if any(m.get("format_ok") is not None for m in arms.values()):
        charts.append(
            bar_chart(
                "Format adherence per arm (95% CI)",
                [
                    (
                        a,
                        m.get("format_ok") or 0.0,
                        tuple(m["format_ok_ci"]) if m.get("format_ok_ci") else None,
                        ARM_COLORS.get(a, "#555"),
                    )
                    for a, m in arms.items()
                ],
            )
        )
    training = results.get("training") or {}
    if training.get("loss_curve"):
        charts.append(
            line_chart(
                "Training loss",
                [
                    ("train", [tuple(p) for p in training["loss_curve"]], "#d62728"),
                    ("valid", [tuple(p) for p in training.get("valid_curve", [])], "#1f77b4"),
                ],
            )
        )
    charts.append(
        scatter_chart(
            "Cost vs accuracy",
            [(a, m.get("prep_s"), m.get("f1"), ARM_COLORS.get(a, "#555")) for a, m in arms.items()],
            "preparation time (s)",
            "F1",
        )
    )
    lat_max = max([m.get("latency_p95_s") or 0.0 for m in arms.values()] + [1e-9])
    charts.append(
        bar_chart(
            "Latency per question, p50 (p95 as bar top) — seconds",
            [
                (
                    a,
                    m.get("latency_p50_s") or 0.0,
                    (m.get("latency_p50_s") or 0.0, m.get("latency_p95_s") or 0.0),
                    ARM_COLORS.get(a, "#555"),
                )
                for a, m in arms.items()
            ],
            ymax=lat_max * 1.1,
            fmt="{:.1f}",
        )
    )
    qtable, sources = _questions_table(results, max_questions)
    data = results.get("data", {})
    fresh = results.get("freshness")
    sections = [
        "<h1>ragtune: base vs RAG vs fine-tuned</h1><p class='muted'>"
        f"{html.escape(str(data.get('name', '')))} — {data.get('n_test', '?')} held-out "
        f"questions, created {html.escape(results.get('created_at', ''))}, "
        f"ragtune {html.escape(results.get('ragtune_version', ''))}</p>",
        "<h2>Verdict</h2><div class='verdict'>"
        + "".join(
            f"<p>{html.escape(verdict[key])}</p>"
            for key in ("knowledge", "behaviour", "freshness")
            if verdict.get(key)
        )
        + "</div>",
        f"<h2>Charts</h2><div class='charts'>{''.join(charts)}</div>",
        f"<h2>Quality</h2>{_arm_table(arms, QUALITY_COLUMNS)}",
        f"<h2>Cost</h2>{_arm_table(arms, COST_COLUMNS)}",
        "<p class='muted'>Intervals are 95% percentile bootstrap intervals over questions; "
        "latency is the wall time of the batch a question was answered in plus its "
        "retrieval time.</p>",
    ]
    if fresh:
        sections.append(f"<h2>Freshness: {fresh['n']} facts changed</h2>{_freshness_table(fresh)}")
    if results.get("diff"):
        sections.append(
            "<h2>Which arms changed weights</h2>"
            "<p>Relative Frobenius change ‖ΔW‖/‖W‖ between the base and each arm's model "
            "(<code>ragtune diff</code>). RAG changes no weights: its knowledge lives in "
            "the index.</p>" + _diff_section(results["diff"])
        )
    sig = results.get("significance", [])
    if sig:
        rows = "".join(
            f"<tr><td>{html.escape(s['a'])} vs {html.escape(s['b'])}</td><td>{s['metric']}</td>"
            f"<td>{s['test']}</td><td class='num'>{s['diff']:+.3f}</td>"
            f"<td class='num'>{s['p']:.3g}</td></tr>"
            for s in sig
        )
        sections.append(
            "<h2>Paired significance</h2><table><tr><th>arms</th><th>metric</th><th>test</th>"
            f"<th>difference</th><th>p</th></tr>{rows}</table>"
        )
    sections.append(f"<h2>Example questions</h2>{qtable}")
    if sources:
        sections.append(f"<h2>Cited sources</h2>{sources}")
    sections.append(
        "<h2>Settings</h2><pre>"
        + html.escape(json.dumps(results.get("settings", {}), indent=2))
        + "</pre>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<title>ragtune comparison</title><style>{CSS}</style></head><body><main>"
        + "".join(sections)
        + "</main></body></html>"
    )


def render_markdown(results: dict[str, Any]) -> str:
    arms = results["arms"]
    lines = ["# ragtune comparison", "", results.get("verdict", {}).get("text", ""), ""]
    lines.append("| arm | n | EM | F1 (95% CI) | found | format | prep | latency p50 |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for arm, m in arms.items():
        ci = m.get("f1_ci") or [float("nan")] * 2
        lines.append(
            f"| {ARM_LABELS.get(arm, arm)} | {m['n']} | {_fmt(m.get('em'))} | "
            f"{_fmt(m.get('f1'))} ({_fmt(ci[0], 2)}–{_fmt(ci[1], 2)}) | "
            f"{_pct(m.get('contains'))} | "
            f"{_pct(m.get('format_ok'))} | {_secs(m.get('prep_s'))} | "
            f"{_secs(m.get('latency_p50_s'))} |"
        )
    fresh = results.get("freshness")
    if fresh:
        lines += ["", f"Freshness ({fresh['n']} facts changed):", ""]
        for arm, f in fresh["arms"].items():
            lines.append(
                f"- {ARM_LABELS.get(arm, arm)}: {f['reflected']}/{f['n']} new values, "
                f"time to reflect {_secs(f.get('seconds_to_reflect'))} {f.get('how', '')}"
            )
    return "\n".join(lines) + "\n"


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``summary.md`` and ``index.html`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results = {**results, "schema": RESULTS_SCHEMA}
    results["verdict"] = write_verdict(results)
    paths = {
        "results": out / "results.json",
        "summary": out / "summary.md",
        "html": out / "index.html",
    }
    paths["results"].write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["summary"].write_text(render_markdown(results), encoding="utf-8")
    paths["html"].write_text(render_html(results), encoding="utf-8")
    return paths
