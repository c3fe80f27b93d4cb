"""A search whose --data lives in object storage: a real S3-compatible server (moto) on loopback.
The first search fetches the files once into the node's data cache; a second search on the node
finds them there and fetches nothing."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from search_cli import ROOT, search_command, search_env


def test_a_search_reads_its_data_from_s3_and_a_second_search_reuses_the_nodes_copy(tmp_path: Path, s3_data) -> None:
    uri, _ = s3_data
    flags = ["--data", uri, "--num-samples", "1", "--epochs", "1", "--no-l1-reference", "--wandb", "off"]
    env = search_env(PIX2PIX_CACHE=str(tmp_path / "cache"))  # this node's cache, empty at first
    for name, fetched in (("first", True), ("second", False)):
        done = subprocess.run(search_command(tmp_path, name, *flags), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert ("fetched 20 files" in done.stderr) == fetched, done.stderr[-2000:]
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["data"] == uri and summary["best"] is not None
