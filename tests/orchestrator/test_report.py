"""The HTML report: self-contained, escaped, complete; and the CLI's one-line errors."""

from __future__ import annotations

import base64
import html
import html.parser
import io
import json
import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from PIL import Image

from orchestrator import report
from orchestrator.report import cli, load, plots
from orchestrator.report.page import val_ssim_lines
from orchestrator.report.text import fmt
from orchestrator.spec import Param
from orchestrator.tracking.report import build_wandb_report
from orchestrator.tracking.runs import open_trial_logger
from orchestrator.trials.study import load_study, write_study
from trainer.export import CARD, SAMPLES
from trainer.visualize import save_grid

SPACE = {
    p.name: p
    for p in (
        Param("lambda_l1", "float", 10.0, 500.0, log=True),
        Param("dropout", "float", 0.0, 0.6),
        Param("batch_size", "int", 8, 32),
        Param("lr_policy", "categorical", choices=("linear", "cosine")),
    )
}
SCRIPT = "<script>alert(1)</script>"
EPOCHS = 6
STATUSES = ["finished", "stopped_asha", "finished", "stopped_plateau", "finished", "stopped_asha", "failed"]


def history(rng: np.random.Generator, epochs: int, ceiling: float) -> list[dict]:
    rows, ssim = [], 0.3
    for epoch in range(1, epochs + 1):
        ssim += (ceiling - ssim) * 0.4 + rng.normal(0, 0.01)
        rows.append(
            {
                "epoch": epoch, "val_ssim": ssim, "val_psnr": 10 + 10 * ssim, "val_mae": 0.5 - 0.4 * ssim,
                "G_GAN": 0.7 + rng.normal(0, 0.05), "G_L1": 0.3 - 0.02 * epoch, "D_real": 0.6, "D_fake": 0.6,
                "lr_G": 2e-4, "lr_D": 2e-4,
            }
        )  # fmt: skip
    return rows


def trial(i: int, status: str, rng: np.random.Generator) -> dict:
    params = {
        "lambda_l1": float(10 * (50 ** rng.random())),
        "dropout": round(float(rng.uniform(0, 0.6)), 3),
        "batch_size": int(rng.integers(8, 33)),
        "lr_policy": ["linear", "cosine"][i % 2],
    }
    epochs = {"finished": EPOCHS, "stopped_asha": 2, "stopped_plateau": 4, "failed": 0}[status]
    rows = history(rng, epochs, ceiling=0.5 + 0.05 * i)
    best = max(rows, key=lambda h: h["val_ssim"]) if rows else None
    return {
        "trial_id": f"a1b2c_{i:05d}",
        "status": status,
        "reason": f"RuntimeError: out of memory {SCRIPT}" if status == "failed" else status.replace("_", " "),
        "params": params,
        "history": rows,
        "epochs": epochs,
        "best_val_ssim": best["val_ssim"] if best else None,
        "best_epoch": best["epoch"] if best else None,
    }


def study_trial(t: dict) -> optuna.trial.FrozenTrial:
    """A summary trial as the search's study holds it (orchestrator.trials.study.StudyWriter): valued by its
    best val SSIM, or FAIL."""
    failed = t["status"] == "failed" or t["best_val_ssim"] is None
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState.FAIL if failed else optuna.trial.TrialState.COMPLETE,
        value=None if failed else t["best_val_ssim"],
        params=t["params"],
        distributions={n: p.distribution() for n, p in SPACE.items()},
        user_attrs={"trial_id": t["trial_id"], "end_reason": t["status"]},
        intermediate_values={h["epoch"]: h["val_ssim"] for h in t["history"]},
    )


