"""SSIM / PSNR / MAE in torch must equal scikit-image's reference implementations on real photos."""

from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch
from skimage.filters import gaussian
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainer.metrics import mae_per_image, per_image_metrics, psnr_per_image, ssim_per_image
from trainer.names import METRIC_NAMES

TOLERANCE = 1e-4
SIDE = 64


def unit(image: np.ndarray) -> np.ndarray:
    """uint8 photo -> float64 in [-1, 1], the scale the trainer works in."""
    return image.astype(np.float64) / 127.5 - 1.0


def crops(image: np.ndarray, count: int) -> list[np.ndarray]:
    """Distinct SIDE x SIDE crops along the diagonal of a photo."""
    step = (min(image.shape[:2]) - SIDE) // count
    return [image[i * step : i * step + SIDE, i * step : i * step + SIDE] for i in range(count)]


def degraded(image: np.ndarray, seed: int) -> np.ndarray:
    """Blur plus noise: a target that is similar to the image but clearly not equal."""
    rng = np.random.default_rng(seed)
    channel_axis = -1 if image.ndim == 3 else None
    blurred = gaussian(image, sigma=1.0 + seed % 3, channel_axis=channel_axis, preserve_range=True)
    return np.clip(blurred + rng.normal(0, 0.1, image.shape), -1, 1)


def photo_pairs(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Several (output, target) pairs from one photo, as (N, H, W) or (N, H, W, 3) arrays."""
    outputs = [unit(c) for c in crops(getattr(skimage.data, name)(), 4)]
    targets = [degraded(o, i) for i, o in enumerate(outputs)]
    return np.stack(outputs), np.stack(targets)


def as_batch(images: np.ndarray) -> torch.Tensor:
    """(N, H, W[, C]) numpy -> (N, C, H, W) float32 torch."""
    x = torch.from_numpy(images).float()
    return x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)


@pytest.fixture(params=["camera", "moon", "astronaut", "coffee", "chelsea"])
def pairs(request: pytest.FixtureRequest) -> tuple[np.ndarray, np.ndarray]:
    return photo_pairs(request.param)


def reference_ssim(x: np.ndarray, y: np.ndarray) -> float:
    return structural_similarity(x, y, data_range=2.0, channel_axis=-1 if x.ndim == 3 else None)


def test_ssim_equals_skimage(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, targets = pairs
    ours = ssim_per_image(as_batch(outputs), as_batch(targets)).numpy()
    expected = [reference_ssim(x, y) for x, y in zip(outputs, targets)]
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)
    assert np.ptp(expected) > 0.01  # the pairs really differ, so a batch mix-up would show


def test_psnr_equals_skimage(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, targets = pairs
    ours = psnr_per_image(as_batch(outputs), as_batch(targets)).numpy()
    expected = [peak_signal_noise_ratio(y, x, data_range=2.0) for x, y in zip(outputs, targets)]
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)


def test_mae_equals_mean_absolute_error(pairs: tuple[np.ndarray, np.ndarray]) -> None:
    outputs, targets = pairs
    ours = mae_per_image(as_batch(outputs), as_batch(targets)).numpy()
    expected = [np.abs(x - y).mean() for x, y in zip(outputs, targets)]
    np.testing.assert_allclose(ours, expected, atol=TOLERANCE)


def test_per_image_metrics_names_and_identity() -> None:
    outputs, _ = photo_pairs("astronaut")
    x = as_batch(outputs)
    metrics = per_image_metrics(x, x.clone())
    assert tuple(metrics) == METRIC_NAMES
    torch.testing.assert_close(metrics["ssim"], torch.ones(len(x)))
    assert torch.isinf(metrics["psnr"]).all()
    assert (metrics["mae"] == 0).all()


def test_ssim_rejects_images_smaller_than_its_window() -> None:
    x = torch.zeros(1, 1, 6, 6)
    with pytest.raises(ValueError, match="7x7"):
        ssim_per_image(x, x)
