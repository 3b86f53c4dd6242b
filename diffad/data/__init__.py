"""Dataset readers (MVTec AD, VisA, Real-IAD, folder, ELPV), image loading and checks."""
