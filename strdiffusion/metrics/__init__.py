"""Metrics: PSNR, SSIM, L1 and LPIPS per image, FID and KID per set, the metric networks and their weights,
and the ground truths' reference statistics.

May import core, io, settings and runtime."""
