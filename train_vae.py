"""Stage 1: train the autoencoder (AutoencoderKL or VQModel) of an anomaly detector on good images.

    python train_vae.py --data DATA --output_dir VAE_DIR [--model_type kl|vq] [--preset small] [--disc_start 1000]
    accelerate launch --config_file configs/accelerate/cpu.yaml train_vae.py ...

Saves the autoencoder (save_pretrained) into --output_dir, for train_unet.py --vae VAE_DIR.
The training itself lives in diffad.training.vae_stage (also run by `diffad fit`).
"""

import sys

from diffad.training.script import run_script
from diffad.training.vae_stage import main, parse_args

if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "train_vae.py"))
