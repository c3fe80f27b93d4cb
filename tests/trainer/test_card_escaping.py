"""best/README.md shows a data path or name the user chose as text: a hub renders neither Markdown
nor HTML from it, and its front matter reads back as the same string."""

from __future__ import annotations

import html

import yaml
from markdown_it import MarkdownIt

from trainer.export.card import render_model_card

NASTY = "/data/`x`` <script>alert(1)</script> [link](http://e.test) *bold* # not a heading\n---\nkey: value"


def rendered(source: str, name: str) -> tuple[dict, str]:
    card = {"name": name, "data": {"source": source}, "test": {"test_ssim": 0.9}, "files": []}
    config = {
        "size": 32, "in_channels": 1, "out_channels": 1, "architecture": "U-Net", "value_range": [-1, 1],
        "intensity_mapping": {}, "train_config": {"data": source},
        "onnx": {"opset": 17, "input": "input", "output": "output", "file": "model.onnx"},
    }  # fmt: skip
    _, front, body = render_model_card(card, config).split("---\n", 2)
    return yaml.safe_load(front), MarkdownIt("commonmark").render(body)


def test_a_data_path_and_name_with_markup_stay_text_in_the_model_card() -> None:
    front, page = rendered(NASTY, "best <b>model</b> *of* `all`")
    assert front["model-index"][0]["results"][0]["dataset"]["name"] == NASTY
    assert front["model-index"][0]["name"] == "best <b>model</b> *of* `all`"
    assert "<script>" not in page and "<b>" not in page and "<em>" not in page and "<a href" not in page
    one_line = html.escape(" ".join(NASTY.splitlines()), quote=False)
    assert page.count(f"<code>{one_line}</code>") == 2  # the sentence and the data list
    assert "<h1>best &lt;b&gt;model&lt;/b&gt; *of* `all`</h1>" in page
