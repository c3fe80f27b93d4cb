"""W&B: the mode (off / offline / online), one run per trial logged from the driver, the search's
own run, the offline-run reader and the W&B report."""
