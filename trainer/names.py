"""The names of what training reports, defined once and light (no torch): the trainer uses them, and
so does everything that reads its results (the search driver, W&B, the report)."""

from dataclasses import dataclass

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")  # G_L1 is logged without lambda_l1


@dataclass(frozen=True)
class Metric:
    """One image metric, as every table, card, chart and comparison shows it."""

    name: str  # the key, with val_/test_ prefixes naming the split
    label: str  # for people
    higher_is_better: bool

    @property
    def direction(self) -> str:
        """Optuna's, Tune's and W&B's word for the better way."""
        return "max" if self.higher_is_better else "min"

    @property
    def better(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    def beats(self, value: float, other: float) -> bool:
        return value > other if self.higher_is_better else value < other


METRICS = (Metric("ssim", "SSIM", True), Metric("psnr", "PSNR (dB)", True), Metric("mae", "MAE", False))  # per image
METRIC_NAMES = tuple(m.name for m in METRICS)
METRIC_BY_NAME = {m.name: m for m in METRICS}
IDENTITY, MEAN_IMAGE = "identity", "mean_image"  # the baselines a model must beat; <name>_<split> keys their metrics
BASELINE_LABELS = {IDENTITY: "identity (output = input)", MEAN_IMAGE: "mean image (output = mean training target)"}
