"""Paired data on disk: layouts, bit depths, channels, the train/val/test split and augmentation."""

from __future__ import annotations

import json
import shutil
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import torch
from conftest import PairedFolder

from trainer import train as train_cli
from trainer.builtin import builtin_root
from trainer.config import TrainConfig
from trainer.data import (
    PNG_SIGNATURE,
    SPLIT_FILE,
    SPLITS,
    PairedData,
    augment,
    count_train_pairs,
    find_splits,
    load_paired_data,
    png_bytes,
    read_image,
    seeded_split,
)
from trainer.data.limits import IMAGE_PIXELS
from trainer.errors import UserError

MakeFolder = Callable[..., PairedFolder]


def loaded_pixels(data: PairedData) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """name -> (A, B) as (H, W, C) integer arrays, across all splits."""
    pixels = {}
    for images in data.splits.values():
        a, b = images.units(torch.arange(len(images)))
        for i, name in enumerate(images.names):
            pixels[name] = (a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy())
    return pixels


# ---------------------------------------------------------------------------------------------
# the split


def test_seeded_split_is_deterministic_disjoint_and_complete() -> None:
    names = [f"n{i:03d}" for i in range(100)]
    split = seeded_split(names, seed=7)
    assert split == seeded_split(list(reversed(names)), seed=7)  # the order files are listed in does not matter
    assert split != seeded_split(names, seed=8)
    assert {s: len(split[s]) for s in SPLITS} == {"train": 70, "val": 15, "test": 15}
    assert sorted(split["train"] + split["val"] + split["test"]) == names  # disjoint and complete


def test_split_needs_three_pairs() -> None:
    with pytest.raises(UserError, match="at least 3"):
        seeded_split(["a", "b"], seed=0)


def test_split_is_saved_and_reused_even_when_new_files_appear(paired_folder: MakeFolder, tmp_path: Path) -> None:
    data = paired_folder(count=20)
    run_dir = tmp_path / "run"
    first = load_paired_data(str(data.root), 32, split_seed=3, run_dir=run_dir)
    saved = json.loads((run_dir / SPLIT_FILE).read_text())
    assert saved["splits"] == first.split_names and saved["hash"] == first.split_hash

    paired_folder(count=25, root=data.root, prefix="new")  # more data arrives after the run started
    again = load_paired_data(str(data.root), 32, split_seed=99, run_dir=run_dir)  # even another seed
    assert again.split_names == first.split_names
    fresh = load_paired_data(str(data.root), 32, split_seed=3)  # without the run's split.json
    assert sum(len(names) for names in fresh.split_names.values()) == 45


def test_saved_split_refuses_data_that_lost_files(paired_folder: MakeFolder, tmp_path: Path) -> None:
    data = paired_folder(count=10)
    first = load_paired_data(str(data.root), 32, run_dir=tmp_path / "run")
    lost = first.split_names["test"][0]
    (data.root / "A" / f"{lost}.png").unlink()
    (data.root / "B" / f"{lost}.png").unlink()
    with pytest.raises(UserError, match=f"{SPLIT_FILE}.*{lost}"):
        load_paired_data(str(data.root), 32, run_dir=tmp_path / "run")


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_builtin_photo_sets_split_by_source_photo() -> None:
    files = find_splits(builtin_root("colorize"), split_seed=0, run_dir=None)
    photos = {s: {pair.name.rsplit("-", 1)[0] for pair in files[s]} for s in SPLITS}
    assert all(photos.values())
    assert not photos["train"] & photos["val"] and not photos["train"] & photos["test"]
    assert not photos["val"] & photos["test"]


def test_split_sub_folders_are_honoured(paired_folder: MakeFolder, tmp_path: Path) -> None:
    root = tmp_path / "data"
    written = {s: paired_folder(count=n, root=root / s, prefix=s) for s, n in zip(SPLITS, (6, 3, 4))}
    data = load_paired_data(str(root), 32, split_seed=5, run_dir=tmp_path / "run")
    assert data.split_names == {s: sorted(written[s].pixels) for s in SPLITS}


