"""Choose the scorer's residual weights and deviation on synthetic defects, never on test images.

After calibration, `select_settings` makes one synthetic defect (the generator's "mix": DRAEM
textures, smooth and flat fills, CutPaste, scratches, spots, cracks) on each of a few held-out good
training images, that neither the calibration statistics nor the feature Gaussians saw. It computes
every candidate residual once on the good images and on their defective copies, then tries each
setting of a small grid (weights 0, 0.5 or 1 per reconstruction residual; deviation higher, lower or
both; the fitted feature Gaussians' and feature head's weights 0 or 1) and keeps the one with the best mean of image
AUROC, pixel AUROC and AUPRO (the simplest within 0.01 of it). Every setting's figures are kept in the record (selection.json), so the
best setting of any family (say, reconstruction residuals alone) is known without the test set.

Which residual helps depends on the product: a defect the model does not reproduce leaves a higher
residual, while on random textures (DAGM) a smooth defect is reproduced better than the good texture
and leaves a lower one. A fixed choice is right for one of them and wrong for the other.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F

from diffad.metrics import ranking
from diffad.metrics.pixels import PooledPixels
from diffad.scoring import thresholds
from diffad.scoring.scorer import DEVIATIONS, DISTANCES, RESIDUALS

WEIGHTS = (0.0, 0.5, 1.0)
EVAL_SIZE = 64  # maps and masks are compared at this side: the grid's metrics stay cheap
SYNTHESIS_METHOD = "mix"
TOLERANCE = 0.01  # objectives closer than this count as equal (the simpler setting is kept)


def candidates(pipe) -> list[str]:
    """The residuals to choose among: those of the reconstruction with an autoencoder or in pixel space,
    the latent-space ones with a first stage that has no decoder (a feature encoder)."""
    decoder = getattr(pipe, "has_decoder", True)
    names = pipe.scorer.available_residuals(
        latent=pipe.vae is not None, feature=pipe.feature_extractor is not None, decoder=decoder
    )
    return [n for n in names if n in RESIDUALS] if decoder else names


def grid(names: list[str], fitted: list[str] = (), weights: tuple[float, ...] = WEIGHTS) -> list[dict]:
    """Every setting to try: a weight per reconstruction residual, a deviation (once some such weight is
    above 0), and each fitted map's weight (`fitted`: feature Gaussians, feature head), 0 or 1 (1 fixes
    the scale the others are added to). Settings with every weight 0 detect nothing and are left out."""
    settings = []
    for anchors in itertools.product((0.0, 1.0), repeat=len(fitted)):
        for values in itertools.product(weights, repeat=len(names)):
            chosen = {**dict(zip(names, values)), **dict(zip(fitted, anchors))}
            if not any(values):
                if any(anchors):
                    settings.append({"weights": chosen, "deviation": "higher"})
                continue
            # Distances from normal ignore the deviation: one setting, not three alike.
            flips = any(v and n not in DISTANCES for n, v in zip(names, values))
            settings.extend(
                {"weights": chosen, "deviation": d} for d in (DEVIATIONS if flips else ("higher",))
            )
    return settings


def best(trials: list[dict], where=None, tolerance: float = TOLERANCE) -> dict | None:
    """Among the trials `where(weights)` accepts, the one with the fewest residuals whose objective is
    within `tolerance` of the best (then the best objective): a few dozen synthetic defects cannot
    tell apart settings closer than that, and each extra residual costs time and may fit them only."""
    kept = [t for t in trials if where is None or where(t["weights"])]
    if not kept:
        return None
    top = max(t["objective"] for t in kept)
    near = [t for t in kept if t["objective"] >= top - tolerance]
    return min(near, key=lambda t: (sum(w > 0 for w in t["weights"].values()), -t["objective"]))


def make_defects(images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One seeded synthetic defect per image: (defective images, masks (N, H, W) in {0, 1})."""
    from diffad.synthesis.methods import synthesize

    out, masks = [], []
    for i, image in enumerate(images):
        defect = synthesize(image, SYNTHESIS_METHOD, torch.Generator().manual_seed(seed * 100003 + i))
        out.append(defect.image)
        masks.append((defect.mask.reshape(image.shape[-2:]) > 0.5).float())
    return torch.stack(out), torch.stack(masks)


