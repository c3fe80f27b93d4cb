"""Medical data: NIfTI volumes split by subject, intensity mappings, whole-volume predict and metrics.

Every volume here is a real NIfTI file written and read by nibabel; volumes are tiny (about 20 x 16 x 12)
so that a real training run, an export and a prediction take seconds.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import nibabel as nib
import numpy as np
import pytest
import torch
from search_cli import ROOT
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from trainer import evaluate as evaluate_cli
from trainer import predict as predict_cli
from trainer import train as train_cli
from trainer.builtin import PHANTOM_SUBJECTS, phantom_subject
from trainer.checkpoint import BEST, RunState, load_torch
from trainer.config import TrainConfig
from trainer.data import SPLIT_FILE, SPLITS, ReadOptions, count_train_pairs, load_paired_data, load_run_data
from trainer.data.intensity import IntensityMap
from trainer.errors import UserError
from trainer.export import CARD, export_generator
from trainer.loop import train
from trainer.metrics import volume_metrics
from trainer.translation import translate_ras

SHAPE = (20, 16, 12)
AFFINE = np.array([[2.0, 0, 0, -20], [0, 2.0, 0, -16], [0, 0, 3.0, -18], [0, 0, 0, 1]])
HU_WINDOW = {"intensity": "window", "window_low_b": -1000.0, "window_high_b": 2000.0}


def head(index: int, shape: tuple[int, int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(MR-like A, CT-like B in HU) of a tiny ellipsoid head with a bone shell, its size set by index."""
    rng = np.random.default_rng(index)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"), -1)
    r = np.sqrt(((grid / (0.75 + 0.02 * index)) ** 2).sum(-1))
    body, bone = r < 1.0, (r > 0.8) & (r < 1.0)
    mr = np.where(body, 600.0, 0.0) - 500.0 * bone + rng.normal(0, 5, shape)
    ct = np.where(body, 40.0, -1000.0) + 1000.0 * bone + rng.normal(0, 5, shape)
    return np.abs(mr).astype(np.float32), ct.astype(np.float32)


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.header["descrip"] = b"pix2pix-tune test"
    nib.save(image, path)


def write_subjects(root: Path, count: int = 8, masks: bool = False) -> Path:
    for i in range(count):
        mr, ct = head(i)
        save(root / "A" / f"sub{i:02d}.nii.gz", mr)
        save(root / "B" / f"sub{i:02d}.nii.gz", ct)
        if masks:
            save(root / "mask" / f"sub{i:02d}.nii.gz", (ct > -500).astype(np.uint8))
    return root


def options(**changes: object) -> ReadOptions:
    return ReadOptions.of(TrainConfig(**changes))


def subject_of(slice_name: str) -> str:
    return slice_name.split(":")[0]


# ---------------------------------------------------------------------------------------------
# volumes and the split


def test_volumes_split_by_subject_never_by_slice_on_all_three_axes(tmp_path: Path) -> None:
    root = write_subjects(tmp_path / "data", count=10)
    data = load_paired_data(str(root), 32, split_seed=1, run_dir=tmp_path / "run", options=options(slice_axis="all"))
    saved = json.loads((tmp_path / "run" / SPLIT_FILE).read_text())["splits"]
    assert saved == data.split_names
    assert sorted(sum(saved.values(), [])) == [f"sub{i:02d}" for i in range(10)]
    assert {s: len(saved[s]) for s in SPLITS} == {"train": 6, "val": 2, "test": 2}
    for split, images in data.splits.items():
        assert {subject_of(n) for n in images.names} == set(saved[split])  # slices only of that split's subjects
        assert {n.split(":")[1][:-3] for n in images.names} == {"axial", "coronal", "sagittal"}
        assert images.a.dtype == np.float32 and images.a.shape[1:] == (1, 32, 32)  # resized: no exact smaller type
    subjects = [{subject_of(n) for n in images.names} for images in data.splits.values()]
    assert not (subjects[0] & subjects[1] or subjects[0] & subjects[2] or subjects[1] & subjects[2])

    few = load_paired_data(str(root), 32, split_seed=1, max_train_images=12, options=options(slice_axis="all"))
    assert len(few.splits["train"]) == 12 and few.split_names == data.split_names
    assert {subject_of(n) for n in few.splits["train"].names} == set(saved["train"])  # spread over every subject


