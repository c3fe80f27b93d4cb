"""`compile: auto` on a GPU follows what `make gpu-check` measured (trainer.compile_choice)."""

from __future__ import annotations

import pytest
import torch

from benchmarks import step as bench
from trainer.compile_choice import MEASURED, Measured, measured_mode
from trainer.config import TrainConfig
from trainer.errors import UserError

H200 = "NVIDIA H200"
RECORDS = (
    Measured(H200, 256, 16, 64, "off", "test"),
    Measured(H200, 256, 64, 64, "on", "test"),
    Measured("NVIDIA L4", 256, 16, 64, "graphs", "test"),
)


def test_the_h200_measurements_are_what_auto_picks() -> None:
    # README: at 256 px batch 16 the compiled step was slower than eager (19.1 against 15.2 ms),
    # at batch 64 it was the fastest row.
    assert measured_mode(H200, 256, 16, 64) == "off"
    assert measured_mode(H200, 256, 64, 64) == "on"
    assert all(r.mode in ("off", "on", "graphs") for r in MEASURED)


def test_nearest_measured_setting_on_the_same_gpu_first() -> None:
    assert measured_mode(H200, 256, 8, 64, RECORDS) == "off"  # less work than batch 16: launch-bound too
    assert measured_mode(H200, 512, 64, 64, RECORDS) == "on"  # 4x the pixels of batch 64
    assert measured_mode(H200, 256, 32, 64, RECORDS) == "off"  # halfway in log work: a tie goes to off
    assert measured_mode("NVIDIA L4", 256, 64, 64, RECORDS) == "graphs"  # its own record, not the H200's
    assert measured_mode("NVIDIA A10", 256, 64, 64, RECORDS) == "on"  # unmeasured GPU: nearest of any GPU
    assert measured_mode("NVIDIA A10", 256, 16, 64, ()) == "off"


def test_graphs_is_a_compile_mode_and_a_gpu_only_bench_row() -> None:
    assert TrainConfig(compile="graphs").compile == "graphs"
    with pytest.raises(UserError, match="compile must be one of auto, on, off, graphs"):
        TrainConfig(compile="fast")
    cpu_rows = [r.key for r in bench.row_configs(TrainConfig(device="cpu"), torch.device("cpu"))]
    assert "graphs" not in cpu_rows and cpu_rows[-1] == "compile"
    gpu_rows = bench.row_configs(TrainConfig(device="cuda"), torch.device("cuda"))
    assert [r.key for r in gpu_rows][-2:] == ["compile", "graphs"]
    assert gpu_rows[-1].cfg.compile == "graphs" and gpu_rows[-2].cfg.compile == "on"