def _objective(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray) -> dict:
    neg, pos = np.sort(scores[labels == 0]), np.sort(scores[labels == 1])
    pixels = PooledPixels.from_maps(list(maps), list(masks))
    result = {
        "image_auroc": ranking.auroc(neg, pos),
        "pixel_auroc": pixels.auroc(),
        "aupro": pixels.aupro(),
    }
    # An undefined figure (e.g. AUPRO of a constant map) counts as 0: such a setting finds nothing.
    result["objective"] = float(np.mean(np.nan_to_num(list(result.values()), nan=0.0)))
    return result


@torch.no_grad()
def select_settings(
    pipe, good_images: torch.Tensor, seed: int, batch_size: int = 8, fpr: float = thresholds.DEFAULT_FPR
) -> dict:
    """Try the grid on `good_images` and synthetic defects made on them; set the best in the scorer,
    with the image thresholds of that setting on the same images (`diffad.scoring.thresholds`; `fpr`:
    the target false-positive rate on the good ones).

    The scorer must be calibrated with a weight above 0 for every candidate residual (their statistics
    are then known). Returns a JSON-able record: the chosen setting, every setting's metrics, and the
    thresholds with the scores they were set on."""
    scorer = pipe.scorer
    defective, masks = make_defects(good_images, seed)
    images = torch.cat([good_images, defective])
    labels = np.r_[np.zeros(len(good_images)), np.ones(len(defective))]
    generator = torch.Generator().manual_seed(seed)
    residuals = pipe.residual_maps(list(images), generator=generator, batch_size=batch_size)
    side = min(EVAL_SIZE, next(iter(residuals.values())).shape[-1])
    small_masks = F.adaptive_max_pool2d(torch.cat([torch.zeros_like(masks), masks])[:, None], side)
    small_masks = small_masks[:, 0].numpy()
    trials = []
    names = candidates(pipe)
    # Five latent-space residuals at three weights are 729 settings, each scored on every map: minutes
    # of a fit's calibration on a CPU. On or off keeps it to 79.
    weights = WEIGHTS if len(names) <= 4 else (0.0, 1.0)
    for setting in grid(names, scorer.fitted_maps(), weights):
        maps = scorer.combine(residuals, weights=setting["weights"], deviation=setting["deviation"])
        scores = scorer.score(maps).numpy()
        small = F.adaptive_avg_pool2d(maps[:, None], side)[:, 0].numpy()
        trials.append({**setting, **_objective(scores, labels, small, small_masks)})
    chosen = best(trials)
    scorer.update_settings(
        **{f"{name}_weight": weight for name, weight in chosen["weights"].items()},
        deviation=chosen["deviation"],
    )
    maps = scorer.combine(residuals, weights=chosen["weights"], deviation=chosen["deviation"])
    scores = scorer.score(maps).numpy()  # the chosen setting's, as in its trial
    good_scores, defect_scores = scores[labels == 0], scores[labels == 1]
    fitted = thresholds.fit_thresholds(good_scores, defect_scores, fpr)
    scorer.update_settings(**thresholds.scorer_settings(fitted))
    return {
        "method": SYNTHESIS_METHOD,
        "images": len(good_images),
        "chosen": {
            k: chosen[k] for k in ("weights", "deviation", "image_auroc", "pixel_auroc", "aupro", "objective")
        },
        "trials": trials,
        "thresholds": {
            **fitted,
            "default": scorer.config.default_threshold,
            "category": scorer.active_category,
            "good_scores": good_scores.tolist(),
            "defect_scores": defect_scores.tolist(),
        },
    }