def test_slices_follow_the_affine_not_the_voxel_order(tmp_path: Path) -> None:
    """One head stored three ways (RAS, left-right flipped, axes permuted) gives the same axial slices."""
    mr, ct = head(0)
    flipped = AFFINE.copy()
    flipped[0, 0], flipped[0, 3] = -2.0, 18.0  # voxel i runs right to left over the same positions
    permuted = AFFINE[:, [2, 0, 1, 3]]  # voxel axes stored as (S, R, A)
    stored = {
        "train": (mr, ct, AFFINE),
        "val": (mr[::-1], ct[::-1], flipped),
        "test": (mr.transpose(2, 0, 1), ct.transpose(2, 0, 1), permuted),
    }
    for split, (a, b, affine) in stored.items():
        save(tmp_path / split / "A" / "head.nii", np.ascontiguousarray(a), affine)
        save(tmp_path / split / "B" / "head.nii", np.ascontiguousarray(b), affine)
    data = load_paired_data(str(tmp_path), 32, options=options(**HU_WINDOW))
    train = data.splits["train"]
    for split in ("val", "test"):
        assert data.splits[split].names == train.names
        np.testing.assert_allclose(data.splits[split].b, train.b, rtol=1.3e-6, atol=1e-5)  # torch float32 tolerances


def test_mask_folder_chooses_the_slices(tmp_path: Path) -> None:
    root = write_subjects(tmp_path / "data", count=4, masks=True)
    for i in range(4):  # a mask covering only the middle axial slice of each subject
        mask = np.zeros(SHAPE, np.uint8)
        mask[:, :, 6] = 1
        save(root / "mask" / f"sub{i:02d}.nii.gz", mask)
    data = load_paired_data(str(root), 32)
    assert all(name.endswith(":axial006") for images in data.splits.values() for name in images.names)


def test_direction_BtoA_swaps_input_and_target(tmp_path: Path) -> None:
    root = write_subjects(tmp_path / "data", count=4)
    forward = load_paired_data(str(root), 32, options=options(**HU_WINDOW))
    backward = load_paired_data(str(root), 32, options=options(direction="BtoA", **HU_WINDOW))
    a, b = forward.splits["train"].batch(torch.arange(4))
    b_as_input, a_as_target = backward.splits["train"].batch(torch.arange(4))
    torch.testing.assert_close(b_as_input, b)
    torch.testing.assert_close(a_as_target, a)
    assert backward.input_side == "B" and backward.maps == forward.maps


# ---------------------------------------------------------------------------------------------
# intensities


def test_percentile_is_fitted_on_the_training_split_only(tmp_path: Path) -> None:
    root = write_subjects(tmp_path / "data", count=8)
    first = load_paired_data(str(root), 32, run_dir=tmp_path / "run")
    assert first.maps["A"].mode == first.maps["B"].mode == "percentile"  # float volumes default to percentile
    train = first.splits["train"]
    assert first.maps["B"].low == pytest.approx(np.percentile(np.asarray(train.b, np.float64), 0.5))
    assert first.maps["B"].high == pytest.approx(np.percentile(np.asarray(train.b, np.float64), 99.5))
    test_subject = first.split_names["test"][0]
    _, ct = head(int(test_subject[3:]))
    save(root / "B" / f"{test_subject}.nii.gz", ct * 100)  # a held-out subject changes: the mapping does not
    again = load_paired_data(str(root), 32, run_dir=tmp_path / "run")
    assert again.maps == first.maps


def test_window_maps_given_sides_and_percentile_the_others(tmp_path: Path) -> None:
    data = load_paired_data(str(write_subjects(tmp_path / "data", count=4)), 32, options=options(**HU_WINDOW))
    assert data.maps["B"] == IntensityMap("window", -1000.0, 2000.0)
    assert data.maps["A"].mode == "percentile"
    _, b = data.splits["train"].batch(torch.arange(len(data.splits["train"])))
    raw = torch.from_numpy(np.array(data.splits["train"].b, np.float32))  # a copy: the map is read-only
    torch.testing.assert_close(b, ((raw + 1000) / 1500 - 1).clamp(-1, 1))


def test_a_volume_through_an_identity_mapping_comes_back_in_hu() -> None:
    _, ct = head(3, shape=(16, 16, 8))
    window = IntensityMap("window", -1000.0, 2000.0)
    for slice_axis in ("axial", "all"):
        back = translate_ras(ct, lambda x: x, 16, window, window, slice_axis)
        assert back.dtype == np.float32 and back.shape == ct.shape
        np.testing.assert_allclose(back, np.clip(ct, -1000, 2000), atol=1e-3)  # float32 steps of a 3000 HU range


