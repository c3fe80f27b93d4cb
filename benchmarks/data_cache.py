"""The decoded data cache at scale: generated data under a temporary folder (removed afterwards),
measured in fresh processes so that each number is its own.

  python -m benchmarks.data_cache --pairs 2000 --subjects 12

2D: `--pairs` pairs of 256-px RGB PNGs (A/ B/). Volumes: `--subjects` subjects of 256x256x`--depth`
(CT-like int16 in HU with body masks, MR-like float32), .nii.gz. Printed for each: the cache build's
time and peak RSS (and the in-memory decode's, for 2D with --in-memory), time from a trial's start to
its first training step with an empty and with a built cache, the PSS of 4 concurrent processes
that each read every training and validation row, and training / validation images/s on the mapped
cache against the same arrays in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PSS_PROCESSES = 4


def write_pairs(root: Path, count: int, size: int) -> None:
    """Smooth RGB scenes with noise (PNG compresses them like photos, not like pure noise)."""
    for side in ("A", "B"):
        (root / side).mkdir(parents=True, exist_ok=True)
    _on_every_core(_write_pair, [(root, i, size) for i in range(count)])


def _write_pair(root: Path, i: int, size: int) -> None:
    import imageio.v3 as iio

    rng = np.random.default_rng(i)
    grid = np.linspace(0, 1, size, dtype=np.float32)
    phase = rng.uniform(0, 6.3, 3)
    base = np.stack([np.sin(grid[:, None] * 6 + grid[None, :] * 4 + p) for p in phase], -1)
    a = ((base * 0.4 + 0.5) * 255 + rng.normal(0, 8, (size, size, 3))).clip(0, 255).astype(np.uint8)
    for side, image in (("A", a.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8)), ("B", a)):
        iio.imwrite(root / side / f"p{i:05d}.png", image)


def write_subjects(root: Path, count: int, depth: int) -> None:
    for side in ("A", "B", "mask"):
        (root / side).mkdir(parents=True, exist_ok=True)
    _on_every_core(_write_subject, [(root, i, depth) for i in range(count)])


def _write_subject(root: Path, i: int, depth: int) -> None:
    import nibabel as nib

    rng = np.random.default_rng(i)
    shape = (256, 256, depth)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape), indexing="ij"), -1)
    affine = np.diag([1.0, 1.0, 1.5, 1.0])
    r = np.sqrt(((grid / np.array([0.8, 0.9, 1.1], np.float32) * (1 + 0.02 * (i % 12))) ** 2).sum(-1))
    body, bone = r < 0.9, (r > 0.75) & (r < 0.9)
    ct = np.where(body, 40, -1000) + 1000 * bone + rng.normal(0, 10, shape)
    mr = np.abs(np.where(body, 600.0, 0.0) - 450 * bone + rng.normal(0, 15, shape)).astype(np.float32)
    for side, values in (("A", mr), ("B", ct.astype(np.int16)), ("mask", body.astype(np.uint8))):
        nib.save(nib.Nifti1Image(values, affine), root / side / f"s{i:03d}.nii.gz")


def _on_every_core(function: object, arguments: list[tuple]) -> None:
    """Writing the generated files is set-up, not a measured number: it may use every core."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        pool.starmap(function, arguments, chunksize=16)


# ---------------------------------------------------------------------------------------------
# workers: each a fresh process


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_anon_mb() -> float:
    """Resident memory that is not a mapped file's pages: what the process holds whatever the cache."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRssAnon:
    """The most RssAnon seen, sampled every 10 ms from a thread: the kernel keeps a peak of all
    resident memory (VmHWM) but not of the process's own part, which a memory cap must hold."""

    def __init__(self) -> None:
        import threading

        self.peak_mb = rss_anon_mb()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.01):
            self.peak_mb = max(self.peak_mb, rss_anon_mb())

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_mb


