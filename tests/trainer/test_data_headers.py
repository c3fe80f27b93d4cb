"""A data file that cannot be an image or a volume, among good ones, is named before a search starts
Ray: headers only, so every file is looked at in a moment."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import PairedFolder
from search_cli import TINY

from orchestrator import search
from trainer.data.headers import check_header
from trainer.errors import EXIT_USAGE, UserError


def refused_search(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    argv = ["--config", str(TINY), "--data", str(data), "--storage-path", str(tmp_path / "runs"), "--name", "x"]
    with pytest.raises(SystemExit) as exit_info:
        search.main(argv)
    assert exit_info.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "runs" / "x").exists()
    return err


@pytest.mark.parametrize(
    ("spoil", "why"),
    [(b"", "UnidentifiedImageError"), (b"GIF89a not a png at all", "UnidentifiedImageError")],
    ids=["zero bytes", "wrong magic"],
)
def test_a_search_names_an_unreadable_image_before_ray_starts(
    paired_folder: Callable[..., PairedFolder],
    tmp_path: Path,
    spoil: bytes,
    why: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = paired_folder(count=12).root
    bad = data / "B" / "img007.png"
    bad.write_bytes(spoil)
    err = refused_search(data, tmp_path, capsys)
    assert f"{bad}: cannot be read as an image ({why}); replace or remove it" in err


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.nii", "empty.tif", "empty.jpg"])
def test_each_reader_refuses_an_empty_file_from_its_header(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(UserError, match=f"{path}: cannot be read as (NIfTI|an image)"):
        check_header(path)


def test_a_header_over_the_pixel_limit_is_refused_without_decoding(
    paired_folder: Callable[..., PairedFolder], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = paired_folder(count=1, side=64).root / "A" / "img000.png"
    monkeypatch.setenv("PIX2PIX_MAX_IMAGE_PIXELS", "1000")
    started = time.perf_counter()
    with pytest.raises(UserError, match="64 x 64 = 4,096 pixels, above the limit of 1,000"):
        check_header(path)
    assert time.perf_counter() - started < 0.5