def test_a_12_bit_export_in_16_bit_files_warns_with_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        for side in ("A", "B"):
            (tmp_path / side).mkdir(exist_ok=True)
            iio.imwrite(tmp_path / side / f"x{i}.png", rng.integers(0, 4096, (32, 32), dtype=np.uint16))
    load_paired_data(str(tmp_path), 32)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("below 4096" in line and "--intensity window" in line for line in err)
    windowed = load_paired_data(str(tmp_path), 32, options=options(intensity="window", window_high_a=4095.0))
    assert windowed.maps["A"] == IntensityMap("window", 0.0, 4095.0)
    assert windowed.maps["B"].mode == "percentile"  # a side without a window of its own
    assert capsys.readouterr().err == ""


def test_minmax_on_image_files_is_fitted_on_training_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for i in range(5):
        for side in ("A", "B"):
            (tmp_path / side).mkdir(exist_ok=True)
            iio.imwrite(tmp_path / side / f"x{i}.png", rng.integers(100, 200, (32, 32), dtype=np.uint8))
    data = load_paired_data(str(tmp_path), 32, options=options(intensity="minmax"))
    train = data.splits["train"]
    assert data.maps["A"] == IntensityMap("minmax", float(train.a.min()), float(train.a.max()))
    a, _ = train.batch(torch.arange(len(train)))
    assert a.min() == -1 and a.max() == 1


def test_window_needs_numbers() -> None:
    with pytest.raises(UserError, match="window needs"):
        TrainConfig(intensity="window")
    with pytest.raises(UserError, match="window_high_b must be above"):
        TrainConfig(intensity="window", window_low_b=100.0, window_high_b=-100.0)


# ---------------------------------------------------------------------------------------------
# bad input: one line naming the file, exit code 2, nothing written


def four_d(root: Path) -> str:
    save(root / "A" / "sub01.nii.gz", np.zeros((*SHAPE, 2), np.float32))
    return "sub01.nii.gz: is a 4D volume"


def nan_voxels(root: Path) -> str:
    mr, _ = head(1)
    mr[3, 3, 3] = np.nan
    save(root / "A" / "sub01.nii.gz", mr)
    return "sub01.nii.gz: has 1 NaN or infinite voxels"


def shape_mismatch(root: Path) -> str:
    save(root / "B" / "sub02.nii.gz", np.zeros((20, 16, 11), np.float32))
    return "B/sub02.nii.gz: shape (20, 16, 11) differs"


def affine_mismatch(root: Path) -> str:
    shifted = AFFINE.copy()
    shifted[0, 3] += 4.0
    save(root / "B" / "sub02.nii.gz", head(2)[1], shifted)
    return "B/sub02.nii.gz: affine differs"


def unreadable(root: Path) -> str:
    (root / "A" / "sub03.nii.gz").write_bytes(b"not a volume")
    return "sub03.nii.gz: cannot be read as NIfTI"


def huge_header(root: Path) -> str:
    """A header declaring 2048^3 voxels over a few bytes of data: refused from the header."""
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.uint8)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    with gzip.open(root / "A" / "sub01.nii.gz", "wb") as f:
        f.write(header.binaryblock + bytes(4 + 64))  # the header, its 4-byte extension flag, 64 voxels
    return "sub01.nii.gz: 2048 x 2048 x 2048 = 8,589,934,592 voxels, above the limit of 268,435,456 per volume"


def missing_mask(root: Path) -> str:
    save(root / "mask" / "sub00.nii.gz", np.ones(SHAPE, np.uint8))
    return "mask: has no mask named sub01"