def pss_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(job: dict) -> dict:
    import torch

    from trainer.config import TrainConfig
    from trainer.data import load_run_data

    torch.set_num_threads(1)
    started = time.perf_counter()
    cfg = TrainConfig(**job["config"])
    if job["kind"] == "load":
        data = load_run_data(cfg, None, save_split_file=False)
        return {"seconds": time.perf_counter() - started, "peak_rss_mb": peak_rss_mb(), "bytes": _bytes(data)}
    if job["kind"] == "first_step":
        from trainer.loop import train

        class FirstStep(Exception):
            pass

        def stop(*_: object) -> None:
            raise FirstStep

        try:
            for _ in train(cfg, Path(job["run_dir"]), on_step=stop):
                pass
        except FirstStep:
            pass
        return {"seconds": time.perf_counter() - started}
    if job["kind"] == "pss":
        before = pss_mb()  # the interpreter, torch and trainer: not data
        data = load_run_data(cfg, None, save_split_file=False)
        for split in ("train", "val"):
            read_every_row(data.splits[split])
        Path(job["ready"]).touch()
        while len(list(Path(job["ready"]).parent.glob("ready-*"))) < PSS_PROCESSES:
            time.sleep(0.2)
        pss = pss_mb()
        time.sleep(2)  # the others measure while this one still maps the cache
        return {"pss_mb": pss, "data_pss_mb": pss - before}
    if job["kind"] == "throughput":
        modes = tuple(job.get("modes", ("cached", "in_memory")))
        return throughput(cfg, job["steps"], modes, job.get("sweep", False))
    raise ValueError(job["kind"])


def _bytes(data: object) -> int:
    return sum(x.nbytes for x in data.splits.values())


def read_every_row(images: object) -> None:
    import torch

    for start in range(0, len(images), 64):
        images.batch(torch.arange(start, min(start + 64, len(images))))


def throughput(cfg: object, steps: int, modes: tuple[str, ...], sweep: bool = False) -> dict:
    """Training steps and a validation pass on the mapped cache, then on the same arrays in memory.
    `sweep`: read the whole training split first, as an epoch would, so that a memory cap smaller
    than the split has evicted pages before the timed steps (and the steps pay for the misses)."""
    import dataclasses

    import torch

    from trainer.data import load_run_data
    from trainer.loop import TrainStep, build_discriminator, build_generator, build_optimizer, evaluate, training_batch

    data = load_run_data(cfg, None, save_split_file=False)
    results = {}
    for mode in modes:
        splits = data.splits
        if mode == "in_memory":
            splits = {s: dataclasses.replace(x, a=np.array(x.a), b=np.array(x.b)) for s, x in splits.items()}
        if sweep:
            started = time.perf_counter()
            read_every_row(splits["train"])
            results["sweep_seconds"] = round(time.perf_counter() - started, 1)
        torch.manual_seed(0)
        device = torch.device("cpu")
        G = build_generator(cfg.generator_config(data.in_channels, data.out_channels), device)
        D = build_discriminator(cfg, data.in_channels + data.out_channels, device)
        step = TrainStep(
            cfg, G, D, build_optimizer(G, cfg.lr_G, cfg), build_optimizer(D, cfg.lr_D, cfg),
            torch.amp.GradScaler("cpu", enabled=False), amp_dtype=None,
        )  # fmt: skip
        generator = torch.Generator().manual_seed(0)
        order = torch.randperm(len(splits["train"]), generator=generator)
        own = PeakRssAnon()
        started = time.perf_counter()
        for i in range(steps):
            a, b = training_batch(splits["train"], order[i * cfg.batch_size : (i + 1) * cfg.batch_size], cfg, generator)
            step(a, b)
        train_rate = steps * cfg.batch_size / (time.perf_counter() - started)
        started = time.perf_counter()
        evaluate(G, splits["val"], cfg.val_batch_size)
        val_rate = len(splits["val"]) / (time.perf_counter() - started)
        results[mode] = {
            "train_images_per_s": round(train_rate, 2),
            "val_images_per_s": round(val_rate, 2),
            "peak_rss_anon_mb": round(own.stop()),  # cached: the process's own memory, which the capped run is given
        }
    return results


def run_worker(job: dict, env: dict[str, str], cgroup: Path | None = None) -> subprocess.Popen:
    """A worker process; in `cgroup` (a memory-limited control group) from its first instruction on."""

    def join_cgroup() -> None:
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))

    return subprocess.Popen(
        [sys.executable, "-m", "benchmarks.data_cache", "--worker", json.dumps(job)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
        preexec_fn=join_cgroup if cgroup is not None else None,
    )


def result_of(process: subprocess.Popen) -> dict:
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"a worker failed (exit {process.returncode})")
    return json.loads(out.strip().splitlines()[-1])


def evict_from_page_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cgroup_peak_mb(group: Path) -> float:
    """The most memory the group held at once (v2 memory.peak, v1 memory.max_usage_in_bytes)."""
    for name in ("memory.peak", "memory.max_usage_in_bytes"):
        if (group / name).exists():
            return int((group / name).read_text()) / 1e6
    return float("nan")


