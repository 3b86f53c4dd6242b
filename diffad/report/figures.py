"""The report's plots as PNG bytes: ROC and PRO curves, and the histogram of image scores.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot, no global state, no
display needed.
"""

from __future__ import annotations

import io

import numpy as np

Curve = tuple[np.ndarray, np.ndarray]


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins: matplotlib's automatic layouts cost seconds per figure on a busy CPU.
    figure = Figure(figsize=(width, height), dpi=100)
    figure.subplots_adjust(left=0.7 / width, right=0.98, bottom=0.16, top=0.9, wspace=0.35)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _label(name: str, value: float | None) -> str | None:
    """The legend of a curve, or None when its metric is undefined (the curve is not drawn)."""
    return None if value is None or not np.isfinite(value) else f"{name} = {100 * value:.1f}"


def curves_png(
    image_roc: Curve | None,
    pixel_roc: Curve | None,
    pro: Curve | None,
    image_auroc: float | None = None,
    pixel_auroc: float | None = None,
    aupro: float | None = None,
    max_fpr: float = 0.3,
) -> bytes:
    """Image ROC, pixel ROC and the PRO curve up to `max_fpr`, side by side (a curve left None is
    drawn as an empty, labelled panel)."""
    figure = _new_figure(11.0, 3.5)
    axes = figure.subplots(1, 3)
    panels = [
        (
            axes[0],
            image_roc,
            "image ROC",
            _label("AUROC", image_auroc),
            "false-positive rate",
            "true-positive rate",
            1.0,
        ),
        (
            axes[1],
            pixel_roc,
            "pixel ROC",
            _label("AUROC", pixel_auroc),
            "false-positive rate",
            "true-positive rate",
            1.0,
        ),
        (
            axes[2],
            pro,
            f"PRO curve (FPR ≤ {max_fpr:g})",
            _label("AUPRO", aupro),
            "false-positive rate",
            "per-region overlap",
            max_fpr,
        ),
    ]
    for ax, curve, title, legend, xlabel, ylabel, xmax in panels:
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.set_xlim(0, xmax)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if curve is None:
            ax.text(0.5 * xmax, 0.5, "no masks", ha="center", va="center", color="grey")
            continue
        if legend is None:  # one class only: a curve of nothing against nothing
            ax.text(
                0.5 * xmax,
                0.5,
                "undefined: needs good\nand defective images",
                ha="center",
                va="center",
                color="grey",
            )
            continue
        ax.plot(curve[0], curve[1], color="tab:blue", lw=1.5, label=legend)
        if xmax == 1.0:
            ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.legend(loc="lower right", fontsize=8)
    return _png(figure)


def histogram_png(
    scores: np.ndarray, labels: np.ndarray, threshold: float | None = None, bins: int = 30
) -> bytes:
    """Histograms of the image scores of good and defective images on shared bins; `threshold`
    (e.g. the F1-best one) drawn as a dashed line."""
    figure = _new_figure(5.5, 3.5)
    ax = figure.subplots()
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    edges = np.histogram_bin_edges(scores, bins=bins) if len(scores) else np.linspace(0, 1, bins + 1)
    for value, name, colour in ((0, "good", "tab:green"), (1, "defective", "tab:red")):
        chosen = scores[labels == value]
        ax.hist(chosen, bins=edges, alpha=0.55, color=colour, label=f"{name} ({len(chosen)})")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1, label="F1-best threshold")
    ax.set_title("image scores", fontsize=10)
    ax.set_xlabel("anomaly score", fontsize=9)
    ax.set_ylabel("images", fontsize=9)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return _png(figure)
