"""The names of what training reports, defined once and light (no torch): the trainer uses them, and
so does everything that reads its results (the search driver, W&B, the report)."""

LOSS_NAMES = ("G_GAN", "G_L1", "D_real", "D_fake")  # G_L1 is logged without lambda_l1
METRIC_NAMES = ("ssim", "psnr", "mae")  # scored per image; val_/test_ prefixes name the split
IDENTITY, MEAN_IMAGE = "identity", "mean_image"  # the baselines a model must beat; <name>_<split> keys their metrics
BASELINE_LABELS = {IDENTITY: "identity (output = input)", MEAN_IMAGE: "mean image (output = mean training target)"}
