"""README.md of an export folder: the model card a person or a model hub reads.

Rendered from the same card dict as model_card.json (and the folder's config.json), so the two
never disagree. The front matter is the Hugging Face model-card metadata (library, tags, metrics,
model-index); each value is written as JSON, which YAML reads unchanged.
"""

from __future__ import annotations

import json
import re
from typing import Any

from trainer.data import LUMA
from trainer.names import BASELINE_LABELS, METRICS

TAGS = ("pix2pix", "image-to-image", "gan", "u-net", "onnx", "safetensors")


def render_model_card(card: dict[str, Any], config: dict[str, Any]) -> str:
    return "\n".join([front_matter(card, config), *body(card, config)]) + "\n"


def front_matter(card: dict[str, Any], config: dict[str, Any]) -> str:
    lines = ["---", "library_name: pytorch", "pipeline_tag: image-to-image", "tags:"]
    lines += [f"- {tag}" for tag in TAGS]
    test = card.get("test") or {}
    if test:
        lines += ["metrics:", *(f"- {m.name}" for m in METRICS)]
        data = (card.get("data") or {}).get("source") or config.get("train_config", {}).get("data", "unknown")
        lines += [
            "model-index:",
            f"- name: {json.dumps(card.get('name', 'generator'))}",
            "  results:",
            "  - task:",
            "      type: image-to-image",
            "    dataset:",
            f"      name: {json.dumps(data)}",
            f"      type: {json.dumps(data)}",
            "      split: test",
            "    metrics:",
        ]
        for m in METRICS:
            if test.get(f"test_{m.name}") is not None:
                lines += [
                    f"    - type: {m.name}",
                    f"      value: {json.dumps(test[f'test_{m.name}'])}",
                    f"      name: {json.dumps('test ' + m.label)}",
                ]
    return "\n".join([*lines, "---"])


def body(card: dict[str, Any], config: dict[str, Any]) -> list[str]:
    train = config.get("train_config") or {}
    size, cin, cout = config["size"], config["in_channels"], config["out_channels"]
    data = card.get("data") or {}
    source = data.get("source") or train.get("data", "an unrecorded data set")
    source_code = code(str(source))  # a path the user chose: shown as text, whatever it holds
    out = [
        f"# {markdown_text(str(card.get('name', 'generator')))}",
        "",
        f"A {config['architecture']} that translates {channels(cin)} images into {channels(cout)} images "
        f"at {size}x{size} pixels, trained on {source_code}. Inputs and outputs are (N, C, {size}, {size}) float32 "
        f"arrays in [{config['value_range'][0]:g}, {config['value_range'][1]:g}].",
        "",
        "## Data",
        "",
        f"- source: {source_code}",
    ]
    if data.get("splits"):
        out.append("- split: " + ", ".join(f"{n} {name}" for name, n in data["splits"].items()) + " pairs")
    if data.get("split_hash"):
        out.append(f"- split hash: `{data['split_hash']}` (the same files give the same hash)")
    mapping = config["intensity_mapping"]
    out.append(f"- intensity mapping: `{json.dumps(mapping)}`")
    out += ["", *metrics_section(card), "", *hyperparameters_section(card), "", *usage_section(config)]
    out += ["", *limitations_section(card, config), "", "## Files", ""]
    out += [f"- `{name}`" for name in card.get("files", [])]
    provenance = [f"trial `{card['trial_id']}`" if card.get("trial_id") else ""]
    if card.get("kind_label"):  # a search's export: the best on val SSIM of its trials and reference trials
        provenance.append(f"{card['kind_label']}, the best on validation SSIM among the search's trials")
    provenance.append(f"epoch {card['epoch']}" if card.get("epoch") else "")
    versions = card.get("versions") or {}
    if any(provenance) or versions:
        out += ["", "## Provenance", ""]
        if any(provenance):
            out.append("Exported from " + ", ".join(p for p in provenance if p) + ".")
        if versions:
            out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    return out


def channels(n: int) -> str:
    return {1: "1-channel (grayscale)", 3: "3-channel (RGB)"}.get(n, f"{n}-channel")


