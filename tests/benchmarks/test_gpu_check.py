"""`make gpu-check` refuses to run without a GPU: one line and exit code 2, not a traceback."""

from __future__ import annotations

import pytest
import torch

from benchmarks import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: run `make gpu-check` itself")
def test_gpu_check_without_cuda_is_one_line_and_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main([])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no CUDA GPU is visible" in err, err


def test_gpu_check_rejects_unknown_parts(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        gpu_check.main(["--parts", "step,warp"])
    assert exit_.value.code == 2 and "--parts takes a comma-separated subset" in capsys.readouterr().err
