"""Stage 2: train the diffusion UNet of an anomaly detector on good images.

    python train_unet.py --data DATA --vae VAE_DIR --output_dir OUT [--noise simplex] [--max_timestep 500]
    accelerate launch --config_file configs/accelerate/cpu.yaml train_unet.py ...

Writes a detection pipeline folder (vae, unet, scheduler, scorer, model_index.json) into --output_dir.
The training itself lives in diffad.training.unet_stage (also run by `diffad fit`).
"""

import sys

from diffad.training.script import run_script
from diffad.training.unet_stage import main, parse_args

if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "train_unet.py"))