def test_split_sub_folders_must_all_exist(paired_folder: MakeFolder, tmp_path: Path) -> None:
    for split in ("train", "val"):
        paired_folder(count=3, root=tmp_path / "data" / split)
    with pytest.raises(UserError, match="lacks test/"):
        load_paired_data(str(tmp_path / "data"), 32)


def test_max_train_images_bounds_the_training_split(paired_folder: MakeFolder) -> None:
    root = str(paired_folder(count=20).root)
    data = load_paired_data(root, 32, max_train_images=5)
    assert len(data.splits["train"]) == 5 and len(data.splits["val"]) == 3
    # what epochs: auto counts from the file listing alone, without decoding
    everything = load_paired_data(root, 32)
    assert count_train_pairs(TrainConfig(data=root, size=32)) == len(everything.splits["train"]) > 5
    assert count_train_pairs(TrainConfig(data=root, size=32, max_train_images=5)) == 5


# ---------------------------------------------------------------------------------------------
# layouts, formats, channels


@pytest.mark.parametrize("layout", ["folders", "side_by_side"])
@pytest.mark.parametrize(
    ("suffix", "dtype", "channels"),
    [
        (".png", np.uint8, 1),
        (".png", np.uint8, 3),
        (".png", np.uint16, 1),
        (".tif", np.uint8, 3),
        (".tif", np.uint16, 1),
        (".tif", np.uint16, 3),
    ],
)
def test_layouts_and_formats_load_exactly(
    paired_folder: MakeFolder, layout: str, suffix: str, dtype: type, channels: int
) -> None:
    written = paired_folder(
        count=6, layout=layout, suffix=suffix, dtype=dtype, channels_a=channels, channels_b=channels
    )
    data = load_paired_data(str(written.root), 32)
    assert (data.in_channels, data.out_channels) == (channels, channels)
    assert data.splits["train"].max_value == np.iinfo(dtype).max
    loaded = loaded_pixels(data)
    assert loaded.keys() == written.pixels.keys()
    for name, (a, b) in written.pixels.items():
        np.testing.assert_array_equal(loaded[name][0], a)
        np.testing.assert_array_equal(loaded[name][1], b)


def test_channel_counts_are_inferred_per_side(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=6, channels_a=1, channels_b=3)  # e.g. colorization: gray -> RGB
    data = load_paired_data(str(written.root), 32)
    assert (data.in_channels, data.out_channels) == (1, 3)
    assert not data.has_identity_baseline


def test_a_gray_file_in_an_rgb_set_becomes_rgb(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=6, channels_a=3, channels_b=3)
    gray = np.full((32, 32), 200, np.uint8)
    iio.imwrite(written.root / "A" / "img000.png", gray)
    data = load_paired_data(str(written.root), 32)
    a, _ = loaded_pixels(data)["img000"]
    assert data.in_channels == 3 and (a == 200).all()


def test_8_and_16_bit_pairs_mix_on_the_16_bit_scale(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=6, channels_a=1, channels_b=1)
    for side in ("A", "B"):
        iio.imwrite(written.root / side / "img000.png", np.full((32, 32), 40000, np.uint16))
    data = load_paired_data(str(written.root), 32)
    assert {images.max_value for images in data.splits.values()} == {65535}
    loaded = loaded_pixels(data)
    assert (loaded["img000"][0] == 40000).all()
    a, b = written.pixels["img001"]
    np.testing.assert_array_equal(loaded["img001"][0], a.astype(np.int64) * 257)  # 255 * 257 = 65535
    np.testing.assert_array_equal(loaded["img001"][1], b.astype(np.int64) * 257)


def test_a_16_bit_a_with_an_8_bit_b(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=6, channels_a=1, channels_b=1)
    iio.imwrite(written.root / "A" / "img000.png", np.full((32, 32), 40000, np.uint16))
    _, b = loaded_pixels(load_paired_data(str(written.root), 32))["img000"]
    np.testing.assert_array_equal(b, written.pixels["img000"][1].astype(np.int64) * 257)


