"""Stage 3: train a segmentation head on synthetic defects and add it to a detection pipeline.

    python train_seg.py --model PIPELINE_DIR --data DATA --output_dir RUN_DIR [--methods draem smooth cutpaste scratch]
    accelerate launch --config_file configs/accelerate/cpu.yaml train_seg.py ...

Checkpoints and sample panels go to --output_dir; the head is saved into PIPELINE_DIR as its
`segmentation_head` component. The training itself lives in diffad.training.seg_stage (also run by
`diffad fit --with_head`).
"""

import sys

from diffad.training.script import run_script
from diffad.training.seg_stage import main, parse_args

if __name__ == "__main__":
    sys.exit(run_script(main, parse_args(), "train_seg.py"))