@pytest.mark.parametrize(
    "spoil", [four_d, nan_voxels, shape_mismatch, affine_mismatch, unreadable, huge_header, missing_mask]
)
def test_bad_volumes_stop_with_one_line_and_write_nothing(
    spoil: Callable[[Path], str], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = write_subjects(tmp_path / "data", count=4)
    expected = spoil(root)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(["--data", str(root), "--size", "32", "--device", "cpu", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# train -> evaluate -> export -> predict on whole volumes


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TrainConfig]:
    """A real (tiny, one-epoch) MR -> CT run on 8 subjects, and its export as a search would write it."""
    root = write_subjects(tmp_path_factory.mktemp("volumes") / "data", count=8, masks=True)
    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(
        data=str(root), size=32, batch_size=8, ngf=8, ndf=8, epochs=1, device="cpu", precision="fp32", **HU_WINDOW
    )
    for _ in train(cfg, run_dir):
        pass
    data = load_run_data(cfg, run_dir)
    card = {"train_config": cfg.to_dict(), "direction": cfg.direction, "intensity": data.intensity_record()}
    export = run_dir / "export"
    export_generator(RunState.load(run_dir / BEST).generator(), export, card)
    return run_dir, export, cfg


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_evaluate_reports_each_test_subject_in_hu(trained: tuple[Path, Path, TrainConfig]) -> None:
    run_dir, _, cfg = trained
    result = evaluate_cli.evaluate_checkpoint(run_dir / BEST, "test", device="cpu")
    assert result.baseline_name == "mean_image"  # MR and CT do not share units
    scores = result.volumes
    test_subjects = json.loads((run_dir / SPLIT_FILE).read_text())["splits"]["test"]
    assert sorted(scores.model) == sorted(scores.baseline) == sorted(test_subjects)
    assert scores.value_range == (-1000.0, 2000.0)
    assert all(0 < s["mae"] < 3000 and -1 <= s["ssim"] <= 1 for s in scores.model.values())
    assert load_torch(run_dir / BEST)["intensity"]["B"] == {"mode": "window", "low": -1000.0, "high": 2000.0}


def test_export_config_and_onnx_say_the_hu_window(trained: tuple[Path, Path, TrainConfig]) -> None:
    import onnx

    _, export, _ = trained
    config = json.loads((export / "config.json").read_text())
    assert config["direction"] == "AtoB"
    assert config["intensity_mapping"]["output"] == {"mode": "window", "low": -1000.0, "high": 2000.0}
    meta = {p.key: p.value for p in onnx.load(str(export / "generator.onnx")).metadata_props}
    assert json.loads(meta["intensity_mapping"]) == config["intensity_mapping"]


def test_predict_writes_nifti_with_the_inputs_affine_and_header(
    trained: tuple[Path, Path, TrainConfig], tmp_path: Path
) -> None:
    run_dir, export, cfg = trained
    subject = json.loads((run_dir / SPLIT_FILE).read_text())["splits"]["test"][0]
    source = Path(cfg.data) / "A" / f"{subject}.nii.gz"
    predict_cli.main(["--model", str(export), "--input", str(source), "--output", str(tmp_path / "out")])
    written, original = nib.load(tmp_path / "out" / source.name), nib.load(source)
    np.testing.assert_array_equal(written.affine, original.affine)
    assert written.shape == original.shape and written.get_data_dtype() == np.float32
    for key in ("pixdim", "qform_code", "sform_code", "xyzt_units", "descrip", "dim"):
        np.testing.assert_array_equal(written.header[key], original.header[key])
    values = written.get_fdata()
    assert -1000.0 - 1e-3 <= values.min() and values.max() <= 2000.0 + 1e-3  # in HU, inside the window

    # whole-volume predict is what evaluate scored: same volume, same numbers
    G, card = predict_cli.load_generator(export)
    prep = predict_cli.Preprocessing.from_card(card)
    ras = predict_cli.read_volume(source).to_ras()
    with torch.no_grad():
        expected = translate_ras(ras, G, cfg.size, prep.input_map, prep.output_map, "axial")
    np.testing.assert_allclose(nib.as_closest_canonical(written).get_fdata(), expected, atol=1e-3)


def test_predict_refuses_volumes_for_a_model_without_mapping(
    trained: tuple[Path, Path, TrainConfig], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    _, export, _ = trained
    old = tmp_path / "old"
    shutil.copytree(export, old)
    card = json.loads((old / CARD).read_text())
    (old / CARD).write_text(json.dumps({k: v for k, v in card.items() if k != "intensity"}))  # a 2D-era card
    save(tmp_path / "in.nii.gz", head(0)[0])
    argv = ["--model", str(old), "--input", str(tmp_path / "in.nii.gz"), "--output", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(argv)
    assert exit_info.value.code == 2
    assert "volumes need a model trained on volumes" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_predict_follows_the_direction_in_the_card() -> None:
    maps = {"A": {"mode": "percentile", "low": 0.0, "high": 700.0}, "B": {"mode": "window", "low": -1000, "high": 2000}}
    forward = predict_cli.Preprocessing.from_card({"intensity": maps, "train_config": {"slice_axis": "all"}})
    backward = predict_cli.Preprocessing.from_card({"intensity": maps, "direction": "BtoA"})
    assert forward.input_map == backward.output_map == IntensityMap("percentile", 0.0, 700.0)
    assert forward.output_map == backward.input_map == IntensityMap("window", -1000.0, 2000.0)
    assert (forward.slice_axis, backward.slice_axis) == ("all", "axial")


def test_predict_maps_16_bit_images_with_the_saved_window() -> None:
    from trainer.config import GeneratorConfig
    from trainer.models import UNetGenerator

    G = UNetGenerator(GeneratorConfig(1, 1, 32, ngf=8))
    window = IntensityMap("window", 0.0, 4095.0)
    image = np.random.default_rng(0).integers(0, 4096, (32, 32, 1), dtype=np.uint16)
    x = predict_cli.to_model_input(image, 65535, G, window)
    torch.testing.assert_close(x[0, 0], torch.from_numpy(image[:, :, 0] / 4095 * 2 - 1).float())
    back = predict_cli.to_image(x[0], 32, 32, 65535, window)  # 12-bit values come back as they were
    np.testing.assert_array_equal(back, image)


# ---------------------------------------------------------------------------------------------
# metrics in physical units, against scikit-image


def test_volume_metrics_agree_with_skimage() -> None:
    rng = np.random.default_rng(0)
    _, target = head(2, shape=(16, 16, 12))
    output = target + rng.normal(0, 60, target.shape).astype(np.float32)
    mask = target > -500
    scores = volume_metrics(output, target, mask, (-1024.0, 3000.0))
    assert scores["mae"] == pytest.approx(np.abs(output - target)[mask].mean(), rel=1e-6)
    clipped_out, clipped_target = np.clip(output, -1024, 3000) + 1024, np.clip(target, -1024, 3000) + 1024
    psnr = peak_signal_noise_ratio(clipped_target[mask], clipped_out[mask], data_range=4024)
    assert scores["psnr"] == pytest.approx(psnr, rel=1e-6)
    clipped_out[~mask] = clipped_target[~mask] = 0
    _, ssim_map = structural_similarity(clipped_target, clipped_out, data_range=4024, full=True)
    assert scores["ssim"] == pytest.approx(ssim_map[mask].mean(), rel=1e-6)
    assert volume_metrics(target, target, mask, (-1024.0, 3000.0))["ssim"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------
# the built-in phantoms


def test_phantom_subjects_are_heads_in_hu_with_their_own_pose() -> None:
    assert PHANTOM_SUBJECTS >= 12
    subjects = [phantom_subject(i) for i in (0, 1)]
    for mr, ct, mask, affine in subjects:
        assert mr.dtype == ct.dtype == np.float32 and not np.allclose(affine, np.eye(4))
        assert np.median(ct[mask == 0]) == pytest.approx(-1000, abs=20)  # air
        soft = np.median(ct[(mask == 1) & (ct > -200) & (ct < 200)])
        assert 20 <= soft <= 60
        assert 700 <= np.percentile(ct[mask == 1], 99) <= 1700  # bone
        assert mr.min() >= 0
    assert nib.aff2axcodes(subjects[0][3]) != nib.aff2axcodes(subjects[1][3])
    assert not np.array_equal(subjects[0][2], subjects[1][2])  # each head its own shape and pose


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_the_phantom_set_loads_split_by_subject_and_its_spec_searches_it() -> None:
    from orchestrator.spec import load_spec

    spec = load_spec(ROOT / "search_spaces" / "mr2ct-phantom.yaml")
    cfg = spec.trial_config({})
    assert cfg.data == "builtin:phantom-mr2ct" and cfg.window_b == (-1000.0, 2000.0)
    data = load_paired_data(cfg.data, 32, options=ReadOptions.of(cfg))  # built once into the session's cache
    assert sum(len(names) for names in data.split_names.values()) == PHANTOM_SUBJECTS
    assert {s: len(data.split_names[s]) for s in SPLITS} == {"train": 14, "val": 3, "test": 3}
    assert all(pair.mask is not None for pairs in data.files.values() for pair in pairs)
    # epochs: auto counts the training slices a trial gets: all of them, then max_train_images of them
    assert count_train_pairs(dataclasses.replace(cfg, size=32, max_train_images=0)) == len(data.splits["train"])
    assert count_train_pairs(dataclasses.replace(cfg, size=32, max_train_images=50)) == 50
