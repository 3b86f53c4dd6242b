"""Metrics against scikit-learn, a plain threshold-loop AUPRO, ADer's own loop, and hand-worked masks."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

from diffad.errors import ConfigError, DataError
from diffad.metrics import METRIC_KEYS, MetricWarning, compute_metrics


def sklearn_f1_max(labels, scores):
    precision, recall, _ = precision_recall_curve(labels, scores)
    with np.errstate(invalid="ignore"):
        f1 = 2 * precision * recall / (precision + recall)
    return np.max(f1[np.isfinite(f1)])


def random_set(seed, n=12, size=24, ties=False):
    """Maps with blob-shaped masks on the second half of the images (one mask empty), signal on defects."""
    rng = np.random.default_rng(seed)
    maps = rng.random((n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2, n - 1):
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, size - 6, 2)
            h, w = rng.integers(1, 7, 2)
            masks[i, y : y + h, x : x + w] = 1
    maps = maps + 0.4 * masks * rng.random((n, size, size))
    if ties:
        maps = np.round(maps, 1)
    labels = np.r_[np.zeros(n // 2), np.ones(n - n // 2)].astype(int)
    return maps.astype(np.float32), masks, maps.max(axis=(1, 2)), labels


def reference_aupro(maps, masks, max_fpr=0.3):
    """Plain loop over every distinct score as threshold; regions from scipy (8-connectivity)."""
    normal = masks == 0
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        flagged = maps >= t
        overlaps = []
        for lab, flag in zip(labelled, flagged):
            for r in range(1, lab.max() + 1):
                region = lab == r
                overlaps.append((flag & region).sum() / region.sum())
        fprs.append((flagged & normal).sum() / normal.sum())
        pros.append(np.mean(overlaps))
    fprs, pros = np.array(fprs), np.array(pros)
    area = 0.0
    for i in range(1, len(fprs)):
        f0, f1, p0, p1 = fprs[i - 1], fprs[i], pros[i - 1], pros[i]
        if f1 <= max_fpr:
            area += (f1 - f0) * (p0 + p1) / 2
        else:
            p_cut = p0 + (p1 - p0) * (max_fpr - f0) / (f1 - f0)
            area += (max_fpr - f0) * (p0 + p_cut) / 2
            break
    return area / max_fpr


def ader_aupro(masks, amaps, max_step=200, expect_fpr=0.3):
    """ADer's cal_pro_score (zhangzjn/ADer util/metric.py), its serial branch, transcribed."""
    min_th, max_th = amaps.min(), amaps.max()
    delta = (max_th - min_th) / max_step
    pros, fprs = [], []
    binary_amaps = np.zeros_like(amaps, dtype=np.bool_)
    for th in np.arange(min_th, max_th, delta):
        binary_amaps[amaps <= th], binary_amaps[amaps > th] = 0, 1
        pro = []
        for binary_amap, mask in zip(binary_amaps, masks):
            for region in measure.regionprops(measure.label(mask)):
                tp_pixels = binary_amap[region.coords[:, 0], region.coords[:, 1]].sum()
                pro.append(tp_pixels / region.area)
        inverse_masks = 1 - masks
        fp_pixels = np.logical_and(inverse_masks, binary_amaps).sum()
        pros.append(np.array(pro).mean())
        fprs.append(fp_pixels / inverse_masks.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    idxes = fprs < expect_fpr
    fprs = fprs[idxes]
    fprs = (fprs - fprs.min()) / (fprs.max() - fprs.min())
    return auc(fprs, pros[idxes])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_image_and_pixel_metrics_match_sklearn(seed, ties):
    maps, masks, scores, labels = random_set(seed, ties=ties)
    scores = scores + np.random.default_rng(seed).normal(0, 0.2, len(scores))
    if ties:
        scores = np.round(scores, 1)
    got = compute_metrics(scores, labels, maps, masks)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["image_ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["image_f1_max"] == pytest.approx(sklearn_f1_max(labels, scores), abs=1e-12)
    gt, pr = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(gt, pr), abs=1e-10)
    assert got["pixel_ap"] == pytest.approx(average_precision_score(gt, pr), abs=1e-10)
    assert got["pixel_f1_max"] == pytest.approx(sklearn_f1_max(gt, pr), abs=1e-10)
    assert got["aupro"] == pytest.approx(reference_aupro(maps, masks), abs=1e-10)
    assert got["mad_of"] == list(METRIC_KEYS[:-1])
    assert got["mad"] == pytest.approx(np.mean([got[k] for k in METRIC_KEYS[:-1]]))


@pytest.mark.parametrize("seed", [3, 4])
def test_ader_aupro_matches_aders_loop(seed):
    maps, masks, scores, labels = random_set(seed, n=8, size=20)
    got = compute_metrics(scores, labels, maps, masks, aupro="ader")["aupro"]
    assert got == pytest.approx(ader_aupro(masks, maps), abs=1e-10)


@pytest.mark.filterwarnings("ignore::diffad.metrics.MetricWarning")  # one image: no image-level metrics
def test_aupro_hand_worked_with_ties_and_interpolation():
    # One row: region A = pixels 0,1 (scores 0.9, 0.5), region B = pixel 3 (0.7); ten normal pixels
    # 0.8, 0.6, 0.5, 0.5, six at 0.1. Curve (FPR, PRO): (0,.25) -> (.1,.25) -> (.1,.75) -> (.2,.75),
    # then at 0.5 the FPR jumps .2 -> .4 while A completes (PRO .75 -> 1), so at FPR .3 the PRO is .875.
    # Area = .1*.25 + .1*.75 + .1*(.75+.875)/2 = .18125; divided by .3.
    row = np.array([[0.9, 0.5, 0.8, 0.7, 0.6, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    mask = np.array([[1, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    got = compute_metrics([1.0], [1], row[None], mask[None])
    assert got["aupro"] == pytest.approx(0.18125 / 0.3, abs=1e-12)


@pytest.mark.filterwarnings("ignore::diffad.metrics.MetricWarning")
def test_aupro_regions_are_8_connected():
    # (0,0),(0,1) and the diagonal (1,2) form ONE region of area 3 (4-connectivity would make two).
    # Region scores .9 at (1,2), .2 elsewhere; 13 normal pixels: one .8, twelve .1.
    # Curve: PRO 1/3 until FPR 1/13, then 1 -> area = (1/13)/3 + (.3 - 1/13).
    amap = np.full((4, 4), 0.1)
    mask = np.zeros((4, 4), dtype=int)
    mask[0, 0] = mask[0, 1] = mask[1, 2] = 1
    amap[0, 0] = amap[0, 1] = 0.2
    amap[1, 2] = 0.9
    amap[3, 3] = 0.8
    got = compute_metrics([1.0], [1], amap[None], mask[None])
    assert got["aupro"] == pytest.approx((0.3 - 2 / 39) / 0.3, abs=1e-12)


def test_torch_inputs_and_channel_dim_equal_numpy():
    maps, masks, scores, labels = random_set(5)
    want = compute_metrics(scores, labels, maps, masks)
    got = compute_metrics(
        torch.from_numpy(scores),
        torch.from_numpy(labels),
        torch.from_numpy(maps)[:, None],
        torch.from_numpy(masks),
    )
    assert got == want


def test_images_of_different_sizes_as_lists():
    maps, masks, scores, labels = random_set(6, n=4)
    small = [m[:16, :20] for m in maps]
    small_masks = [m[:16, :20] for m in masks]
    got = compute_metrics(scores, labels, [maps[0], *small[1:]], [masks[0], *small_masks[1:]])
    pooled = np.concatenate([maps[0].ravel(), *(m.ravel() for m in small[1:])])
    gt = np.concatenate([masks[0].ravel(), *(m.ravel() for m in small_masks[1:])])
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(gt, pooled), abs=1e-12)


def test_one_class_gives_nan_and_warning_not_a_crash():
    maps, masks, scores, labels = random_set(7)
    with pytest.warns(MetricWarning, match="no defective") as caught:
        got = compute_metrics(scores[:6], labels[:6], maps[:6], masks[:6])
    assert len(caught) == 2  # once for the image metrics, once for the pixel ones
    for key in ("image_auroc", "image_ap", "image_f1_max", "pixel_auroc", "aupro"):
        assert np.isnan(got[key])
    assert np.isnan(got["mad"]) and got["mad_of"] == []


def test_defective_images_with_empty_masks_still_count():
    maps, masks, scores, labels = random_set(8)
    masks[-3:] = 0  # defect folders of real datasets hold some empty masks
    got = compute_metrics(scores, labels, maps, masks)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got["image_auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_without_maps_pixel_keys_are_none_and_mad_says_so():
    _, _, scores, labels = random_set(9)
    got = compute_metrics(scores, labels)
    assert all(got[k] is None for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"))
    assert got["mad_of"] == ["image_auroc", "image_ap", "image_f1_max"]
    assert got["mad"] == pytest.approx(np.mean([got["image_auroc"], got["image_ap"], got["image_f1_max"]]))


def test_bad_inputs_raise_clear_errors():
    maps, masks, scores, labels = random_set(10, n=4)
    bad = maps.copy()
    bad[2, 3, 3] = np.nan
    with pytest.raises(DataError, match="anomaly map 2 holds 1 NaN"):
        compute_metrics(scores, labels, bad, masks)
    with pytest.raises(DataError, match=r"anomaly map 0 has shape \(24, 20\) but its mask \(24, 24\)"):
        compute_metrics(scores, labels, maps[:, :, :20], masks)
    with pytest.raises(DataError, match="3 image scores but 4 labels"):
        compute_metrics(scores[:3], labels)
    with pytest.raises(DataError, match="0 \\(good\\) or 1"):
        compute_metrics(scores, [0, 1, 2, 1])
    with pytest.raises(ConfigError, match="both anomaly_maps and masks"):
        compute_metrics(scores, labels, maps)
    with pytest.raises(ConfigError, match="aupro must be one of"):
        compute_metrics(scores, labels, maps, masks, aupro="fast")


def test_drawn_curves_integrate_to_the_metrics():
    from diffad.metrics import PooledPixels

    maps, masks, _, _ = random_set(11, n=6, size=12, ties=True)
    pixels = PooledPixels.from_maps(list(maps), list(masks))
    fpr, pro = pixels.pro_points()
    assert fpr[-1] == pytest.approx(0.3) and np.all(np.diff(fpr) >= 0)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(pixels.aupro(), abs=1e-12)
    fpr, tpr = pixels.roc_points(max_points=10_000)  # few enough scores: every threshold is kept
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
