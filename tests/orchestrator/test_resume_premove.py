"""A search started before the code was arranged by purpose (orchestrator.compat.MOVED_MODULES)
resumes after it: Tune unpickles its callbacks and searcher by the old module paths."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

from search_cli import ROOT, search_command, search_env

from orchestrator import search

STORED = ROOT / "tests" / "data" / "premove-experiment.tar.gz"  # made by tests/data/premove.yaml, then Ctrl-C


def test_a_search_started_before_the_layout_move_resumes_with_its_trials_and_one_more(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    with tarfile.open(STORED) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = tmp_path / "premove"
    before = json.loads((folder / "summary.json").read_text())
    assert before["state"] == "interrupted"
    assert "interrupted" in {t["status"] for t in before["trials"]}
    assert b"orchestrator.endings" in (folder / "tuner.pkl").read_bytes()  # pickled by the old path

    resume = search_command(tmp_path, "premove", "--resume", "--num-samples", "4", "--wandb", "off",
                            config=folder / "spec.yaml")  # fmt: skip
    done = subprocess.run(resume, env=search_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    after = json.loads((folder / "summary.json").read_text())
    assert after["state"] == "finished"
    old_ids = {t["trial_id"] for t in before["trials"]}
    statuses = {t["trial_id"]: t["status"] for t in after["trials"]}
    assert old_ids < set(statuses) and len(statuses) == 4  # the stored trials kept, one more run
    assert "interrupted" not in statuses.values()  # the interrupted trial was continued
    assert (folder / "best" / "model_card.json").is_file()

    # Resumed again (in this process: it ends before Ray starts), the finished search says so and
    # changes nothing.
    finished = (folder / "summary.json").read_bytes()
    monkeypatch.chdir(tmp_path)
    assert search.main(resume[3:]) == 0
    assert "this search is complete (4 trials); nothing to resume" in capsys.readouterr().out
    assert (folder / "summary.json").read_bytes() == finished
