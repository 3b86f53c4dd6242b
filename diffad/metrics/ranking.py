"""AUROC, average precision and F1-max of a two-class ranking, from sorted scores.

Every function takes the scores of the negatives (normal images or pixels) and of the positives
(defective ones), each sorted ascending. With the negatives sorted once, each metric is a few
`searchsorted` calls over the positives — millions of pooled pixels cost one sort, not a
Python loop over thresholds. Ties count as in scikit-learn: a threshold `t` flags every score `>= t`. With one class
missing the metrics are undefined and NaN; callers warn with `both_classes`.
"""

from __future__ import annotations

import warnings

import numpy as np


class MetricWarning(UserWarning):
    """A metric is undefined for the data given (for instance only one class) and is NaN."""


def both_classes(neg: int, pos: int, what: str) -> bool:
    """True when both classes are present (`neg`, `pos`: their counts); else warns once that `what`
    is undefined (NaN)."""
    if neg and pos:
        return True
    missing = "defective" if not pos else "normal"
    warnings.warn(f"{what}: no {missing} samples, so they are undefined (NaN)", MetricWarning, stacklevel=3)
    return False


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a positive outscores a negative, ties counting half."""
    if not (len(neg) and len(pos)):
        return float("nan")
    below = np.searchsorted(neg, pos, side="left").astype(np.float64)
    below_or_tied = np.searchsorted(neg, pos, side="right").astype(np.float64)
    return float((below.sum() + 0.5 * (below_or_tied - below).sum()) / (len(neg) * len(pos)))


def _positive_thresholds(neg: np.ndarray, pos: np.ndarray):
    """At each distinct positive score v, descending: (#positives >= v, #negatives >= v, #positives == v)."""
    # Recall moves only at positive scores; between them a lower threshold only adds false positives,
    # so these thresholds carry every step of AP and the best F1.
    values, first = np.unique(pos, return_index=True)
    values, first = values[::-1], first[::-1]
    tp = (len(pos) - first).astype(np.float64)
    fp = (len(neg) - np.searchsorted(neg, values, side="left")).astype(np.float64)
    new_tp = np.diff(tp, prepend=0.0)
    return tp, fp, new_tp


def average_precision(neg: np.ndarray, pos: np.ndarray) -> float:
    """Average precision as scikit-learn defines it: sum of precision times the rise in recall."""
    if not (len(neg) and len(pos)):
        return float("nan")
    tp, fp, new_tp = _positive_thresholds(neg, pos)
    return float(np.sum(new_tp / len(pos) * tp / (tp + fp)))


def f1_max(neg: np.ndarray, pos: np.ndarray) -> float:
    """The best F1 over every threshold of the precision-recall curve."""
    if not (len(neg) and len(pos)):
        return float("nan")
    tp, fp, _ = _positive_thresholds(neg, pos)
    # F1 = 2PR / (P + R) = 2 tp / (tp + fp + #positives).
    return float(np.max(2.0 * tp / (tp + fp + len(pos))))


def roc_points(neg: np.ndarray, pos: np.ndarray, max_points: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) for drawing: exact for a few thousand scores, a quantile sample of thresholds beyond."""
    if not (len(neg) and len(pos)):
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    thresholds = np.unique(np.concatenate([_spread(neg, max_points), _spread(pos, max_points)]))[::-1]
    fpr = (len(neg) - np.searchsorted(neg, thresholds, side="left")) / len(neg)
    tpr = (len(pos) - np.searchsorted(pos, thresholds, side="left")) / len(pos)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], tpr, [1.0]])


def _spread(sorted_values: np.ndarray, count: int) -> np.ndarray:
    if len(sorted_values) <= count:
        return sorted_values
    return sorted_values[np.linspace(0, len(sorted_values) - 1, count).round().astype(np.int64)]


def f1_best_threshold(neg: np.ndarray, pos: np.ndarray) -> float:
    """The score threshold (flag >= it) at which F1 is highest; NaN when a class is missing."""
    if not (len(neg) and len(pos)):
        return float("nan")
    tp, fp, _ = _positive_thresholds(neg, pos)
    return float(np.unique(pos)[::-1][np.argmax(2.0 * tp / (tp + fp + len(pos)))])
