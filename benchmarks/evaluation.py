"""`python -m benchmarks.evaluation`: what evaluation and decoding cost.

- SSIM/PSNR/MAE of a batch of 32 images: the trainer's batched torch metrics on the device against
  scikit-image, image by image, on the CPU;
- decoding a 512x1024 JPEG A|B pair file and resizing both halves to 256 px: the per-image cost of a
  loader that decodes every step (this trainer decodes once and augments on the device).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence

import numpy as np
import torch

from benchmarks.measure import describe_device, median_time, parse_ints
from benchmarks.step import CHANNELS, console
from trainer.errors import exits_cleanly_on_user_error
from trainer.loop import pick_device
from trainer.metrics import per_image_metrics

EVAL_IMAGES = 32
DECODE_SIZE = 256
BATCH = 16  # the decode cost is also given per batch of this size


def bench_eval(size: int, device: torch.device, repeats: int = 3) -> tuple[float, float]:
    """Seconds for SSIM/PSNR/MAE of a 32-image batch: batched torch on the device vs skimage per image."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = torch.Generator().manual_seed(0)
    x = torch.rand(EVAL_IMAGES, CHANNELS, size, size, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    xd, yd = x.to(device), y.to(device)
    torch_s = median_time(lambda: per_image_metrics(xd, yd), device, repeats)
    xn, yn = x.numpy(), y.numpy()

    def skimage_metrics() -> None:
        for i in range(EVAL_IMAGES):
            structural_similarity(xn[i], yn[i], data_range=2.0, channel_axis=0)
            peak_signal_noise_ratio(yn[i], xn[i], data_range=2.0)
            np.abs(xn[i] - yn[i]).mean()

    skimage_s = median_time(skimage_metrics, torch.device("cpu"), repeats, warmup=0)
    return torch_s, skimage_s


def bench_decode(size: int, repeats: int = 20) -> float:
    """Seconds to decode one 512 px JPEG A|B pair file and resize both halves to `size`,
    the per-image cost a loader that decodes every step pays (this trainer decodes once)."""
    from PIL import Image

    g = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(g.normal(size=(512, 1024, 3)), 0), 1)
    smooth = ((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(smooth).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()

    def decode() -> None:
        image = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = image.size
        image.crop((0, 0, w // 2, h)).resize((size, size), Image.BICUBIC)
        image.crop((w // 2, 0, w, h)).resize((size, size), Image.BICUBIC)

    return median_time(decode, torch.device("cpu"), repeats)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.evaluation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="device for the torch metrics")
    p.add_argument("--sizes", default="256,64", help="image sizes, comma-separated (default: %(default)s)")
    return p.parse_args(argv)


@exits_cleanly_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = parse_ints(args.sizes, "sizes")
    device = pick_device(args.device)
    console.print(f"[bold]benchmarks.evaluation[/] on {describe_device(device)}; torch {torch.__version__}")
    for size in sorted(set(sizes)):
        torch_s, skimage_s = bench_eval(size, device)
        console.print(
            f"eval metrics, {EVAL_IMAGES} images of {size} px: batched torch on {device.type} "
            f"{torch_s * 1e3:.0f} ms, per-image skimage {skimage_s * 1e3:.0f} ms "
            f"({skimage_s / torch_s:.2f}x)"
        )
    decode = bench_decode(DECODE_SIZE)
    console.print(
        f"decode: a 512x1024 JPEG A|B pair -> two {DECODE_SIZE} px images: {decode * 1e3:.1f} ms per pair, "
        f"{decode * BATCH * 1e3:.0f} ms per batch of {BATCH} for a loader that decodes every step "
        "(this trainer decodes once and augments on the device)"
    )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
