"""report.html: one self-contained page (images inlined as base64 PNG, no scripts, no links out)."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from typing import Any

from diffad.metrics import METRIC_KEYS

COLUMN_NAMES = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1_max": "P-F1max",
    "aupro": "AUPRO",
    "mad": "mAD",
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ccc; }
h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.mean td { font-weight: bold; background: #f3f3f3; }
table.cases td, table.cases th { text-align: center; vertical-align: top; }
table.cases img { width: 180px; height: auto; image-rendering: pixelated; display: block; }
table.cases td.caption { font-size: 12px; width: 200px; overflow-wrap: anywhere; text-align: left; }
.note { color: #666; font-size: 12px; }
img.figure { max-width: 100%; height: auto; }
pre { background: #f6f6f6; padding: 8px; font-size: 12px; overflow-x: auto; }
"""


@dataclass
class Case:
    """One row of a best/worst table: a caption and PNG tiles, one per column."""

    caption: str
    tiles: list[bytes]


@dataclass
class Section:
    """What the page shows for one category."""

    category: str
    per_defect: dict[str, dict[str, Any]]
    curves_png: bytes
    histogram_png: bytes
    columns: list[str]
    best: list[Case] = field(default_factory=list)
    worst: list[Case] = field(default_factory=list)
    note: str = ""


def image_tag(png: bytes, alt: str, css_class: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value != value:
        return "n/a"
    return f"{100 * value:.1f}"


def metrics_table(rows: list[tuple[str, dict[str, Any]]], first_column: str, mean: dict | None = None) -> str:
    """A table with a row per (name, metrics) and the metrics as percentages, as ADer's tables show them."""
    head = "".join(f"<th>{COLUMN_NAMES[k]}</th>" for k in METRIC_KEYS)
    lines = [f"<table><tr><th>{html.escape(first_column)}</th>{head}</tr>"]
    for name, metrics in rows:
        cells = "".join(f"<td>{_cell(metrics.get(k))}</td>" for k in METRIC_KEYS)
        lines.append(f"<tr><td>{html.escape(name)}</td>{cells}</tr>")
    if mean is not None:
        cells = "".join(f"<td>{_cell(mean.get(k))}</td>" for k in METRIC_KEYS)
        lines.append(f'<tr class="mean"><td>mean</td>{cells}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def _cases_table(cases: list[Case], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    lines = [f'<table class="cases"><tr><th>image</th>{head}</tr>']
    for case in cases:
        tiles = "".join(f"<td>{image_tag(t, col)}</td>" for t, col in zip(case.tiles, columns))
        lines.append(f'<tr><td class="caption">{html.escape(case.caption)}</td>{tiles}</tr>')
    lines.append("</table>")
    return "\n".join(lines)


def render_report(
    title: str,
    summary: list[tuple[str, dict[str, Any]]],
    mean: dict[str, Any] | None,
    sections: list[Section],
    settings: dict[str, Any],
    facts: list[str],
) -> str:
    """The whole page as a string."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "".join(f'<p class="note">{html.escape(f)}</p>' for f in facts),
        "<h2>Metrics (%)</h2>",
        metrics_table(summary, "category", mean),
        '<p class="note">I- image level, P- pixel level (all pixels pooled); F1max: best F1 over all '
        "thresholds; AUPRO: per-region overlap up to FPR 0.3; mAD: mean of the defined metrics; "
        "n/a: undefined (one class missing); –: not computed (no masks).</p>",
    ]
    for section in sections:
        parts.append(f'<h2 id="{html.escape(section.category)}">{html.escape(section.category)}</h2>')
        if section.note:
            parts.append(f'<p class="note">{html.escape(section.note)}</p>')
        if section.per_defect:
            parts.append("<h3>Per defect type (with the good images)</h3>")
            parts.append(metrics_table(list(section.per_defect.items()), "defect type"))
        parts.append(image_tag(section.curves_png, f"{section.category}: ROC and PRO curves", "figure"))
        parts.append(image_tag(section.histogram_png, f"{section.category}: score histogram", "figure"))
        for name, cases in (("Best cases", section.best), ("Worst cases", section.worst)):
            if cases:
                parts.append(f"<h3>{name}</h3>")
                parts.append(_cases_table(cases, section.columns))
    parts.append("<h2>Settings</h2>")
    parts.append(f"<pre>{html.escape(json.dumps(settings, indent=2, default=str))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)
