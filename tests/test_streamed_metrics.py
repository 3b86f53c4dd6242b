"""Streamed pixel metrics (histograms) against scikit-learn, the plain AUPRO loop and the exact AUPRO."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score
from test_metrics import ader_aupro, random_set, reference_aupro, sklearn_f1_max
from test_report import synthetic

from diffad.errors import ConfigError
from diffad.metrics import PooledPixels, compute_metrics
from diffad.metrics.streamed import BINS, PixelHistogram
from diffad.report.collect import Collector
from diffad.report.evaluate import memory_bytes
from diffad.report.results import select_cases, summarize

TOLERANCE = 1e-3  # the stated error of the streamed figures


def histogram(maps, masks, bins=BINS):
    h = PixelHistogram(bins)
    for amap, mask in zip(maps, masks):
        h.add(amap, mask)
    return h


def tiny_regions(seed, n=24, size=32):
    """Maps with many one- and two-pixel defect regions, weakly raised: AUPRO weighs each equally."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(n, size, size)).astype(np.float32)
    masks = np.zeros((n, size, size), dtype=np.uint8)
    for i in range(n // 2, n):
        for _ in range(rng.integers(3, 9)):
            y, x = rng.integers(0, size - 2, 2)
            masks[i, y, x : x + rng.integers(1, 3)] = 1
    return maps + 0.8 * masks * rng.random(maps.shape).astype(np.float32), masks


def assert_close_to_references(h, maps, masks):
    """Within the tolerance of scikit-learn and of the exact AUPRO (checked against a plain loop)."""
    gt, pr = masks.ravel(), maps.ravel()
    assert h.auroc() == pytest.approx(roc_auc_score(gt, pr), abs=TOLERANCE)
    assert abs(h.auroc() - roc_auc_score(gt, pr)) <= h.auroc_bound() + 1e-12
    assert h.average_precision() == pytest.approx(average_precision_score(gt, pr), abs=TOLERANCE)
    assert h.f1_max() == pytest.approx(sklearn_f1_max(gt, pr), abs=TOLERANCE)
    exact = PooledPixels.from_maps(list(maps), list(masks))
    assert h.aupro() == pytest.approx(exact.aupro(), abs=TOLERANCE)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("ties", [False, True])
def test_random_maps_within_tolerance_of_sklearn_and_the_aupro_loop(seed, ties):
    maps, masks, _, _ = random_set(seed, n=12, size=32, ties=ties)
    h = histogram(maps, masks)
    assert_close_to_references(h, maps, masks)
    small = (maps[:, :16, :16], masks[:, :16, :16])  # the plain threshold loop is slow on more pixels
    assert histogram(*small).aupro() == pytest.approx(reference_aupro(*small), abs=TOLERANCE)
    assert h.aupro_ader() == pytest.approx(ader_aupro(masks, maps), abs=TOLERANCE)
    # Coarse bins still keep AUROC within its own stated bound.
    coarse = histogram(maps, masks, bins=64)
    assert abs(coarse.auroc() - roc_auc_score(masks.ravel(), maps.ravel())) <= coarse.auroc_bound() + 1e-12
    if not ties:  # (scores that are equal are tied in the exact figure too: no error, but in the bound)
        assert coarse.auroc_bound() > 1e-3 > h.auroc_bound()


@pytest.mark.parametrize("seed", [2, 3, 6])
def test_tiny_regions_within_tolerance(seed):
    maps, masks = tiny_regions(seed)
    h = histogram(maps, masks)
    assert_close_to_references(h, maps, masks)
    exact = PooledPixels.from_maps(list(maps), list(masks))
    assert h.regions == len(exact.region_area)


def test_one_extreme_pixel_does_not_merge_the_rest_into_one_bin():
    maps, masks, _, _ = random_set(4, n=12, size=32)
    maps[0, 0, 0] = 1e7
    maps[1, 0, 0] = -1e5
    assert_close_to_references(histogram(maps, masks), maps, masks)


def test_shards_in_any_order_merge_into_the_same_histogram():
    maps, masks, _, _ = random_set(5, n=16)
    maps[3] *= 50  # a later map widens the range: the bins coarsen
    whole = histogram(maps, masks)
    order = np.random.default_rng(0).permutation(len(maps))
    shards = [histogram(maps[order[:5]], masks[order[:5]]), histogram(maps[order[5:]], masks[order[5:]])]
    for merged in (PixelHistogram.merged(shards), PixelHistogram.merged(shards[::-1])):
        assert (merged.level, merged.offset, merged.regions) == (whole.level, whole.offset, whole.regions)
        np.testing.assert_array_equal(merged.normal, whole.normal)
        np.testing.assert_array_equal(merged.defect, whole.defect)
        np.testing.assert_allclose(merged.weight, whole.weight, rtol=1e-12)
        assert merged.aupro() == pytest.approx(whole.aupro(), abs=1e-12)


def test_constant_maps_and_missing_classes():
    masks = np.zeros((2, 8, 8), dtype=np.uint8)
    masks[1, 2:4, 2:4] = 1
    flat = np.ones((2, 8, 8), dtype=np.float32)
    h = histogram(flat, masks)
    # Every pixel tied: the PRO curve is the diagonal, as the exact AUPRO has it.
    exact = PooledPixels.from_maps(list(flat), list(masks))
    assert h.auroc() == exact.auroc() == 0.5 and h.aupro() == pytest.approx(exact.aupro()) == 0.15
    only_normal = histogram(np.random.default_rng(0).random((2, 8, 8)), np.zeros((2, 8, 8)))
    assert np.isnan(only_normal.auroc()) and np.isnan(only_normal.aupro())


def streamed(results, num_cases=2):
    collector = Collector(results.category, num_cases, keep_maps=False, has_masks=True)
    for i in range(len(results.scores)):
        sample = type("S", (), dict(image_path=results.paths[i], label=results.labels[i]))()
        sample.defect_type = results.defect_types[i]
        collector.add(i, sample, results.scores[i], results.maps[i], results.masks[i], results.inputs[i])
        collector.prune()
    return collector


def test_a_streamed_category_summarises_as_the_exact_one_and_keeps_its_cases():
    exact = synthetic("bottle", 0, n=24)
    collector = streamed(exact)
    assert len(collector.maps) <= 8  # the 2 highest and lowest of each class, not all 24
    got = collector.results()
    a, b = summarize(exact), summarize(got)
    assert b.pixel_metrics == "streamed" and a.pixel_metrics == "exact"
    for key in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "image_auroc"):
        assert b.metrics[key] == pytest.approx(a.metrics[key], abs=TOLERANCE)
        for defect in a.per_defect:
            assert b.per_defect[defect][key] == pytest.approx(a.per_defect[defect][key], abs=TOLERANCE)
    assert select_cases(got, b.threshold, 2) == select_cases(exact, a.threshold, 2)
    want = compute_metrics(exact.scores, exact.labels, exact.maps, exact.masks)
    assert b.metrics["aupro"] == pytest.approx(want["aupro"], abs=TOLERANCE)


def test_metrics_memory_sizes():
    assert memory_bytes("2GB") == 2 * 2**30 and memory_bytes("1.5GiB") == int(1.5 * 2**30)
    assert memory_bytes("500mb") == 500 * 2**20 and memory_bytes(0) == 0 and memory_bytes("4096") == 4096
    for bad in ("lots", "-1GB", "nanGB"):
        with pytest.raises(ConfigError, match="--metrics_memory"):
            memory_bytes(bad)
