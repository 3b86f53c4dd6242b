"""Writing an evaluation's three outputs: metrics.json, scores.csv and report.html."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from diffad.errors import ConfigError
from diffad.files import atomic_write
from diffad.report import figures
from diffad.report.html import Case, Section, render_report
from diffad.report.panels import colorize, mask_to_rgb8, overlay, png_bytes, resize_rgb, to_rgb8
from diffad.report.results import (
    CategoryResults,
    CategorySummary,
    finite_or_none,
    mean_row,
    select_cases,
    summarize,
)

METRICS_FILE = "metrics.json"
SCORES_FILE = "scores.csv"
REPORT_FILE = "report.html"
TILE_SIZE = 256  # larger images are shrunk in the page to keep it a few megabytes


def metrics_document(
    summaries: list[CategorySummary], settings: dict[str, Any], seconds_per_image: float | None, aupro: str
) -> dict[str, Any]:
    """metrics.json: the metrics (one category: its own; several: their mean, as ADer's mean row),
    `per_defect` (keys "category/defect" when there are several categories), `per_category`,
    `num_images`, `seconds_per_image` and `settings`; `at_threshold` (per category, and at the top for
    one category): the false-positive rate and recall at the detector's saved default threshold, null
    when it saved none. NaN (undefined) is written as null."""
    several = len(summaries) > 1
    top = mean_row(summaries) if several else dict(summaries[0].metrics)
    per_defect = {
        (f"{s.category}/{defect}" if several else defect): values
        for s in summaries
        for defect, values in s.per_defect.items()
    }
    document = {
        **top,
        "per_defect": per_defect,
        "per_category": {
            s.category: {
                **s.metrics,
                "num_images": s.num_images,
                "pixel_metrics": s.pixel_metrics,
                "per_defect": s.per_defect,
                "at_threshold": s.at_threshold,
            }
            for s in summaries
        },
        **({} if several else {"at_threshold": summaries[0].at_threshold}),
        "num_images": sum(s.num_images for s in summaries),
        "seconds_per_image": seconds_per_image,
        "aupro_mode": aupro,
        "settings": settings,
    }
    return finite_or_none(document)


def scores_csv(results: list[CategoryResults]) -> str:
    """path,label,defect_type,score,category — one row per test image."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "label", "defect_type", "score", "category"])
    for r in results:
        for path, label, defect, score in zip(r.paths, r.labels, r.defect_types, r.scores):
            writer.writerow([path, int(label), defect, f"{float(score):.9g}", r.category])
    return buffer.getvalue()


def format_score(value: float) -> str:
    """Every score and threshold in the report in one format: three decimals (21.610, -0.290, 0.036)."""
    return f"{float(value):.3f}"


def shown_path(path: str) -> str:
    """A file with its folder: sets of synthetic and real defects reuse names like 0000.png."""
    parts = Path(path).parts
    return "/".join(parts[-2:])


def _tiles(results: CategoryResults, index: int, colour_range: tuple[float, float]) -> list[bytes]:
    image = to_rgb8(results.inputs[index]) if results.inputs is not None else None
    amap = results.maps[index]
    heat = overlay(image, amap, 0.5, *colour_range) if image is not None else colorize(amap, *colour_range)
    tiles = [image] if image is not None else []
    if results.reconstructions is not None:
        recon = results.reconstructions
        recon = recon.get(index) if isinstance(recon, dict) else recon[index]
        # A missing one (not made for this image) shows as a grey tile; the columns stay aligned.
        tiles.append(to_rgb8(recon) if recon is not None else np.full_like(heat, 128))
    tiles.append(heat)
    if results.has_masks:
        tiles.append(mask_to_rgb8(results.masks[index]))
    height = min(TILE_SIZE, heat.shape[0])
    shrunk = [resize_rgb(t, (height, round(t.shape[1] * height / t.shape[0]))) for t in tiles]
    return [png_bytes(t) for t in shrunk]


def _section(results: CategoryResults, summary: CategorySummary, num_cases: int) -> Section:
    columns = (["input"] if results.inputs is not None else []) + (
        ["reconstruction"] if results.reconstructions is not None else []
    )
    columns.append("anomaly map" + (" over input" if results.inputs is not None else ""))
    columns += ["ground truth"] if results.has_masks else []
    best, worst = select_cases(results, summary.threshold, num_cases)

    def case(i: int) -> Case:
        caption = f"{results.defect_types[i]} · score {format_score(results.scores[i])} · {shown_path(results.paths[i])}"
        return Case(caption=caption, tiles=_tiles(results, i, summary.colour_range))

    m = summary.metrics
    defects = int((results.labels == 1).sum())
    if defects and defects < len(results.labels):
        judged = f"F1-best image threshold {format_score(summary.threshold)}"
    else:  # one class only: no threshold, and no ROC to draw
        judged = "no defective images" if not defects else "no good images"
        judged += " in this test split, so no threshold, ROC or AUROC"
    return Section(
        category=summary.category,
        per_defect=summary.per_defect,
        curves_png=figures.curves_png(
            summary.image_roc, summary.pixel_roc, summary.pro, m["image_auroc"], m["pixel_auroc"], m["aupro"]
        ),
        histogram_png=figures.histogram_png(results.scores, results.labels, summary.threshold),
        columns=columns,
        best=[case(i) for i in best],
        worst=[case(i) for i in worst],
        note=(
            f"{summary.num_images} test images; {judged}; "
            + (f"{describe_rates(summary.at_threshold)}; " if summary.at_threshold else "")
            + "map colours span "
            f"{format_score(summary.colour_range[0])} (blue) to {format_score(summary.colour_range[1])} (red). "
            "Best: judged right by the widest margin; worst: wrong (or nearest to wrong) by the widest."
        ),
    )


def describe_rates(at: dict) -> str:
    """The saved threshold's false-positive rate and recall on the test images, in words."""

    def rate(value, count, total):
        return "n/a" if value is None else f"{100 * value:.1f}% ({count} of {total})"

    return (
        f"at the saved {at['name']} threshold {at['threshold']:.4g}: false-positive rate "
        f"{rate(at['fpr'], at['false_positives'], at['good'])}, recall "
        f"{rate(at['recall'], at['true_positives'], at['defective'])}"
    )


def write_outputs(
    output_dir: str | os.PathLike,
    results: list[CategoryResults],
    settings: dict[str, Any],
    *,
    aupro: str = "exact",
    num_cases: int = 4,
    title: str = "diffad evaluation",
    facts: list[str] | None = None,
    summaries: list[CategorySummary] | None = None,
) -> dict[str, Any]:
    """Computes every metric (or takes `summaries`, made by `summarize` from the same results before
    their maps were dropped) and writes OUT/metrics.json, OUT/scores.csv and OUT/report.html, each
    atomically. Returns the metrics document."""
    if not results:
        raise ConfigError("nothing to report: no category has results")
    out = Path(output_dir)
    summaries = summaries or [summarize(r, aupro) for r in results]
    timed = [r for r in results if r.seconds is not None]
    images = sum(len(r.scores) for r in timed)
    seconds_per_image = sum(r.seconds for r in timed) / images if images else None
    document = metrics_document(summaries, settings, seconds_per_image, aupro)
    atomic_write(out / METRICS_FILE, json.dumps(document, indent=2, default=str) + "\n")
    atomic_write(out / SCORES_FILE, scores_csv(results))
    sections = [_section(r, s, num_cases) for r, s in zip(results, summaries)]
    rows = [(s.category, s.metrics) for s in summaries]
    mean = mean_row(summaries) if len(summaries) > 1 else None
    lines = list(facts or [])
    lines.append(
        f"{document['num_images']} test images"
        + (f", {seconds_per_image:.3f} s per image" if seconds_per_image is not None else "")
        + f"; AUPRO: {aupro}."
    )
    page = render_report(title, rows, mean, sections, finite_or_none(settings), lines)
    atomic_write(out / REPORT_FILE, page)
    return document


def load_metrics(output_dir: str | os.PathLike) -> dict[str, Any]:
    """metrics.json of an evaluation folder (nulls where a metric was undefined)."""
    return json.loads((Path(output_dir) / METRICS_FILE).read_text())
