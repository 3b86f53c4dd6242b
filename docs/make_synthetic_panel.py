"""Draw docs/synthetic_panel.png: 16 synthetic defects on DAGM class 1 and ELPV solar cells.

Each defect is shown twice: as made, and with its mask outlined in red. ELPV defects are kept on the
cell with foreground="auto"; DAGM is a texture, where the whole image is foreground.

    python docs/make_synthetic_panel.py --dagm data/dagm_class1 [--out docs/synthetic_panel.png]

--dagm is DAGM 2007 class 1 in MVTec AD layout (docs/DATASETS.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from diffad.data import load_image, load_samples  # noqa: E402
from diffad.synthesis import synthesize  # noqa: E402

SIZE = 256
# (dataset, image index, method, options): a spread of every defect kind over both kinds of surface.
DEFECTS = [
    ("dagm", 0, "smooth", {"fill": "smooth"}),
    ("dagm", 1, "smooth", {"fill": "flat"}),
    ("dagm", 2, "smooth", {"fill": "blur"}),
    ("dagm", 3, "draem", {"fill": "self"}),
    ("dagm", 4, "draem", {"fill": "noise"}),
    ("dagm", 5, "cutpaste", {}),
    ("dagm", 6, "scratch", {}),
    ("dagm", 7, "spots", {"kind": "spot"}),
    ("elpv", 0, "crack", {}),
    ("elpv", 1, "crack", {}),
    ("elpv", 2, "scratch", {}),
    ("elpv", 3, "spots", {"kind": "hole"}),
    ("elpv", 4, "cutpaste_scar", {}),
    ("elpv", 5, "draem", {"fill": "texture"}),
    ("elpv", 6, "smooth", {"fill": "smooth"}),
    ("elpv", 7, "spots", {"kind": "spot"}),
]


def source_images(dagm: Path) -> dict[str, list[Path]]:
    dagm_files = sorted((dagm / "train" / "good").iterdir())
    elpv = [s.image_path for s in load_samples("elpv", category="mono", split="train")]
    # Spread the picks over each set, so the panel does not show near-identical neighbours.
    return {"dagm": dagm_files[::37][:8], "elpv": elpv[::53][:8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dagm", required=True, help="DAGM 2007 class 1 in MVTec AD layout (docs/DATASETS.md)"
    )
    parser.add_argument("--out", default=str(Path(__file__).with_name("synthetic_panel.png")))
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    sources = source_images(Path(args.dagm))
    textures = Path(args.dagm) / "train" / "good"  # any folder of images serves as textures

    fig, axes = plt.subplots(8, 4, figsize=(8, 16.4))
    for k, (dataset, index, method, options) in enumerate(DEFECTS):
        image = load_image(sources[dataset][index], channels=1, size=SIZE)
        kwargs = dict(options)
        if dataset == "elpv":
            kwargs["foreground"] = "auto"  # keep defects on the cell, off its dark corners
        if options.get("fill") == "texture":
            kwargs["textures"] = textures
        result = synthesize(image, method, torch.Generator().manual_seed(args.seed * 1000 + k), **kwargs)
        picture = ((result.image[0] + 1) / 2).clamp(0, 1).numpy()
        mask = result.mask[0].numpy()
        row, col = k // 2, (k % 2) * 2
        for j, outlined in enumerate((False, True)):
            ax = axes[row, col + j]
            ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if outlined:
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.7)
            ax.set_xticks([])
            ax.set_yticks([])
        label = method + (f" ({options['fill']})" if "fill" in options else "")
        label += f" ({options['kind']})" if "kind" in options else ""
        axes[row, col].set_title(f"{dataset.upper()}: {label}", fontsize=8, loc="left")
    fig.suptitle("Synthetic defects (diffad.synthesis) — left: as made, right: mask outline", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
