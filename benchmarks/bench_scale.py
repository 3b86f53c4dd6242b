"""Evaluation's memory and time against the number of maps: streamed against exact, 1 process against 2.

    python benchmarks/bench_scale.py [--sizes 1000 4000 16000] [--resolution 256] [--exact_up_to 4000]

Each run is a fresh subprocess (so its peak RSS is its own) that feeds N synthetic 256x256 map/mask
pairs through what `diffad evaluate` does with a detector's output: `Collector` (rows, histograms,
the report's case candidates), the merge of shards and `summarize` (every metric, per defect type,
the curves, the colour range). Maps are smooth noise fields (one in two images holds one to three
elliptic defects whose scores are raised), made on the fly from a seeded bank so that nothing but
the evaluation holds them. Streamed runs keep only histograms; exact runs (`--metrics_memory`
large) keep every map. The 2-process run shards the same maps over two gloo processes
(configs/accelerate/cpu_ddp.yaml) as `accelerate launch -m diffad evaluate` does.

It prints one row per run: peak RSS, seconds, seconds per 1k maps and the pixel metrics, then the
largest difference between streamed and exact figures, the 16k/1k RSS ratio (goal: at most 1.2)
and whether 1 and 2 processes give identical metrics.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro", "image_auroc")
BANK = 32


def make_bank(size: int, seed: int = 0) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    fields = rng.standard_normal((BANK, size, size)).astype(np.float32)
    return np.stack([ndimage.gaussian_filter(f, 4, mode="wrap") * 4 for f in fields])


def pair(bank: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Map and mask of image i: a shifted bank field; odd images hold raised elliptic defects."""
    rng = np.random.default_rng(i + 1)
    size = bank.shape[-1]
    dy, dx = rng.integers(0, size, 2)
    amap = np.roll(bank[i % BANK], (dy, dx), axis=(0, 1)) + np.float32(rng.normal(0, 0.3))
    mask = np.zeros((size, size), dtype=np.uint8)
    if i % 2:
        for _ in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(3, size / 8, 2)
            y0, y1 = int(max(cy - ry, 0)), int(min(cy + ry + 1, size))
            x0, x1 = int(max(cx - rx, 0)), int(min(cx + rx + 1, size))
            yy, xx = np.mgrid[y0:y1, x0:x1]
            mask[y0:y1, x0:x1] |= (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1).astype(np.uint8)
        amap = amap + mask * np.float32(rng.uniform(0.5, 2.0))
    return amap.astype(np.float32), mask


class Sample:
    def __init__(self, i: int):
        self.image_path, self.label = f"synthetic/{i:06d}.png", i % 2
        self.defect_type = "defect" if i % 2 else "good"


def child(args) -> None:
    from diffad.distributed import gather, process_state, shard
    from diffad.report.collect import Collector
    from diffad.report.results import summarize

    state = process_state() if args.processes > 1 else None
    bank = make_bank(args.resolution)
    thumb = np.zeros((32, 32, 3), dtype=np.uint8)  # the report's input tile (the maps are what scale)
    began = time.perf_counter()
    collector = Collector("synthetic", 4, keep_maps=args.mode == "exact", has_masks=True)
    indices = list(range(args.child))
    mine = shard(indices, state) if state else indices
    for start in range(0, len(mine), 8):
        for i in mine[start : start + 8]:
            amap, mask = pair(bank, i)
            collector.add(i, Sample(i), float(amap.max()), amap, mask, thumb)
        collector.prune()
    parts = gather(collector, state) if state else [collector]
    if state and not state.is_main_process:
        return
    summary = summarize(Collector.merged(parts).results())
    seconds = time.perf_counter() - began
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"maps": args.child, "mode": args.mode, "processes": args.processes, "peak_rss_mb": rss}
    row.update(seconds=seconds, per_1k=seconds / args.child * 1000, **{k: summary.metrics[k] for k in KEYS})
    print("RESULT " + json.dumps(row), flush=True)


def run_child(n: int, mode: str, processes: int, resolution: int) -> dict:
    args = ["--child", str(n), "--mode", mode, "--processes", str(processes), "--resolution", str(resolution)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes > 1:
        launch = [sys.executable, "-m", "accelerate.commands.launch"]
        launch += [
            "--config_file",
            str(ROOT / "configs/accelerate/cpu_ddp.yaml"),
            "--num_processes",
            str(processes),
        ]
        command = [*launch, __file__, *args]
    else:
        command = [sys.executable, __file__, *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--exact_up_to", type=int, default=4000, help="exact metrics for sizes up to this")
    parser.add_argument("--two_processes_at", type=int, default=1000, help="size of the 1-vs-2-process run")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="streamed", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args)

    rows = [run_child(n, "streamed", 1, args.resolution) for n in args.sizes]
    rows += [run_child(n, "exact", 1, args.resolution) for n in args.sizes if n <= args.exact_up_to]
    rows.append(run_child(args.two_processes_at, "streamed", 2, args.resolution))
    rows.append(run_child(args.two_processes_at, "exact", 2, args.resolution))
    header = (
        f"{'maps':>6} {'mode':>9} {'procs':>5} {'peak RSS MB':>11} {'s':>7} {'s/1k maps':>9} "
        + " ".join(f"{k:>12}" for k in KEYS)
    )
    print(header)
    for r in rows:
        cells = " ".join(f"{r[k]:12.6f}" for k in KEYS)
        print(
            f"{r['maps']:>6} {r['mode']:>9} {r['processes']:>5} {r['peak_rss_mb']:11.0f} {r['seconds']:7.1f} "
            f"{r['per_1k']:9.2f} {cells}"
        )
    find = {(r["maps"], r["mode"], r["processes"]): r for r in rows}
    for n in args.sizes:
        if (n, "exact", 1) in find:
            diff = max(abs(find[(n, "streamed", 1)][k] - find[(n, "exact", 1)][k]) for k in KEYS)
            print(f"{n} maps: largest |streamed - exact| {diff:.2e}")
    if len(args.sizes) > 1:
        first, last = find[(args.sizes[0], "streamed", 1)], find[(args.sizes[-1], "streamed", 1)]
        ratio = last["peak_rss_mb"] / first["peak_rss_mb"]
        print(f"peak RSS, streamed, {args.sizes[-1]} / {args.sizes[0]} maps: {ratio:.3f} (goal: at most 1.2)")
    n = args.two_processes_at
    for mode in ("streamed", "exact"):
        if (n, mode, 1) in find:
            same = all(find[(n, mode, 1)][k] == find[(n, mode, 2)][k] for k in KEYS)
            diff = max(abs(find[(n, mode, 1)][k] - find[(n, mode, 2)][k]) for k in KEYS)
            print(f"{n} maps, {mode}: 1 process vs 2 identical: {same} (largest difference {diff:.1e})")


if __name__ == "__main__":
    main()