def reference_records(trials: list[dict]) -> dict[str, dict]:
    """The first two trials as the paper's-settings and L1-only references, as
    orchestrator.trials.references records them."""
    labels = {"paper": "paper's settings", "l1_only": "L1 only (paper's settings, no discriminator)"}
    return {
        kind: {
            "label": label,
            "trial_id": t["trial_id"],
            "status": t["status"],
            "params": t["params"],
            "best_epoch": t["best_epoch"],
            "val": {"val_ssim": t["best_val_ssim"], "val_psnr": 15.5, "val_mae": 0.2},
            "test": {"test_ssim": test_ssim, "test_psnr": 16.25, "test_mae": 0.175},
        }
        for (kind, label), t, test_ssim in zip(
            labels.items(), [t for t in trials if t["best_val_ssim"] is not None], (0.8831, 0.8972)
        )
    }


def make_experiment(folder: Path, trials: list[dict], with_best: bool = True, with_study: bool = True) -> Path:
    """A finished search's folder: summary.json, optuna.db, best/model_card.json and best/samples.png."""
    scored = [t for t in trials if t["best_val_ssim"] is not None]
    best_trial = max(scored, key=lambda t: t["best_val_ssim"]) if scored and with_best else None
    best = None
    if best_trial is not None:
        best = {
            "trial_id": best_trial["trial_id"],
            "kind": "searched",
            "kind_label": "a trial the search suggested",
            "params": best_trial["params"],
            "epoch": best_trial["best_epoch"],
            "val": {"val_ssim": best_trial["best_val_ssim"], "val_psnr": 17.0, "val_mae": 0.1},
            "baseline_val": {"name": "identity", "val_ssim": 0.6125, "val_psnr": 14.0, "val_mae": 0.3},
            "test": {"test_ssim": 0.91, "test_psnr": 21.3, "test_mae": 0.06},
            "baseline_test": {"name": "identity", "test_ssim": 0.874, "test_psnr": 17.7, "test_mae": 0.132},
            "export_dir": "best",
        }
        (folder / "best").mkdir(parents=True)
        images = torch.rand(3, 3, 3, 32, 32) * 2 - 1
        save_grid(folder / "best" / SAMPLES, *images)
        card = {"trial_id": best_trial["trial_id"], "params": best_trial["params"], "files": ["generator.pt"]}
        (folder / "best" / CARD).write_text(json.dumps(card))
    name = "glyphs <demo> & co"
    summary = {
        "name": name,
        "experiment_dir": str(folder),
        "metric": "val_ssim",
        "mode": "max",
        "data": "builtin:glyphs",
        "fixed": {"size": 32, "epochs": EPOCHS, "ngf": 8, "ndf": 8},
        "space": {n: p.describe() for n, p in SPACE.items()},
        "num_samples": len(trials),
        "wall_seconds": 754.2,
        "wandb": {"mode": "offline", "dir": str(folder / "wandb"), "sync_command": "wandb sync x"},
        "trials": trials,
        "best": best,
        "references": reference_records(trials),
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    if with_study:
        write_study(str(folder), name, [study_trial(t) for t in trials])
    return folder


class StrictParser(html.parser.HTMLParser):
    """Collects tags and every src/href; checks that each opened element is closed in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.tags: set[str] = set()
        self.links: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.links += [(tag, value or "") for name, value in attrs if name in ("src", "href")]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rng = np.random.default_rng(0)
    trials = [trial(i, status, rng) for i, status in enumerate(STATUSES)]
    return make_experiment(tmp_path_factory.mktemp("exp"), trials)


@pytest.fixture(scope="module")
def page(experiment: Path) -> str:
    path = report.write_report(experiment)
    assert path == experiment / "report.html"
    return path.read_text(encoding="utf-8")


def parse(page: str) -> StrictParser:
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.stack == [], f"unclosed elements: {parser.stack}"
    return parser


def test_report_is_well_formed_and_self_contained(page: str) -> None:
    parser = parse(page)
    assert {"html", "head", "body", "table", "img"} <= parser.tags
    assert parser.links, "the report embeds images"
    for tag, link in parser.links:
        assert tag == "img" and link.startswith("data:image/png;base64,"), (tag, link[:60])
    assert "<script" not in page and "<link" not in page and "url(" not in page


def test_embedded_images_decode_as_png(page: str) -> None:
    parser = parse(page)
    for _, link in parser.links:
        image = Image.open(io.BytesIO(base64.b64decode(link.split(",", 1)[1])))
        image.verify()
        assert image.format == "PNG"
    # the val-SSIM plot, the parameter scatter, parallel coordinates, importance and best/samples.png
    assert len(parser.links) == 5


def test_report_names_every_trial_and_escapes_text(page: str, experiment: Path) -> None:
    summary = json.loads((experiment / "summary.json").read_text())
    for t in summary["trials"]:
        assert t["trial_id"] in page
    assert "glyphs &lt;demo&gt; &amp; co" in page and "<demo>" not in page
    for name in SPACE:
        assert name in page
    assert "RuntimeError: out of memory" in page
    assert "Parameter importance" in page and "PED-ANOVA" in page


def test_the_best_trial_is_shown_beside_both_references(page: str, experiment: Path) -> None:
    summary = json.loads((experiment / "summary.json").read_text())
    section = page[page.index("Best trial against the references") :]
    table = section[: section.index("</table>")]
    assert "best trial (exported): a trial the search suggested" in table and summary["best"]["trial_id"] in table
    for record in summary["references"].values():
        assert record["label"] in html.unescape(table) and record["trial_id"] in table
        assert fmt(record["test"]["test_ssim"]) in table and fmt(record["val"]["val_ssim"]) in table


def test_the_curves_plot_draws_the_baseline_and_both_references_across(experiment: Path) -> None:
    summary = json.loads((experiment / "summary.json").read_text())
    paper, l1_only = summary["references"]["paper"], summary["references"]["l1_only"]
    assert val_ssim_lines(summary) == [
        ("identity (output = input) baseline", 0.6125),
        (paper["label"], paper["val"]["val_ssim"]),
        (l1_only["label"], l1_only["val"]["val_ssim"]),
    ]


def test_test_metrics_table_compares_with_identity(page: str) -> None:
    section = page[page.index("Test metrics against the baseline") :]
    table = section[: section.index("</table>")]
    for text in (
        "SSIM",
        "PSNR (dB)",
        "MAE",
        "identity (output = input) baseline",
        "0.91",
        "0.874",
        "21.3",
        "17.7",
        "0.06",
        "0.132",
    ):
        assert text in table, text
    assert table.count(">yes<") == 3  # the model beats the identity baseline on all three


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_report_without_best_and_with_few_trials(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    trials = [trial(0, "failed", rng), trial(1, "stopped_asha", rng)]
    folder = make_experiment(tmp_path / "exp", trials, with_best=False)
    page = report.write_report(folder).read_text()
    parse(page)
    assert "needs at least 4 trials" in page
    assert "No best/samples.png was exported" in page and "No test metrics" in page
    assert all(t["trial_id"] in page for t in trials)


def test_param_importances_are_optunas_on_the_studys_trials(experiment: Path) -> None:
    summary = load.load_summary(experiment)
    importances = load.param_importances(experiment, summary["name"])
    assert isinstance(importances, dict) and set(importances) == set(SPACE)
    assert math.isclose(sum(importances.values()), 1.0, rel_tol=1e-6)
    expected = optuna.importance.get_param_importances(load_study(experiment, summary["name"]))
    assert importances == pytest.approx(expected)


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_report_without_a_study_says_why_there_are_no_importances(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    trials = [trial(i, "finished", rng) for i in range(5)]
    folder = make_experiment(tmp_path / "exp", trials, with_study=False)
    page = report.write_report(folder).read_text()
    parse(page)
    assert "No Optuna study (optuna.db)" in page
    assert not (folder / "optuna.db").exists(), "reading the report must not create a study file"


def test_a_reason_with_markup_is_shown_as_text(page: str) -> None:
    assert SCRIPT not in page
    assert "RuntimeError: out of memory &lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_val_ssim_axis_starts_at_a_quantile_not_the_worst_epoch() -> None:
    # Every trial starts near 0.3 and the good ones end near 0.9: the first epochs must not set the scale.
    curves = [[0.3, 0.7, 0.85, 0.88, 0.9, 0.91]] * 6 + [[0.31, 0.8, 0.86, 0.87]]
    low, high = plots.curves_y_limits(curves)
    assert 0.6 < low < 0.8 and 0.91 < high < 0.95
    # A baseline (or reference) line far from the curves widens the axis: it is never clipped away.
    low, high = plots.curves_y_limits(curves, [0.5, 0.97])
    assert low < 0.5 and high > 0.97


@pytest.mark.parametrize("low, high", [(1e-5, 1e-3), (10.0, 500.0), (1e-6, 1.0)])
def test_log_axis_ticks_are_few_and_short(low: float, high: float) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 3.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    spec = Param("p", "float", low, high, log=True).describe()
    ax.plot(plots.scatter_axis(ax, spec, [low, high]), [0, 1])
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    labels = [t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi and t.get_text()]
    assert 2 <= len(labels) <= 6 and max(map(len, labels)) <= 6, labels


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_cli_exits_2_with_one_line_for_a_missing_folder(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "orchestrator.report", str(tmp_path / "nope")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == f"error: {tmp_path / 'nope'}: experiment folder not found\n"


@pytest.mark.parametrize("content", ["{not json", '{"name": "x"}', '{"name": "x", "trials": [1]}', "[]"])
def test_cli_exits_2_with_one_line_for_an_invalid_summary(tmp_path: Path, content: str, capsys) -> None:
    (tmp_path / "summary.json").write_text(content)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "report.html").exists()


@pytest.mark.slow  # seconds: a subprocess, a training or a W&B run (tests/conftest.py: tiers)
def test_cli_online_without_network_writes_html_and_says_so_once(
    experiment: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    pytest.importorskip("wandb_workspaces")
    folder = tmp_path / "exp"
    shutil.copytree(experiment, folder)
    summary = json.loads((folder / "summary.json").read_text())
    summary["wandb"]["project"] = "pix2pix-tune"
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "report.html").unlink(missing_ok=True)
    monkeypatch.setenv("WANDB_API_KEY", "fake-key-" + "0" * 32)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{s.getsockname()[1]}")
    assert cli.main([str(folder), "--wandb", "online"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"report: {folder / 'report.html'}"
    assert len(lines) == 2 and "unreachable" in lines[1] and "HTML report is written" in lines[1]
    assert (folder / "report.html").is_file()


def test_wandb_report_object_builds_offline(experiment: Path) -> None:
    pytest.importorskip("wandb_workspaces")
    summary = load.load_summary(experiment)
    built = build_wandb_report(summary, project="pix2pix-tune", entity="someone")
    grid = built.blocks[-1]
    kinds = {type(p).__name__ for p in grid.panels}
    assert {"LinePlot", "ParallelCoordinatesPlot", "ParameterImportancePlot", "ScatterPlot", "MediaBrowser"} <= kinds
    assert "glyphs <demo> & co" in str(grid.runsets[0].filters)


@pytest.mark.slow  # trains for seconds (tests/conftest.py: tiers)
def test_report_lists_the_offline_runs_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))  # keep wandb's staging out of $HOME
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    rng = np.random.default_rng(2)
    trials = [trial(i, "finished", rng) for i in range(2)]
    folder = make_experiment(tmp_path / "exp", trials)
    for t in trials:
        logger = open_trial_logger("offline", "pix2pix-tune", "demo", t["trial_id"], t["params"], folder)
        for row in t["history"]:
            logger.log_metrics(row, epoch=row["epoch"])
        logger.log_image("val_samples", np.zeros((8, 26, 3), np.uint8), epoch=EPOCHS)
        logger.finish({"best_val_ssim": t["best_val_ssim"], "end_reason": "finished"})
    page = report.write_report(folder).read_text()
    section = page[page.index("Weights &amp; Biases") :]
    for t in trials:  # run name, job type, steps logged, images
        row = f'<td>{t["trial_id"]}</td><td>trial</td><td class="num">{EPOCHS}</td><td class="num">1</td>'
        assert row in section
