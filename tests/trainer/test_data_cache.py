"""The node's data cache: one decoded copy per data set shared by processes, bit-identical training,
invalidation, damage, fallback, eviction, and data fetched from a real S3-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from conftest import PairedFolder
from test_volumes import options, write_subjects

from trainer.config import TrainConfig
from trainer.data import count_train_pairs, load_paired_data, seeded_split
from trainer.data.cache import MANIFEST, MAX_GB_ENV, SWITCH_ENV, cache_root
from trainer.loop import train

MakeFolder = Callable[..., PairedFolder]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own, empty cache folder."""
    monkeypatch.setenv("PIX2PIX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def entries(kind: str = "decoded") -> list[Path]:
    return sorted(cache_root().glob(f"{kind}-*")) if cache_root().is_dir() else []


@pytest.mark.slow  # trains for seconds / starts processes (tests/conftest.py: tiers)
def test_a_trial_on_cached_data_trains_the_same_weights_as_on_data_in_memory(
    tiny_config: Callable[..., TrainConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tiny_config(epochs=2)
    weights = {}
    for switch in ("off", "on"):
        monkeypatch.setenv(SWITCH_ENV, switch)
        *_, last = train(cfg, tmp_path / switch)
        weights[switch] = last.generator.state_dict()
    assert len(entries()) == 3  # train, val, test: the "on" run decoded into the cache
    for name, value in weights["off"].items():
        assert torch.equal(value, weights["on"][name]), name


def test_splits_are_read_only_maps_in_a_compact_type(paired_folder: MakeFolder) -> None:
    data = load_paired_data(str(paired_folder(count=10).root), 32)
    train = data.splits["train"]
    assert isinstance(train.a, np.memmap) and train.a.dtype == np.uint8 and not train.a.flags.writeable
    ct = load_paired_data(str(write_subjects(Path(os.environ["PIX2PIX_CACHE"]).parent / "vol", count=4)), 16)
    assert ct.splits["train"].b.dtype == np.float32  # resized from 20 x 16: float values, kept exactly


@pytest.mark.slow  # trains for seconds / starts processes (tests/conftest.py: tiers)
def test_concurrent_processes_decode_each_split_once(paired_folder: MakeFolder) -> None:
    root = paired_folder(count=30).root
    script = (
        "import sys, trainer.data as d\n"
        "calls = []\n"
        "decode = d.decode_images\n"
        "d.decode_images = lambda *a: calls.append(1) or decode(*a)\n"
        f"data = d.load_paired_data({str(root)!r}, 32)\n"
        "print(len(calls), len(data.splits['train']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)
    ]
    results = [run.communicate(timeout=120)[0].split() for run in runs]
    assert all(run.returncode == 0 for run in runs)
    assert sum(int(decodes) for decodes, _ in results) == 3  # one decode per split among all processes
    assert {trained for _, trained in results} == {"21"}
    assert not [p for p in cache_root().iterdir() if p.name.startswith(".") and p.is_dir()]  # no temp folder left


def test_a_changed_or_added_file_gives_a_new_entry(paired_folder: MakeFolder) -> None:
    written = paired_folder(count=10)
    first = load_paired_data(str(written.root), 32)
    name = first.split_names["train"][0]
    iio.imwrite(written.root / "A" / f"{name}.png", np.full((32, 32, 3), 7, np.uint8))
    changed = load_paired_data(str(written.root), 32)
    index = changed.splits["train"].names.index(name)
    a, _ = changed.splits["train"].units(torch.tensor([index]))
    assert (a == 7).all() and len(entries()) == 4  # the train split again; val and test unchanged
    paired_folder(count=1, root=written.root, prefix="new")
    load_paired_data(str(written.root), 32)
    assert len(entries()) > 4


def test_a_truncated_or_corrupted_entry_is_rebuilt_with_a_note(
    paired_folder: MakeFolder, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(paired_folder(count=10).root)
    before = load_paired_data(root, 32).splits["train"].units(torch.arange(6))
    capsys.readouterr()
    manifests = {json.loads((e / MANIFEST).read_text())["meta"]["names"][0]: e for e in entries()}
    train_entry = manifests[load_paired_data(root, 32).split_names["train"][0]]
    array = train_entry / "a.npy"
    for damage, why in ((lambda: os.truncate(array, array.stat().st_size - 100), "truncated"), (None, "checksum")):
        if damage is None:  # same size, other bytes: only the checksum can tell
            with open(array, "r+b") as f:
                f.seek(-50, os.SEEK_END)
                f.write(b"\xff" * 50)
        else:
            damage()
        after = load_paired_data(root, 32).splits["train"].units(torch.arange(6))
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0] and "rebuilding" in err[0], err
        assert all(torch.equal(x, y) for x, y in zip(before, after))


def test_a_cache_folder_that_cannot_be_written_falls_back_to_memory_with_one_warning(
    paired_folder: MakeFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PIX2PIX_CACHE", str(blocker / "cache"))  # like a read-only or full disk: mkdir fails
    data = load_paired_data(str(paired_folder(count=10).root), 32)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot hold the data cache" in err[0] and "into memory" in err[0], err
    assert not isinstance(data.splits["train"].a, np.memmap) and len(data.splits["train"]) == 6


def test_other_read_options_never_collide(tmp_path: Path) -> None:
    root = str(write_subjects(tmp_path / "vol", count=4))
    axial = load_paired_data(root, 16, options=options(slice_axis="axial"))
    every = load_paired_data(root, 16, options=options(slice_axis="all"))
    assert len(entries()) == 6 and len(every.splits["train"]) > len(axial.splits["train"])
    again = load_paired_data(root, 16, options=options(slice_axis="axial", intensity="minmax"))  # maps only
    assert len(entries()) == 6 and again.splits["train"].names == axial.splits["train"].names


def test_the_least_recently_used_entries_go_when_the_cache_is_full(
    paired_folder: MakeFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = paired_folder(count=10, root=tmp_path / "one")
    second = paired_folder(count=10, root=tmp_path / "two")
    load_paired_data(str(first.root), 32)
    one = entries()
    monkeypatch.setenv(MAX_GB_ENV, str(sum(f.stat().st_size for e in one for f in e.iterdir()) / 1024**3 * 1.5))
    load_paired_data(str(second.root), 32)
    assert not all(e.exists() for e in one) and len(entries()) < 6


def test_epochs_auto_on_volumes_builds_the_cache_the_trial_then_uses(tmp_path: Path) -> None:
    root = write_subjects(tmp_path / "vol", count=6)
    cfg = TrainConfig(data=str(root), size=32)
    count = count_train_pairs(cfg)
    assert len(entries()) == 1  # the training split only, kept for the trials
    assert len(load_paired_data(str(root), 32).splits["train"]) == count and len(entries()) == 3


def test_a_subject_with_an_empty_mask_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from test_volumes import SHAPE, save

    root = write_subjects(tmp_path / "vol", count=6, masks=True)
    empty = seeded_split([f"sub{i:02d}" for i in range(6)], seed=0)["train"][0]
    save(root / "mask" / f"{empty}.nii.gz", np.zeros(SHAPE, np.uint8))
    data = load_paired_data(str(root), 32)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"subject {empty} " in err[0] and "left out" in err[0], err
    assert empty in data.split_names["train"] and not [n for n in data.splits["train"].names if n.startswith(empty)]


# ---------------------------------------------------------------------------------------------
# object storage: a real S3-compatible server (moto) on loopback


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_data_in_s3_is_fetched_once_per_node(
    s3_data: tuple[str, PairedFolder], capsys: pytest.CaptureFixture[str]
) -> None:
    uri, written = s3_data
    first = load_paired_data(uri, 32)
    assert "fetched 20 files" in capsys.readouterr().err
    assert count_train_pairs(TrainConfig(data=uri, size=32)) == len(first.splits["train"]) == 6
    again = load_paired_data(uri, 32)  # a second run on the node: the listing only, nothing fetched
    assert "fetched" not in capsys.readouterr().err
    assert len(entries("remote")) == 1 and again.split_names == first.split_names
    a, _ = again.splits["train"].units(torch.arange(1))
    np.testing.assert_array_equal(a[0].permute(1, 2, 0).numpy(), written.pixels[again.split_names["train"][0]][0])