def memory_cgroup(limit_bytes: int) -> Path | None:
    """A new control group whose memory (page cache included) is capped at `limit_bytes`: cgroup v2's
    memory.max, or v1's memory.limit_in_bytes; None where neither can be made here."""
    for root, limit_file in (
        (Path("/sys/fs/cgroup"), "memory.max"),
        (Path("/sys/fs/cgroup/memory"), "memory.limit_in_bytes"),
    ):
        if (root / limit_file).exists() or (root / "cgroup.controllers").exists():
            group = root / f"pix2pix-bench-{os.getpid()}"
            try:
                group.mkdir(exist_ok=True)
                (group / limit_file).write_text(str(limit_bytes))
                return group
            except OSError:
                continue
    return None


def driver_startup(data: Path, config: dict, work: Path, env: dict[str, str]) -> float:
    """Seconds from launching `python -m orchestrator.search` on `data` (one trial) to its trial's
    start (the trial's scratch folder appears): Ray's start, the checks before it, `epochs: auto`
    (which decodes the training split of a volume set into the cache) and the trial's launch. The
    search is then stopped with Ctrl-C."""
    import yaml

    from orchestrator.spec import DEFAULT_SPEC
    from orchestrator.trials.trainable import SCRATCH_PREFIX

    spec = yaml.safe_load(Path(DEFAULT_SPEC).read_text())
    spec["train"] = {**spec["train"], **config, "data": str(data), "epochs": "auto"}
    spec["search"] = {**spec["search"], "num_samples": 1, "max_concurrent": 1}
    spec_file = work / "startup.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    storage = work / "experiments"
    command = [sys.executable, "-m", "orchestrator.search", f"--config={spec_file}", f"--storage-path={storage}"]
    command += ["--name=startup", "--wandb=off"]
    scratch = Path(tempfile.gettempdir())
    before = set(scratch.glob(f"{SCRATCH_PREFIX}*"))
    started = time.perf_counter()
    search = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while not set(scratch.glob(f"{SCRATCH_PREFIX}*")) - before:
            if search.poll() is not None:
                raise SystemExit(f"the search ended (exit {search.returncode}) before its trial started")
            time.sleep(0.05)
        return time.perf_counter() - started
    finally:
        search.send_signal(signal.SIGINT)
        search.wait(timeout=120)
        shutil.rmtree(storage, ignore_errors=True)


