"""The calibration report: reliability diagrams before and after, the operating point, what to expect."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.evaluate.plots import reliability_plot


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _pct(v: float | None, ci: list[float] | None = None) -> str:
    if v is None:
        return "n/a"
    text = f"{100 * v:.1f}%"
    return text + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else "")


def _row(name: str, m: dict[str, Any], thr: float) -> str:
    ci = m.get("ci") or {}
    cells = [name, f"{thr:.3f}", _pct(m["sensitivity"], ci.get("sensitivity")),
             _pct(m["specificity"], ci.get("specificity")), _pct(m["accuracy"], ci.get("accuracy")),
             f"{m['ece']:.3f}", f"{m['roc_auc']:.3f}" if m.get("roc_auc") is not None else "n/a"]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def write_calibration_report(out: Path, summary: dict[str, Any], pos: np.ndarray, before: np.ndarray,
                             after: np.ndarray, thr_before: float, thr_after: float) -> Path:
    """``out/calibration.html``, self-contained (plots inlined)."""
    tmp = [out / "reliability-before.png", out / "reliability-after.png"]
    reliability_plot(pos, before, tmp[0], title="Before calibration")
    reliability_plot(pos, after, tmp[1], title=f"After (temperature {summary['temperature']:.2f})")
    imgs = [_img(p) for p in tmp]
    for p in tmp:
        p.unlink()
    counts = ", ".join(f"{c}: {n}" for c, n in summary["films_per_class"].items())
    offsets = ""
    if summary.get("class_bias"):
        offsets = " Class offsets (log-odds) " + html.escape(", ".join(
            f"{c} {b:+.2f}" for c, b in summary["class_bias"].items())) + "."
    if summary.get("accuracy"):
        offsets += (f" Arg-max accuracy on this sample {summary['accuracy']['before']:.3f} before, "
                    f"{summary['accuracy']['after']:.3f} after.")
    head = summary.get("site_head")
    if head:
        offsets += (f" Site head: a linear correction on the network's {head['features']} embedding features "
                    f"(L2 {head['l2']:g}), refitted on this sample; the &quot;after&quot; scores are cross-fitted "
                    f"(each film scored by a head fitted without its patient, {head['folds']} folds).")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>Site calibration of {html.escape(summary['model'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#111827}}
table{{border-collapse:collapse}}td,th{{border:1px solid #d1d5db;padding:.35em .7em;text-align:right}}
.warn{{background:#fef3c7;padding:.6em 1em;border-radius:6px}}img{{width:48%}}</style></head><body>
<h1>Site calibration: {html.escape(summary['model'])} {html.escape(summary['version'])}</h1>
<p class="warn">{html.escape(summary['disclaimer'])}</p>
<p>Sample: {summary['films']} films ({html.escape(counts)}); {summary['unreadable']} unreadable left out;
sample hash <code>{summary['sample_sha256'][:16]}</code>; {summary['date']}.
Temperature {summary['temperature']:.3f}.{offsets} Operating point chosen for sensitivity &ge;
{summary['target_sensitivity']:.2f} on this sample (the most specific such threshold).</p>
<table><tr><th></th><th>threshold</th><th>sensitivity [95% CI]</th><th>specificity [95% CI]</th>
<th>accuracy</th><th>ECE</th><th>ROC AUC</th></tr>
{_row("before (as shipped)", summary["before"], thr_before)}
{_row("after (on this sample)", summary["after"], thr_after)}</table>
<p>The "after" figures are measured on the sample the point was chosen on: expect them to be optimistic.
Check them on films that were not part of the sample before relying on them.</p>
<img alt="reliability before" src="{imgs[0]}"> <img alt="reliability after" src="{imgs[1]}">
</body></html>"""
    path = out / "calibration.html"
    path.write_text(page, encoding="utf-8")
    return path
