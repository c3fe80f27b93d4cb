"""SSIM, PSNR and MAE for batches of images in [-1, 1], computed in torch on the training device.

SSIM follows scikit-image's `structural_similarity` exactly: 7x7 uniform window, K1=0.01, K2=0.03,
sample covariance, the mean taken over the region the window covers fully, then over channels.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

DATA_RANGE = 2.0  # images live in [-1, 1]
WINDOW = 7
K1, K2 = 0.01, 0.03


# On CPU, SSIM runs over chunks of about this many input values (per image of the pair): the five
# statistics maps of a chunk then stay in cache. 32 images of 3 x 256 x 256 on 2 cores: 550 ms in
# one piece, 80 ms in chunks of two images (per-image skimage: 240 ms).
CPU_CHUNK_VALUES = 1 << 19


def ssim_per_image(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N,). Computed in float32 whatever the input dtype."""
    x, y = x.float(), y.float()
    n, c, h, w = x.shape
    if min(h, w) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW}x{WINDOW} (got {h}x{w})")
    # A 'valid' box filter = skimage's uniform filter followed by its crop of (WINDOW-1)//2 pixels;
    # a depthwise convolution is several times faster than avg_pool2d on CPU.
    box = torch.full((5 * c, 1, WINDOW, WINDOW), 1 / WINDOW**2, device=x.device)
    chunk = max(1, CPU_CHUNK_VALUES // (c * h * w)) if x.device.type == "cpu" else n
    return torch.cat([_ssim(x[i : i + chunk], y[i : i + chunk], box) for i in range(0, n, chunk)])


def _ssim(x: torch.Tensor, y: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    c = x.shape[1]
    mean = F.conv2d(torch.cat([x, y, x * x, y * y, x * y], 1), box, groups=5 * c)
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


def volume_metrics(
    output: np.ndarray, target: np.ndarray, mask: np.ndarray, value_range: tuple[float, float]
) -> dict[str, float]:
    """MAE, PSNR and SSIM of one volume in the data's own units (HU for CT) inside the mask, the way
    the SynthRAD challenge scores synthetic CT: MAE on the values as they are; PSNR and SSIM on both
    volumes clipped to value_range, whose width is the data range, SSIM (scikit-image, 7x7x7 window)
    averaged over the mask with the outside set to the range's bottom."""
    low, high = value_range
    mae = float(np.abs(output[mask] - target[mask]).mean())
    out, tgt = np.clip(output, low, high) - low, np.clip(target, low, high) - low
    mse = float(((out[mask] - tgt[mask]) ** 2).mean())
    psnr = 10 * math.log10((high - low) ** 2 / mse) if mse > 0 else math.inf
    out[~mask], tgt[~mask] = 0.0, 0.0
    _, ssim_map = structural_similarity(tgt, out, data_range=high - low, full=True)
    return {"mae": mae, "psnr": psnr, "ssim": float(ssim_map[mask].mean())}
