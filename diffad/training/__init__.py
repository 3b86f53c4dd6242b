"""What the training scripts share: accelerate set-up, EMA, checkpoints, the stage bodies."""
