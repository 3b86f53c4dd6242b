"""Image thresholds saved with a model, and the verdicts they give: is this part defective?

Both are fitted on held-out good training images, never on test images, when a model is fitted:
- "f1": the F1-best threshold between those good images and one synthetic defect made on each (the
  defects that choose the residual weights, `diffad.training.selection`);
- "fpr": the smallest threshold that flags at most `fpr_target` of those good images (default 0.01).
A score at or above the threshold is defective, as for `diffad.metrics.ranking.f1_best_threshold`.

A pipeline keeps them in its scorer's config (`threshold_f1`, `threshold_fpr`, `threshold_fpr_target`,
`default_threshold`); a reference detector (PaDiM, PatchCore) in its `thresholds` dict.
"""

from __future__ import annotations

import math

import numpy as np

from diffad.errors import ConfigError

KINDS = ("f1", "fpr")
DEFAULT_FPR = 0.01
# The F1 threshold rests on how much the synthetic defects resemble real ones; the FPR one only on
# real good images, so it is the default verdict.
DEFAULT_KIND = "fpr"


def check_fpr(target: float) -> float:
    if not 0.0 <= target < 1.0:
        raise ConfigError(f"--fpr must be in [0, 1) (0.01 flags at most 1% of good parts), got {target}")
    return float(target)


def fpr_threshold(good_scores, target: float = DEFAULT_FPR) -> float:
    """The smallest threshold at which at most `target` of `good_scores` are at or above it: just above
    the (floor(target * N) + 1)-th highest score."""
    check_fpr(target)
    good = np.sort(np.asarray(good_scores, dtype=np.float64).reshape(-1))[::-1]
    if not len(good):
        raise ConfigError("the FPR threshold needs at least one good image")
    allowed = math.floor(target * len(good) + 1e-9)  # false positives allowed among these images
    # The next float32 above that score: scores are float32, and a float64 threshold just above one
    # would round back onto it when compared with float32 scores.
    up = np.float32(np.inf)
    threshold = np.nextafter(np.float32(good[allowed]), up)
    while float(threshold) <= good[allowed]:
        threshold = np.nextafter(threshold, up)
    return float(threshold)


def fit_thresholds(good_scores, defect_scores, fpr: float = DEFAULT_FPR) -> dict:
    """Both thresholds from the scores of held-out good images and of defects made on them."""
    from diffad.metrics.ranking import f1_best_threshold

    f1 = f1_best_threshold(np.sort(np.asarray(good_scores)), np.sort(np.asarray(defect_scores)))
    return {
        "f1": None if math.isnan(f1) else float(f1),
        "fpr": fpr_threshold(good_scores, fpr),
        "fpr_target": float(fpr),
    }


def scorer_settings(fitted: dict) -> dict:
    """`fit_thresholds`' result as the scorer's config fields."""
    return {
        "threshold_f1": fitted["f1"],
        "threshold_fpr": fitted["fpr"],
        "threshold_fpr_target": fitted["fpr_target"],
    }


def saved_thresholds(detector) -> dict:
    """{"f1": value or None, "fpr": value or None, "fpr_target": ..., "default": kind} of a pipeline
    (its scorer's config), a reference detector (its `thresholds`) or a scorer config itself."""
    scorer = getattr(detector, "scorer", detector)
    if hasattr(scorer, "active_config"):  # a pipeline's scorer: the active category's own thresholds
        config = scorer.active_config()
    else:
        config = getattr(detector, "config", detector)
    if "threshold_f1" in config or "threshold_fpr" in config:
        get = config.get
        return {
            "f1": get("threshold_f1"),
            "fpr": get("threshold_fpr"),
            "fpr_target": get("threshold_fpr_target", DEFAULT_FPR),
            "default": get("default_threshold", DEFAULT_KIND),
        }
    saved = dict(getattr(detector, "thresholds", None) or {})
    return {
        "f1": saved.get("f1"),
        "fpr": saved.get("fpr"),
        "fpr_target": saved.get("fpr_target", DEFAULT_FPR),
        "default": saved.get("default", DEFAULT_KIND),
    }


def resolve(
    detector, choice: str | float | None = None, where: str = "the model"
) -> tuple[str, float] | None:
    """(name, value) of the threshold to judge by: `choice` is "f1", "fpr", a number, or None for the
    model's default (None when the model saved none). A named threshold the model lacks is an error."""
    saved = saved_thresholds(detector)
    if choice is None:
        value = saved.get(saved["default"])
        return None if value is None else (saved["default"], float(value))
    if isinstance(choice, str) and choice in KINDS:
        if saved[choice] is None:
            raise ConfigError(
                f"{where} has no saved {choice} threshold (fit it again with diffad fit, which saves both, "
                "or give --threshold a number)"
            )
        return choice, float(saved[choice])
    try:
        value = float(choice)
    except (TypeError, ValueError):
        raise ConfigError(f"--threshold must be f1, fpr or a number, got {choice!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"--threshold must be a finite number, got {choice!r}")
    return "value", value


def verdicts(scores, threshold: float | None):
    """Whether each score is at or above `threshold` (a bool array or tensor like `scores`); None
    without a threshold."""
    return None if threshold is None else scores >= threshold


def pipeline_verdicts(scorer, scores, output_type: str):
    """The verdicts of the scorer's default threshold for a pipeline's (N,) score tensor, in the
    output's type (a tensor for "pt", else a numpy array); None when it saved no threshold."""
    chosen = resolve(scorer)
    if chosen is None:
        return None
    flags = verdicts(scores, chosen[1])
    return flags if output_type == "pt" else flags.numpy()


def rates_at(scores, labels, threshold: float) -> dict:
    """False-positive rate and recall of `score >= threshold` (None where a class is missing)."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    flagged = scores >= threshold
    good, bad = labels == 0, labels == 1
    return {
        "threshold": float(threshold),
        "fpr": float(flagged[good].mean()) if good.any() else None,
        "recall": float(flagged[bad].mean()) if bad.any() else None,
        "false_positives": int(flagged[good].sum()),
        "good": int(good.sum()),
        "true_positives": int(flagged[bad].sum()),
        "defective": int(bad.sum()),
    }
