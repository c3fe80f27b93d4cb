"""`python -m orchestrator.reaper PID`: end the processes PID started once PID has died.

The search driver starts it beside the embedded Ray (orchestrator.cluster). While PID lives, it notes
PID's descendants every POLL_SECONDS; after PID dies, the noted processes still running (the same
process, by its start time, not a reused PID) get SIGTERM, then SIGKILL if they outlive GRACE_SECONDS.
A driver that shuts Ray down itself leaves nothing to reap.
"""

from __future__ import annotations

import argparse
import sys
import time

import psutil

POLL_SECONDS = 0.5
GRACE_SECONDS = 3.0


def watch(pid: int) -> set[psutil.Process]:
    """PID's descendants as last seen before it died (empty when PID is already gone)."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return set()
    seen: set[psutil.Process] = set()
    while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
        try:
            seen = {p for p in seen if p.is_running()} | set(parent.children(recursive=True))
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)
    return seen - {psutil.Process()}


def reap(processes: set[psutil.Process]) -> None:
    alive = [p for p in processes if p.is_running()]  # is_running checks the start time too
    for process in alive:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, still = psutil.wait_procs(alive, timeout=GRACE_SECONDS)
    for process in still:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.reaper", description=__doc__)
    parser.add_argument("pid", type=int, help="the process whose descendants to end once it has died")
    args = parser.parse_args(argv)
    reap(watch(args.pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
