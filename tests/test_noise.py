"""diffad.noise against the opensimplex package, and the statistics of batched simplex noise."""

import numpy as np
import opensimplex
import pytest
import torch

from diffad.errors import ConfigError
from diffad.noise import opensimplex2, opensimplex3, sample_noise, simplex_noise
from diffad.noise.opensimplex import GRADIENTS2, lattice2, permutation
from diffad.noise.simplex import _window

SEEDS = [0, 3, 1234, -77, 2**40 + 5]


def _points(seed, n, dims):
    rng = np.random.default_rng(seed)
    # Wide enough to wrap the 256-entry hash, with negative coordinates and small fractions.
    return rng.uniform(-300, 300, (n, dims)) * rng.choice([1.0, 0.01], (n, 1))


@pytest.mark.parametrize("seed", SEEDS)
def test_opensimplex2_equals_reference(seed):
    points = _points(abs(seed) % 1000, 400, 2)
    opensimplex.seed(seed)
    expected = np.array([opensimplex.noise2(x, y) for x, y in points])
    got = opensimplex2(torch.from_numpy(points[:, 0]), torch.from_numpy(points[:, 1]), seed)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_opensimplex3_equals_reference(seed):
    points = _points(abs(seed) % 1000 + 1, 600, 3)
    opensimplex.seed(seed)
    expected = np.array([opensimplex.noise3(x, y, z) for x, y, z in points])
    t = torch.from_numpy(points)
    got = opensimplex3(t[:, 0], t[:, 1], t[:, 2], seed)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6, rtol=0)


def test_opensimplex_on_lattice_ties_like_the_reference():
    # Quarter-step grids hit the reference's ties (xins == yins, in_sum == 1) that random points miss.
    opensimplex.seed(21)
    steps = np.arange(-12, 12) / 4
    got2 = opensimplex2(torch.tensor(steps)[None, :], torch.tensor(steps)[:, None], 21)
    np.testing.assert_allclose(got2.numpy(), opensimplex.noise2array(steps, steps), atol=1e-6)
    steps3 = np.arange(-4, 4) / 4
    t = torch.tensor(steps3)
    got3 = opensimplex3(t[None, None, :], t[None, :, None], t[:, None, None], 21)
    np.testing.assert_allclose(got3.numpy(), opensimplex.noise3array(steps3, steps3, steps3), atol=1e-6)


def test_opensimplex_broadcasts_grids_like_noise_array():
    opensimplex.seed(11)
    xs, ys, zs = np.linspace(0, 3, 7), np.linspace(-2, 1, 5), np.array([0.5, 9.25])
    got2 = opensimplex2(torch.tensor(xs)[None, :], torch.tensor(ys)[:, None], 11)
    np.testing.assert_allclose(got2.numpy(), opensimplex.noise2array(xs, ys), atol=1e-6)
    got3 = opensimplex3(
        torch.tensor(xs)[None, None, :], torch.tensor(ys)[None, :, None], torch.tensor(zs)[:, None, None], 11
    )
    np.testing.assert_allclose(got3.numpy(), opensimplex.noise3array(xs, ys, zs), atol=1e-6)


@pytest.mark.parametrize(
    ("height", "width", "cells", "offset"), [(8, 8, 4.0, 0.0), (16, 48, 128.0, 0.999), (37, 5, 20.0, 0.5)]
)
def test_simplex_noise_windows_hold_every_vertex(height, width, cells, offset):
    # simplex_noise reads vertex gradients from a window per field; filled from opensimplex's hash,
    # the windowed lattice must equal opensimplex itself (a vertex outside its window would not).
    seed, scale = 9, cells / max(height, width)
    x0, rows = _window((width - 1) * scale, (height - 1) * scale)
    y0, cols = _window((height - 1) * scale, (width - 1) * scale)
    perm = permutation(seed)
    i = torch.arange(x0, x0 + rows)[:, None] & 0xFF
    j = torch.arange(y0, y0 + cols)[None, :] & 0xFF
    grads = torch.tensor(GRADIENTS2, dtype=torch.float64)[(perm[(perm[i] + j) & 0xFF] & 0x0E) >> 1]
    x = torch.arange(width, dtype=torch.float64).view(1, width) * scale + offset
    y = torch.arange(height, dtype=torch.float64).view(height, 1) * scale + offset
    got = lattice2(x, y, grads[..., 0].flatten(), grads[..., 1].flatten(), -(x0 * cols + y0), cols)
    torch.testing.assert_close(got, opensimplex2(x, y, seed), atol=1e-9, rtol=0)