def test_16_bit_rgb_png_keeps_16_bits(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=3, channels_a=3, channels_b=3)
    deep = np.full((32, 32, 3), 40000, np.uint16)
    (written.root / "A" / "img000.png").write_bytes(png_bytes(deep))
    data = load_paired_data(str(written.root), 32)
    assert (loaded_pixels(data)["img000"][0] == 40000).all()


def test_images_are_resized_to_the_configured_size(paired_folder: MakeFolder) -> None:
    data = load_paired_data(str(paired_folder(count=5, side=48).root), 32)
    assert data.splits["train"].a.shape[1:] == (3, 32, 32)


# ---------------------------------------------------------------------------------------------
# bad input: one clear error naming the file


def test_unpaired_names_are_refused(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=5)
    shutil.copy(written.root / "A" / "img000.png", written.root / "A" / "stray.png")
    with pytest.raises(UserError, match=r"stray\.png: no file of the same name"):
        load_paired_data(str(written.root), 32)


def test_side_by_side_images_need_an_even_width(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=5, layout="side_by_side")
    iio.imwrite(written.root / "img001.png", np.zeros((32, 65, 3), np.uint8))
    with pytest.raises(UserError, match=r"img001\.png: width 65 is odd"):
        load_paired_data(str(written.root), 32)


