"""Time simplex noise: diffad's torch code against opensimplex (with and without numba) and torch.randn.

    python benchmarks/bench_noise.py [--threads 1] [--repeats 3]

For each shape, 6 octaves per (sample, channel) field, as `diffad.noise.simplex_noise` makes them:
  (a) diffad.noise.simplex_noise (torch, one batched computation);
  (b) opensimplex + numba: per field an OpenSimplex(seed) and one noise2array call per octave
      (the same 2D noise and work as (a)); and, for AnoDDPM's way, noise3array with a z slice;
  (c) opensimplex without numba (pure Python), in a subprocess with numba hidden: timed on a
      subset of the points and scaled to the full shape (marked "scaled");
  (d) torch.randn.
Plus one forward pass of the `small` UNet preset at the latent shape (8, 4, 64, 64), the cost that
the noise of one denoising step should be small against.
"""

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

SHAPES = [(8, 4, 64, 64), (8, 3, 256, 256)]
OCTAVES, PERSISTENCE, FREQUENCY = 6, 0.8, 4.0


def _timed(fn, repeats):
    fn()  # warm-up: numba compilation, allocator, caches
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def opensimplex_octaves(shape, dims=2, seed=0):
    """Octave noise for every field of `shape` with the opensimplex package (numba if importable)."""
    from opensimplex import OpenSimplex

    batch, channels, height, width = shape
    rng = np.random.default_rng(seed)
    out = np.empty(shape)
    cols, rows = np.arange(width, dtype=float), np.arange(height, dtype=float)
    for b in range(batch):
        for c in range(channels):
            gen = OpenSimplex(int(rng.integers(2**31)))
            field = np.zeros((height, width))
            for k in range(OCTAVES):
                scale = FREQUENCY * 2**k / max(height, width)
                ox, oy = rng.uniform(0, 256, 2)
                if dims == 2:
                    field += PERSISTENCE**k * gen.noise2array(cols * scale + ox, rows * scale + oy)
                else:
                    z = np.array([float(rng.uniform(0, 256))])
                    field += PERSISTENCE**k * gen.noise3array(cols * scale + ox, rows * scale + oy, z)[0]
            out[b, c] = (field - field.mean()) / field.std()
    return out


_PURE_PYTHON = r"""
import sys, time
sys.modules["numba"] = None  # opensimplex falls back to plain Python when numba cannot be imported
import numpy as np
from opensimplex import OpenSimplex
from opensimplex import internals
assert not hasattr(internals._noise2, "py_func"), "numba was not hidden"
gen = OpenSimplex(1)
side = int(sys.argv[1])
xs = np.arange(side) * 0.05
start = time.perf_counter()
gen.noise2array(xs, xs)
print((time.perf_counter() - start) / (side * side))
"""


def pure_python_ms(shape):
    """Pure-Python opensimplex, timed on a 48 x 48 field and scaled to all points of `shape`."""
    out = subprocess.run(
        [sys.executable, "-c", _PURE_PYTHON, "48"], capture_output=True, text=True, check=True
    )
    per_point = float(out.stdout.strip())
    return per_point * OCTAVES * int(np.prod(shape)) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and numba threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import numba

    from diffad.models import build_unet
    from diffad.noise import simplex_noise

    torch.set_num_threads(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.repeats}, {OCTAVES} octaves")

    unet = build_unet("small", in_channels=4, sample_size=64).eval()
    latents = torch.randn(SHAPES[0], generator=torch.Generator().manual_seed(0))
    timesteps = torch.full((SHAPES[0][0],), 250)
    with torch.no_grad():
        unet_ms = _timed(lambda: unet(latents, timesteps), args.repeats)

    rows = []
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        ours = _timed(lambda s=shape, g=gen: simplex_noise(s, generator=g, octaves=OCTAVES), args.repeats)
        numba2 = _timed(lambda s=shape: opensimplex_octaves(s, dims=2), args.repeats)
        numba3 = _timed(lambda s=shape: opensimplex_octaves(s, dims=3), max(1, args.repeats // 2))
        python2 = pure_python_ms(shape)
        randn = _timed(lambda s=shape, g=gen: torch.randn(s, generator=g), args.repeats)
        rows.append((shape, ours, numba2, numba3, python2, randn))

    header = (
        f"{'shape':<18}{'diffad torch':>14}{'os2+numba':>12}{'os3+numba':>12}{'os2 python*':>13}"
        f"{'randn':>9}{'torch/numba2':>14}{'torch/UNet':>12}"
    )
    print(header)
    print("-" * len(header))
    for shape, ours, numba2, numba3, python2, randn in rows:
        versus_unet = f"{ours / unet_ms:.1%}" if shape == SHAPES[0] else "-"
        print(
            f"{str(shape):<18}{ours:>14.1f}{numba2:>12.1f}{numba3:>12.1f}{python2:>13.0f}{randn:>9.2f}"
            f"{ours / numba2:>14.2f}{versus_unet:>12}"
        )
    print(f"small UNet forward at the latent shape {SHAPES[0]}: {unet_ms:.1f} ms")
    print("times in ms; * pure-Python opensimplex timed on 48 x 48 points in a subprocess and scaled")


if __name__ == "__main__":
    main()