def metrics_section(card: dict[str, Any]) -> list[str]:
    out = ["## Test metrics", ""]
    test, identity, val = card.get("test") or {}, card.get("identity_test"), card.get("val") or {}
    if not test:
        return [*out, "This export was not evaluated on a test split."]
    header = ["split", *(m.label for m in METRICS)]
    rows = [[f"test, model ({card.get('test_images', '?')} images)", *values(test, "test")]]
    if identity:
        rows.append(["test, identity baseline (output = input)", *values(identity, "test")])
    native, native_identity = card.get("test_native"), card.get("identity_test_native")
    if native:
        sizes = native_sizes(card)
        rows.append([f"test at the images' own size ({sizes}), model", *values(native, "test")])
        if native_identity:
            rows.append(
                [f"test at the images' own size ({sizes}), identity baseline", *values(native_identity, "test")]
            )
    references = (card.get("references") or {}).values()  # the search's reference trials (orchestrator)
    for reference in references:
        if reference.get("test"):
            label = f"test, {reference['label']} (trial `{reference['trial_id']}`, best epoch)"
            rows.append([label, *values(reference["test"], "test")])
    if val:
        rows.append(["validation, model", *values(val, "val")])
    for name, label in BASELINE_LABELS.items():
        if card.get(f"{name}_val"):
            rows.append([f"validation, {label} baseline", *values(card[f"{name}_val"], "val")])
    for reference in references:
        if reference.get("val"):
            label = f"validation, {reference['label']} (trial `{reference['trial_id']}`, best epoch)"
            rows.append([label, *values(reference["val"], "val")])
    out += table(header, rows)
    if native:
        out += ["", "At the images' own size the outputs are scored as `trainer.predict` writes them: resized back "
                "from the model's size to each target's size, at the input's bit depth."]  # fmt: skip
    if card.get("metrics_note"):
        out += ["", card["metrics_note"] + "."]
    return out


def describe_sizes(sizes: list[tuple[int, int]] | list[list[int]]) -> str:
    """(height, width) pairs as "128x128 px", the first three of them."""
    shown = ", ".join(f"{w}x{h}" for h, w in sizes[:3])
    return shown + (f" and {len(sizes) - 3} more" if len(sizes) > 3 else "") + " px"


def native_sizes(card: dict[str, Any]) -> str:
    return describe_sizes(card.get("test_native_sizes") or [])


def values(metrics: dict[str, Any], prefix: str) -> list[str]:
    return [fmt(metrics.get(f"{prefix}_{m.name}")) for m in METRICS]


def hyperparameters_section(card: dict[str, Any]) -> list[str]:
    out = ["## Hyperparameters", ""]
    searched = card.get("hyperparameters") or {}
    if searched:
        out += ["Chosen by the search:", "", *table(["name", "value"], [[k, fmt(v)] for k, v in searched.items()]), ""]
    schedule = card.get("schedule")
    if schedule:  # population-based training changed the values between epochs
        names = [name for name in schedule[0] if name != "epoch"]
        ends = [row["epoch"] - 1 for row in schedule[1:]] + [card["epoch"]]
        rows = [[f"{row['epoch']}-{end}", *(fmt(row[name]) for name in names)] for row, end in zip(schedule, ends)]
        out += ["Trained with a schedule of values (population-based training):", ""]
        out += [*table(["epochs", *names], rows), ""]
    return [*out, "Every training setting is in `config.json` (`train_config`)."]


# The card's onnxruntime recipe: numpy and Pillow only, doing what trainer.predict does to an 8-bit image
# (trainer.predict.to_unit and to_image): channels matched in floating point, PyTorch's antialiased
# bilinear resize (the triangle filter widens by the scale when shrinking; Pillow's own resize rounds
# to 8 bits between its passes), [-1, 1] in, and the output resized back to the input's size.
RECIPE_RESIZE = """def resize(a, height, width):
    \"\"\"(H, W, C) -> (height, width, C): bilinear with antialiasing, as trainer.predict resizes.\"\"\"
    for axis, n in ((0, height), (1, width)):
        scale = a.shape[axis] / n
        d = (np.arange(a.shape[axis]) + 0.5)[None, :] - (np.arange(n) + 0.5)[:, None] * scale
        w = np.clip(1 - np.abs(d) / max(scale, 1.0), 0, None)  # wider when shrinking: the antialiasing
        a = np.moveaxis(np.tensordot(w / w.sum(1, keepdims=True), a, axes=([1], [axis])), 0, axis)
    return a.astype(np.float32)"""
