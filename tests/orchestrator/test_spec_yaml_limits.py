"""A spec file that is small on disk but huge once read: YAML aliases ("billion laughs") are refused
before they expand, and no error message echoes a value at full length."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from orchestrator.spec import load_spec
from trainer.errors import UserError

MESSAGE_CHARS = 800  # one line: the path, the key, a value cut short and at most the list of allowed names


def laughs(levels: int) -> str:
    """`levels` nested anchors of nine aliases each under train.size: 9**levels values once expanded."""
    anchors = ['&l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    anchors += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "train:\n  size: [\n    " + ",\n    ".join(anchors) + "\n  ]\n"


def refusal(tmp_path: Path, text: str) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(UserError) as err:
        load_spec(path)
    assert time.perf_counter() - started < 0.5
    message = str(err.value)
    assert len(message.splitlines()) == 1 and len(message) < MESSAGE_CHARS, message[:1000]
    return message


@pytest.mark.parametrize("levels", [9, 6, 5])
def test_a_billion_laughs_spec_is_refused_at_once_in_one_short_line(tmp_path: Path, levels: int) -> None:
    assert len(laughs(9)) < 600  # small on disk
    message = refusal(tmp_path, laughs(levels))
    assert "not valid YAML at line" in message and "aliases (*name) expand the file to more than" in message


def test_a_few_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("train:\n  size: &s 32\n  ngf: 8\n  ndf: 8\n  batch_size: *s\n")
    assert load_spec(path).train["batch_size"] == 32


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("train:\n  size: " + "x" * 100_000 + "\n", "size must be an integer (got 'xxx"),
        ("train:\n  size: [" + ", ".join(["1"] * 2000) + "]\n", "size must be an integer (got [1, 1, "),
        ("train:\n  lr_policy: " + "y" * 100_000 + "\n", "lr_policy must be one of"),
        ("search:\n  time_budget: " + "9m" * 50_000 + "\n", "search.time_budget must be a duration"),
        ("space:\n  " + "z" * 1000 + ": {type: float, low: 0, high: 1}\n", "is not a trainer parameter"),
    ],
)
def test_an_error_message_shows_a_long_value_cut_short(tmp_path: Path, text: str, named: str) -> None:
    assert named in refusal(tmp_path, text)
