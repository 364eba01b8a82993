"""The verdict: sentences that say who won on knowledge, on behaviour and on freshness, by
how much, with what confidence and at what cost — every figure taken from results.json."""

from __future__ import annotations

import math
from typing import Any

from ragtune.evaluate.charts import ARM_LABELS
from ragtune.evaluate.charts import pct as _pct
from ragtune.evaluate.charts import secs as _secs


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
        cov = results.get("coverage")
        if cov and any(a in scored for a in ("ft", "ft_rag")):
            parts.append(
                f"The fine-tuned arms were trained on make-qa data with at least one example "
                f"for {cov['documents_covered']} of {cov['documents']} documents "
                f"({cov['pairs_kept']} pairs kept, {cov['pairs_dropped']} dropped): where that "
                "is low, the fine-tuned arms measure the training data, not fine-tuning itself."
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
        for arm, share in (fresh.get("retention") or {}).items():
            detail = (fresh.get("retention_detail") or {}).get(arm, {})
            if share is None:
                parts.append(
                    f"Retention after retraining ({ARM_LABELS.get(arm, arm)}): none of the "
                    f"{detail.get('asked', 0)} unchanged facts sampled was answered before."
                )
            else:
                parts.append(
                    f"After retraining, {ARM_LABELS.get(arm, arm)} still answered "
                    f"{detail.get('answered_after')}/{detail.get('answered_before')} of the "
                    f"sampled unchanged facts it had answered before ({_pct(share)} retention)."
                )
        out["freshness"] = " ".join(parts)
    out["text"] = " ".join(out[k] for k in ("knowledge", "behaviour", "freshness") if k in out)
    return out