def test_corrupt_files_are_named(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=5)
    (written.root / "B" / "img002.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(UserError, match=r"img002\.png: cannot be read as an image"):
        load_paired_data(str(written.root), 32)


def test_missing_and_empty_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="data folder not found"):
        load_paired_data(str(tmp_path / "nowhere"), 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        load_paired_data(str(tmp_path / "empty"), 32)
    (tmp_path / "half" / "A").mkdir(parents=True)
    with pytest.raises(UserError, match="B: folder missing"):
        load_paired_data(str(tmp_path / "half"), 32)


# ---------------------------------------------------------------------------------------------
# the pixel limit, checked from each file's header


def png_declaring(path: Path, width: int, height: int, bit_depth: int, colour_type: int) -> None:
    """A PNG whose header declares width x height pixels but whose data holds one row: a few hundred
    bytes on disk. Decoders size their output from the header, so it is refused from the header."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    samples = {0: 1, 2: 3}[colour_type]  # gray, RGB
    row = bytes(1 + width * samples * bit_depth // 8)  # filter byte + zero samples
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row, 9)) + chunk(b"IEND", b"")
    path.write_bytes(PNG_SIGNATURE + chunks)


@pytest.mark.parametrize(
    ("bit_depth", "colour_type"),
    [(16, 2), (8, 2), (16, 0)],
    ids=["16-bit RGB (pypng)", "8-bit RGB (Pillow)", "16-bit gray (Pillow)"],
)
def test_a_small_png_declaring_a_huge_image_is_refused_from_its_header(
    bit_depth: int, colour_type: int, paired_folder: MakeFolder, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = paired_folder(count=5)
    bomb = written.root / "A" / "img002.png"
    png_declaring(bomb, 13000, 13000, bit_depth, colour_type)
    assert bomb.stat().st_size < 1000
    started = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--data", str(written.root), "--size", "32", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert time.perf_counter() - started < 10  # the 13000^2 decode alone took 16 to 49 s
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"{bomb}: 13000 x 13000 = 169,000,000 pixels, above the limit of 100,000,000 per image" in err
    assert "PIX2PIX_MAX_IMAGE_PIXELS=169000000" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("suffix", "channels", "dtype"),
    [
        (".png", 3, np.uint8),
        (".png", 3, np.uint16),
        (".png", 1, np.uint16),
        (".tif", 3, np.uint16),
        (".jpg", 3, np.uint8),
        (".bmp", 1, np.uint8),
    ],
)
def test_every_reader_keeps_the_limit_its_variable_sets(
    suffix: str, channels: int, dtype: type, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, np.iinfo(dtype).max, (30, 40, channels), dtype=dtype, endpoint=True)
    path = tmp_path / f"x{suffix}"
    if dtype == np.uint16 and channels == 3 and suffix == ".png":
        path.write_bytes(png_bytes(image))  # Pillow cannot write 16-bit RGB
    else:
        iio.imwrite(path, image[:, :, 0] if channels == 1 else image)
    monkeypatch.setenv(IMAGE_PIXELS.env, "1199")
    with pytest.raises(UserError, match=rf"x\{suffix}: 40 x 30 = 1,200 pixels, above the limit of 1,199 per image"):
        read_image(path)
    monkeypatch.setenv(IMAGE_PIXELS.env, "1200")
    pixels, _ = read_image(path)
    assert pixels.shape == (30, 40, channels) and pixels.dtype == dtype
    if suffix != ".jpg":  # lossy
        np.testing.assert_array_equal(pixels, image)


def test_a_limit_that_is_not_a_number_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    iio.imwrite(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    monkeypatch.setenv(IMAGE_PIXELS.env, "lots")
    with pytest.raises(UserError, match=f"{IMAGE_PIXELS.env}=lots: must be a whole number of pixels"):
        read_image(tmp_path / "x.png")


def test_a_multi_page_tiff_is_refused_from_its_header(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((5, 30, 40), np.uint16))
    with pytest.raises(UserError, match=r"stack\.tif: shape \(5, 30, 40\) is not a grayscale or RGB image"):
        read_image(tmp_path / "stack.tif")


# ---------------------------------------------------------------------------------------------
# augmentation


def test_flips_apply_to_a_and_b_together() -> None:
    a = torch.rand(32, 3, 16, 16)
    b = torch.rand(32, 1, 16, 16)
    out_a, out_b = augment(a, b, 16, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(out_a[i], a[i].flip(2))) for i in range(len(a))]
    for i, was_flipped in enumerate(flipped):
        assert torch.equal(out_a[i], a[i].flip(2) if was_flipped else a[i])
        assert torch.equal(out_b[i], b[i].flip(2) if was_flipped else b[i])
    assert 0 < sum(flipped) < len(a)  # random: some flipped, some not


def test_no_flip_leaves_images_alone() -> None:
    a, b = torch.rand(8, 3, 16, 16), torch.rand(8, 3, 16, 16)
    out_a, out_b = augment(a, b, 16, flip=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out_a, a) and torch.equal(out_b, b)


def crop_offset(crop: torch.Tensor, image: torch.Tensor) -> tuple[int, int]:
    size = crop.shape[-1]
    for top in range(image.shape[-2] - size + 1):
        for left in range(image.shape[-1] - size + 1):
            if torch.equal(image[:, top : top + size, left : left + size], crop):
                return top, left
    raise AssertionError("the crop is not a window of the image")


def test_jitter_crops_a_and_b_at_the_same_offsets() -> None:
    a, b = torch.rand(16, 3, 40, 40), torch.rand(16, 3, 40, 40)
    out_a, out_b = augment(a, b, 32, flip=False, generator=torch.Generator().manual_seed(0))
    assert out_a.shape == out_b.shape == (16, 3, 32, 32)
    offsets = [crop_offset(out_a[i], a[i]) for i in range(len(a))]
    for i, (top, left) in enumerate(offsets):
        assert torch.equal(out_b[i], b[i, :, top : top + 32, left : left + 32])
    assert len(set(offsets)) > 1


def test_jitter_loads_training_images_larger(paired_folder: MakeFolder) -> None:
    data = load_paired_data(str(paired_folder(count=10).root), 32, jitter=True)
    assert data.splits["train"].a.shape[-1] == 36  # 32 * 286 / 256, cropped back to 32 per batch
    assert data.splits["val"].a.shape[-1] == data.splits["test"].a.shape[-1] == 32