def test_simplex_noise_does_not_depend_on_how_fields_are_chunked(monkeypatch):
    shape, seed = (3, 5, 8, 8), 12
    whole = simplex_noise(shape, generator=torch.Generator().manual_seed(seed))
    # Tiny limits force one field per lattice call (the key limit guards float32 keys on small images).
    monkeypatch.setattr("diffad.noise.simplex._CHUNK_POINTS", 64)
    monkeypatch.setattr("diffad.noise.simplex._MAX_KEYS", 40_000)
    torch.testing.assert_close(simplex_noise(shape, generator=torch.Generator().manual_seed(seed)), whole)
    with pytest.raises(ConfigError, match="too fine"):
        simplex_noise((1, 1, 8, 8), octaves=2, frequency=1000)


def test_frequency_counts_cells_per_image_side():
    def neighbour_correlation(noise):
        return float(torch.corrcoef(torch.stack([noise[..., :-1].flatten(), noise[..., 1:].flatten()]))[0, 1])

    def field(size, frequency):
        g = torch.Generator().manual_seed(0)
        return simplex_noise((4, 1, size, size), generator=g, octaves=1, frequency=frequency)

    # Fewer cells across the image: smoother noise. Same cells at twice the size: smoother per pixel.
    assert neighbour_correlation(field(32, 2.0)) > neighbour_correlation(field(32, 8.0)) + 0.05
    assert neighbour_correlation(field(64, 8.0)) > neighbour_correlation(field(32, 8.0)) + 0.05


def test_simplex_noise_is_standardised_per_sample_and_channel():
    noise = simplex_noise((3, 2, 32, 32), generator=torch.Generator().manual_seed(0))
    assert noise.shape == (3, 2, 32, 32) and noise.dtype == torch.float32
    mean, std = noise.mean(dim=(2, 3)), noise.std(dim=(2, 3), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(3, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3, 2), atol=1e-4, rtol=0)


def test_simplex_noise_fields_differ_and_are_smooth():
    noise = simplex_noise((4, 3, 32, 32), generator=torch.Generator().manual_seed(1)).view(12, -1)
    corr = torch.corrcoef(noise)
    off_diagonal = corr[~torch.eye(12, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.9  # every (sample, channel) has its own field
    # Low-frequency structure: neighbouring pixels are strongly correlated, unlike white noise.
    field = noise.view(12, 32, 32)
    neighbour = torch.corrcoef(torch.stack([field[:, :, :-1].flatten(), field[:, :, 1:].flatten()]))[0, 1]
    assert neighbour > 0.5


def test_simplex_noise_same_seed_same_tensor_other_seed_other_tensor():
    a = simplex_noise((2, 4, 16, 16), generator=torch.Generator().manual_seed(5))
    b = simplex_noise((2, 4, 16, 16), generator=torch.Generator().manual_seed(5))
    c = simplex_noise((2, 4, 16, 16), generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_simplex_noise_dtypes(dtype):
    reference = simplex_noise((1, 2, 16, 16), generator=torch.Generator().manual_seed(2))
    noise = simplex_noise((1, 2, 16, 16), generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert noise.dtype == dtype and torch.isfinite(noise).all()
    torch.testing.assert_close(noise.float(), reference, atol=0.05, rtol=0.01)


def test_simplex_noise_non_square_and_one_octave():
    noise = simplex_noise((1, 1, 8, 24), generator=torch.Generator().manual_seed(3), octaves=1, frequency=2)
    assert noise.shape == (1, 1, 8, 24)
    assert abs(float(noise.mean())) < 1e-5


def test_sample_noise_dispatches_and_rejects_unknown_kinds():
    g = torch.Generator().manual_seed(4)
    gaussian = sample_noise("gaussian", (2, 3, 8, 8), generator=g)
    assert torch.equal(gaussian, torch.randn((2, 3, 8, 8), generator=torch.Generator().manual_seed(4)))
    simplex = sample_noise("simplex", (2, 3, 8, 8), generator=torch.Generator().manual_seed(4), octaves=2)
    expected = simplex_noise((2, 3, 8, 8), generator=torch.Generator().manual_seed(4), octaves=2)
    assert torch.equal(simplex, expected)
    with pytest.raises(ConfigError, match="unknown noise kind"):
        sample_noise("perlin", (1, 1, 8, 8))
    with pytest.raises(ConfigError):
        simplex_noise((8, 8))