RECIPE_BOUND = 1  # levels of 255: onnxruntime and PyTorch round floats differently (about 1e-6)


def usage_section(config: dict[str, Any]) -> list[str]:
    size, cin = config["size"], config["in_channels"]
    onnx = config["onnx"]
    if cin == 1:
        channels = (
            f'if pixels.shape[2] == 3:  # colour -> luma, the weights Pillow\'s convert("L") uses\n'
            f"    pixels = pixels @ np.float32({list(LUMA)})[:, None]"
        )
    else:
        channels = "pixels = np.repeat(pixels, 3 // pixels.shape[2], axis=2)  # gray -> RGB"
    return [
        "## How to run it",
        "",
        "With this project (any size and bit depth in, PNG out at the input's size; loads `model.safetensors`):",
        "",
        "```bash",
        "python -m trainer.predict --model path/to/this/folder --input my_images/ --output translated/",
        "```",
        "",
        f"With onnxruntime alone (opset {onnx['opset']}; input `{onnx['input']}`, output `{onnx['output']}`, "
        f"any batch size), for an 8-bit image of any size: the output is `trainer.predict`'s PNG to within "
        f"{RECIPE_BOUND} level of 255 (onnxruntime and PyTorch round floats differently), at the input's size.",
        "",
        "```python",
        "import numpy as np",
        "import onnxruntime",
        "from PIL import Image",
        "",
        *RECIPE_RESIZE.splitlines(),
        "",
        "",
        f'session = onnxruntime.InferenceSession("{onnx["file"]}", providers=["CPUExecutionProvider"])',
        'pixels = np.asarray(Image.open("input.png"), np.float32) / 255',
        "pixels = pixels.reshape(*pixels.shape[:2], -1)",
        "pixels = pixels[:, :, :1] if pixels.shape[2] in (1, 2) else pixels[:, :, :3]  # alpha dropped",
        *channels.splitlines(),
        "height, width = pixels.shape[:2]",
        f"x = (resize(pixels, {size}, {size}).clip(0, 1) * 2 - 1).transpose(2, 0, 1)[None]",
        f'y = session.run(["{onnx["output"]}"], {{"{onnx["input"]}": x}})[0][0].transpose(1, 2, 0)',
        "pixels = ((resize(y, height, width).clip(-1, 1) + 1) / 2 * 255).round().astype(np.uint8)",
        'Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save("output.png")',
        "```",
    ]


def limitations_section(card: dict[str, Any], config: dict[str, Any]) -> list[str]:
    size = config["size"]
    out = [
        "## Limitations",
        "",
        f"- It saw only the training data above, at {size}x{size} pixels: other kinds of images, or images resized "
        "from very different sizes, are outside what it learned and its metrics do not describe them.",
        "- A GAN generator can add plausible detail that is not in the input: do not use its outputs for "
        "measurement or diagnosis without checking them against real targets.",
        "- The metrics are means over one test split; they say nothing about the worst image.",
    ]
    for key, where in (("test", ""), ("test_native", f" at the images' own size ({native_sizes(card)})")):
        test, identity = card.get(key) or {}, card.get(f"identity_{key}") or {}
        if test.get("test_ssim") is not None and identity.get("test_ssim") is not None:
            gain = test["test_ssim"] - identity["test_ssim"]
            verdict = "beats" if gain > 0 else "does NOT beat"
            out.append(
                f"- On test SSIM{where} the model {verdict} the identity baseline (output = input) by {gain:+.4f}."
            )
    return out


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.4f}"
    return str(value)


MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~&])")


def markdown_text(text: str) -> str:
    """`text` (a name, a path: anything a user chose) as plain text in Markdown: every character
    Markdown or HTML would act on backslash-escaped, and one line."""
    return MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(text.splitlines()))


def code(text: str) -> str:
    """`text` as a Markdown code span, whatever backticks it holds: the fence is one backtick longer
    than its longest run of them (CommonMark), with spaces where the text starts or ends with one."""
    text = " ".join(text.splitlines())
    fence = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"
