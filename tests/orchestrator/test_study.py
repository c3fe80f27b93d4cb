"""The Optuna study's writer thread (the study itself is tested through real searches in test_search)."""

from __future__ import annotations

import time

from orchestrator.trials.study import LatestOnlyWriter


def test_the_writer_rests_between_rewrites_and_flush_writes_the_latest() -> None:
    written: list[int] = []
    write_seconds = 0.05

    def slow_write(snapshot: int) -> None:
        time.sleep(write_seconds)
        written.append(snapshot)

    writer = LatestOnlyWriter(slow_write)
    started = time.monotonic()
    for snapshot in range(40):  # trials ending back to back, each submitting a whole new study
        writer.submit(snapshot)
        time.sleep(0.01)
    submitting = time.monotonic() - started
    writer.flush()
    assert written[-1] == 39  # the latest snapshot is on disk when flush returns
    # Each write (>= 0.05 s) is followed by REST times as long without writing, so at most one write per
    # 0.25 s of submitting, plus the first and the flush; without the rest it would be one per 0.05 s.
    cycle = write_seconds * (1 + LatestOnlyWriter.REST)
    assert len(written) <= submitting / cycle + 2, (len(written), submitting)
    assert written == sorted(written)  # never an older study after a newer one
