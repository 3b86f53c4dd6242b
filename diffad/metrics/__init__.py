"""Image and pixel AUROC, AP, F1-max, AUPRO and mAD, with ADer's names."""