def measure(name: str, data: Path, config: dict, work: Path, in_memory: bool, steps: int) -> None:
    env = {**os.environ, "PIX2PIX_CACHE": str(work / "cache"), "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    config = {**config, "data": str(data), "device": "cpu", "precision": "fp32"}
    print(f"\n== {name}: {data}")
    if in_memory:
        mem = result_of(run_worker({"kind": "load", "config": config}, {**env, "PIX2PIX_DATA_CACHE": "off"}))
        print(
            f"in-memory decode (PIX2PIX_DATA_CACHE=off): {mem['seconds']:.1f} s, peak RSS {mem['peak_rss_mb']:.0f} MB"
        )
    first = result_of(run_worker({"kind": "first_step", "config": config, "run_dir": str(work / "r1")}, env))
    print(f"first trial, empty cache: start -> first training step {first['seconds']:.1f} s (includes the build)")
    shutil.rmtree(work / "cache")
    startup = driver_startup(data, config, work, env)
    print(f"driver start-up, empty cache: launch -> first trial started {startup:.1f} s")
    shutil.rmtree(work / "cache")
    build = result_of(run_worker({"kind": "load", "config": config}, env))
    decoded_mb = build["bytes"] / 1e6
    print(f"cache build: {build['seconds']:.1f} s, peak RSS {build['peak_rss_mb']:.0f} MB, decoded {decoded_mb:.0f} MB")
    later = [
        result_of(run_worker({"kind": "first_step", "config": config, "run_dir": str(work / f"r{i}")}, env))
        for i in (2, 3)
    ]
    print("later trials: start -> first training step " + ", ".join(f"{r['seconds']:.1f} s" for r in later))
    ready = work / "ready"
    ready.mkdir()
    jobs = [{"kind": "pss", "config": config, "ready": str(ready / f"ready-{i}")} for i in range(PSS_PROCESSES)]
    pss = [result_of(p) for p in [run_worker(job, env) for job in jobs]]
    data_pss = sum(p["data_pss_mb"] for p in pss)
    print(
        f"PSS of {PSS_PROCESSES} concurrent processes reading every train/val row: "
        + ", ".join(f"{p['pss_mb']:.0f}" for p in pss)
        + " MB (interpreter and torch included); grown by loading and reading the data: "
        + ", ".join(f"{p['data_pss_mb']:.0f}" for p in pss)
        + f" MB, sum {data_pss:.0f} MB = {data_pss / decoded_mb:.2f}x one decoded copy ({decoded_mb:.0f} MB)"
    )
    rates = result_of(run_worker({"kind": "throughput", "config": config, "steps": steps}, env))
    print(f"images/s ({steps} training steps, one validation pass): {json.dumps(rates)}")
    # The cap: half the decoded size, page cache included, where the process's own memory (torch, the
    # networks, a validation batch's activations) fits in it with room for batches; for the sizes this
    # machine writes in minutes it does not (about 1 GB of its own), and the cap is its own and half.
    own = rates["cached"]["peak_rss_anon_mb"] * 1e6 * 1.1
    half = build["bytes"] / 2
    limit = int(half if half > own + 512e6 else own + half)
    how = "half the decoded size" if limit == int(half) else f"its own {own / 1e6:.0f} MB and half the decoded size"
    cgroup = memory_cgroup(limit)
    if cgroup is None:
        print("no memory cgroup can be made here: the run capped at half the decoded size was not made")
        return
    try:
        # Pages already in the page cache stay charged to whoever read them first: drop them, so that
        # every page the capped run reads counts against its cap.
        evict_from_page_cache(work / "cache")
        job = {"kind": "throughput", "config": config, "steps": steps, "modes": ["cached"], "sweep": True}
        limited = run_worker(job, env, cgroup)
        out, _ = limited.communicate()
        peak = cgroup_peak_mb(cgroup)
        if limited.returncode:
            print(f"capped at {limit / 1e6:.0f} MB ({how}): the worker failed, exit {limited.returncode}")
            return
        capped = json.loads(out.strip().splitlines()[-1])
        share = capped["cached"]["train_images_per_s"] / rates["in_memory"]["train_images_per_s"]
        print(
            f"capped at {limit / 1e6:.0f} MB of memory, page cache included ({how}, of {decoded_mb:.0f} MB; its "
            f"own peak {own / 1.1e6:.0f} MB; {cgroup}): completed, peak use {peak:.0f} MB; read the whole "
            f"training split in {capped['sweep_seconds']} s, then {json.dumps(capped['cached'])}: "
            f"training at {share:.2f}x the in-memory images/s"
        )
    finally:
        cgroup.rmdir()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_cache", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=2000, help="2D pairs of 256-px RGB PNGs (0: skip)")
    parser.add_argument("--subjects", type=int, default=12, help="volume subjects of 256x256xDEPTH (0: skip)")
    parser.add_argument("--depth", type=int, default=160)
    parser.add_argument("--steps", type=int, default=8, help="training steps timed per mode")
    parser.add_argument("--in-memory", action="store_true", help="also time today's in-memory decode (2D)")
    parser.add_argument(
        "--data-dir", type=Path, help="keep the generated files here and reuse them next time (default: removed)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    work = Path(tempfile.mkdtemp(prefix="pix2pix-bench-cache-"))
    generated = args.data_dir or work
    try:
        small = {"size": 256, "ngf": 16, "ndf": 16, "batch_size": 8, "val_batch_size": 32}
        if args.pairs:
            pairs = generated / f"pairs-{args.pairs}"
            if not pairs.is_dir():
                started = time.perf_counter()
                write_pairs(pairs.with_suffix(".partial"), args.pairs, 256)
                pairs.with_suffix(".partial").rename(pairs)
                print(f"wrote {args.pairs} pairs in {time.perf_counter() - started:.0f} s")
            measure("2D", pairs, small, work / "w2d", args.in_memory, args.steps)
        if args.subjects:
            volumes = generated / f"volumes-{args.subjects}x{args.depth}"
            if not volumes.is_dir():
                started = time.perf_counter()
                write_subjects(volumes.with_suffix(".partial"), args.subjects, args.depth)
                volumes.with_suffix(".partial").rename(volumes)
                print(f"wrote {args.subjects} subjects in {time.perf_counter() - started:.0f} s")
            window = {"intensity": "window", "window_low_b": -1000.0, "window_high_b": 2000.0}
            measure("volumes", volumes, {**small, **window}, work / "wvol", args.in_memory, args.steps)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
