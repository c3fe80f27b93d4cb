"""SSIM, PSNR and MAE for batches of images in [-1, 1], computed in torch on the training device.

SSIM follows scikit-image's `structural_similarity` exactly: 7x7 uniform window, K1=0.01, K2=0.03,
sample covariance, the mean taken over the region the window covers fully, then over channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DATA_RANGE = 2.0  # images live in [-1, 1]
WINDOW = 7
K1, K2 = 0.01, 0.03
METRIC_NAMES = ("ssim", "psnr", "mae")


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,). Computed in float32 whatever the input dtype."""
    x, y = x.float(), y.float()
    n, c, h, w = x.shape
    if min(h, w) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} (got {h}x{w})")
    # 'valid' box filtering = skimage's uniform filter followed by its crop of (WINDOW-1)//2 pixels.
    stats = torch.cat([x, y, x * x, y * y, x * y], 1)
    mean = F.avg_pool2d(stats, WINDOW, stride=1)
    ux, uy, uxx, uyy, uxy = mean.split(c, 1)
    cov_norm = WINDOW * WINDOW / (WINDOW * WINDOW - 1)  # sample, not population, covariance
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (K1 * DATA_RANGE) ** 2
    c2 = (K2 * DATA_RANGE) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.mean(dim=(2, 3)).mean(dim=1)


def psnr_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mse = (x.float() - y.float()).pow(2).mean(dim=(1, 2, 3))
    return 10 * torch.log10(DATA_RANGE**2 / mse)


def mae_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error on the [-1, 1] scale."""
    return (x.float() - y.float()).abs().mean(dim=(1, 2, 3))


def per_image_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    return {
        "ssim": ssim_per_image(output, target),
        "psnr": psnr_per_image(output, target),
        "mae": mae_per_image(output, target),
    }
