"""The GPU path of pre-training in one run, under a time budget (default 420 s: < 8 minutes on one GPU).
Prints a summary table; ``--json FILE`` writes the figures.

    .venv/bin/python benchmarks/gpu_check.py                       # on a CUDA GPU (the default device there)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny   # tiny sizes on the CPU (tests run this)
        [--json figures.json] [--work DIR] [--budget-seconds 420] [--skip SECTION,...]
        [--variants channels_last,compile] [--steps N] [--train-seconds S]

Sections, in this order; each prints its elapsed time, and a section that would run past the budget
is skipped with a message (its row says so):

* **train**: for ``audioset-audiontt`` and ``audioset-vitc-b``, the state is built by
  ``training.engine.build`` with the preset's own settings (``precision=auto``: bf16 on a bf16 GPU,
  fp32 on the CPU; TF32 on; the default reader threads and ``prefetch``; pinned batches on CUDA) and
  stepped by ``training.loop.steps``, the generator ``training.pretrain`` iterates, with the reader in
  the loop; every ``log_every`` steps the figures pretrain logs are read and ``check_finite`` runs,
  as in pretrain. Rows: the reader's crops/s (the state's own sampler, alone), samples/s, their
  ratio, and the share of the timed wall time the host waited for the reader. Targets on one
  H100/H200-class GPU, full sizes: AudioNTT >= 15,000 and ViT_C-B >= 6,000 samples/s, reader >= 10x.
  The corpus is a synthetic one prepared by ``training.prepare`` (a few hundred clips), listed
  several times in a copy of its manifest so that an epoch outlasts the timed steps; its shards are
  in the page cache (a real AudioSet corpus, ~250 GB of float16, is read from disk).
* **syncs**: host syncs per steady-state step, counted with ``torch.cuda.set_sync_debug_mode("warn")``
  around a few steps of ``training.loop.steps`` (where each sync comes from is noted). CUDA only;
  on the CPU the row says "n/a (CUDA only)".
* **torchrun**: ``torchrun --nproc_per_node=1 -m training.pretrain`` for a few steps, without
  ``--device`` (pretrain takes cuda:LOCAL_RANK itself; on the CPU the GPUs are hidden instead), and
  with >= 2 GPUs ``--nproc_per_node=2`` too; exit status, checkpoint, the device pretrain chose and its
  own logged samples/s.
* **requeue**: the same launcher with ``--auto-resume``; SIGTERM to its rank processes once a few
  steps are logged must stop the run with exit status 75 and a checkpoint, and the same command must
  then finish it.
* **ddp**: with >= 2 GPUs, a real 2-rank NCCL comparison: ``torchrun --nproc_per_node=2`` of this
  script (``--worker ddp``) builds the state through ``training.distributed.setup`` and
  ``engine.build`` (SyncBatchNorm, DistributedDataParallel) in fp32 with TF32 off; each rank feeds its
  half of one global batch of views, drawn once by a single process, through the DDP model and the
  distributed loss and runs backward. The single process (this one, same weights) does the same on the
  whole batch. Compared: the loss, every parameter's gradient on each rank, the BatchNorm running
  statistics. Dropout is switched off in both (its masks are random per rank); BatchNorm runs in
  training mode, so SyncBatchNorm's global statistics are what is tested. With fewer than 2 GPUs
  this is NOT tested (the row says so) and the same comparison runs on the CPU with 2 gloo ranks and
  tiny sizes instead, with BatchNorm in eval mode as well: ``engine.build`` uses SyncBatchNorm only on
  CUDA, and plain BatchNorm over a half batch uses that half's statistics, so only the
  per-sample model is exactly comparable on the CPU. That checks DistributedDataParallel's gradient
  averaging and the loss's autograd all-gather (``training/loss.py``), not SyncBatchNorm.
  Tolerance: relative L2 error <= 1e-4 on the CPU and 1e-3 on CUDA, for the loss, the whole gradient
  and each parameter's gradient (its error measured against the larger of its own norm and 1e-3 of
  the whole gradient's): the two sides differ only in summation order and in the kernels chosen for a
  batch of B/2 instead of B (measured on the CPU: 0 for the loss, ~1e-7 for the gradients). A real
  fault is far above that: with BatchNorm left in training mode on the 2 CPU ranks (each half's own
  statistics) the gradient's error was 1.3 and the loss's 1e-3.
* **precision**: the same N steps (same weights, batches, augmentation draws) in fp32 and bf16.
* **waveaug**: ms per view of a batch (paper: 128 x 96 frames) for the device-side waveform front-end and
  all five waveform augmentations (training.augment_wave), and their share of the eager step per sample.
* **hear**: HEAR API x real time on a clip on the device (AudioNTT faithful, fast, scene; ViT_C).
* **heareval**: heareval's embeddings runner on the dev suite's small task, if heareval is installed
  (else skipped with a message).
* **variants**: the train rows again with ``compile=true`` and with ``channels_last=true`` (each in a
  subprocess of this script, ``--worker train``, timed out at the budget). A failure is reported in
  its row and does not fail the check. On the CPU only channels_last runs by default (inductor's
  C++ compile of the tiny model took ~170 s on a 2-core machine); ``--variants`` chooses.

The exit status is 1 if a section raised or a row is FAILED (a DDP mismatch, a pretrain run that
did not finish); missed speed targets are marked FAIL in their rows' notes but do not change it.

No GPU has been available to the sessions that wrote this script: it has run only with
``--device cpu --tiny`` (tests/test_gpu_check.py). Never run so far: the CUDA figures and targets,
the host-sync count, the NCCL/SyncBatchNorm comparison, torchrun with 2 GPUs, compile and
channels_last on a GPU, and whether the whole run fits in the budget on one. The first GPU run's
figures belong in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import csv
import gc
import hashlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from hear_abt.config import SAMPLE_RATE, ModelConfig, NormStats  # noqa: E402
from training import distributed, engine  # noqa: E402
from training.config import TrainConfig, build_config  # noqa: E402
from training.data import ShardDataset  # noqa: E402
from training.loop import EXIT_STOPPED, steps  # noqa: E402

PRESETS = ("audioset-audiontt", "audioset-vitc-b")
# samples/s on one H100/H200-class GPU, bf16, reader in the loop (full sizes only).
TARGETS = {"audioset-audiontt": 15000.0, "audioset-vitc-b": 6000.0}
READER_TARGET = 10.0  # reader crops/s over training samples/s
# --tiny: cpu-tiny-like sizes, so that every section takes seconds on a CPU.
TINY_COMMON = [
    "batch_size=8",
    "projector_hidden=256",
    "projector_out=64",
    "augment.mixup_bank_size=64",
    "log_every=1",
    "checkpoint_every=1000",
    "image_every=1000",
]
TINY_NTT = {"channels": 8, "mlp_dim": 64}
TINY_VIT = {"depth": 1, "dim": 64, "heads": 2, "stem_channels": [8, 16, 32, 64]}
TINY_ENCODER = {
    "audioset-audiontt": [f"encoder_kwargs={json.dumps(TINY_NTT)}"],
    "audioset-vitc-b": ["encoder=vitc_t", f"encoder_kwargs={json.dumps(TINY_VIT)}"],
}
# DDP comparison: relative L2 error allowed (fp32, TF32 off); see the module docstring.
DDP_TOLERANCE = {"gloo": 1e-4, "nccl": 1e-3}
RESULT = "GPU-CHECK-RESULT "  # prefix of a worker's one-line JSON answer
SECTIONS = (
    "train",
    "syncs",
    "torchrun",
    "requeue",
    "ddp",
    "precision",
    "waveaug",
    "hear",
    "heareval",
    "variants",
)
# Rough seconds a section needs (one GPU, full sizes; --tiny on a CPU): it is skipped when less is left.
SECTION_SECONDS = {
    "train": (60, 20),
    "syncs": (0, 0),  # measured inside train
    "torchrun": (40, 15),
    "requeue": (60, 25),
    "ddp": (45, 25),
    "precision": (25, 10),
    "waveaug": (10, 10),
    "hear": (30, 5),
    "heareval": (60, 30),
    "variants": (40, 15),
}


class Report:
    """Figures in order: printed as they come, and as a table (and JSON) at the end."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, section: str, name: str, value: float | str | None, unit: str = "", note: str = "") -> None:
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit, "note": note})
        shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
        print(f"  [{section}] {name}: {shown} {unit}" + (f"  ({note})" if note else ""), flush=True)

    def table(self) -> str:
        lines = [f"{'section':<10s} {'figure':<46s} {'value':>14s} {'unit':<10s} note", "-" * 110]
        for r in self.rows:
            v = r["value"]
            shown = f"{v:,.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
            lines.append(f"{r['section']:<10s} {r['name']:<46s} {shown:>14s} {r['unit']:<10s} {r['note']}")
        return "\n".join(lines)


class Budget:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiny_overrides(preset: str, tiny: bool) -> list[str]:
    return TINY_COMMON + TINY_ENCODER[preset] if tiny else []


def train_config(preset: str, tiny: bool, *extra: str) -> TrainConfig:
    return build_config(preset, tiny_overrides(preset, tiny) + list(extra))


def subprocess_env(device: torch.device) -> dict[str, str]:
    """This environment with the repository importable; on the CPU the GPUs are hidden, so that a
    program choosing its device itself (pretrain without --device) takes the CPU."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def result_line(stdout: str) -> dict | None:
    line = next((ln for ln in stdout.splitlines() if ln.startswith(RESULT)), None)
    return json.loads(line[len(RESULT) :]) if line else None


def tail(text: str, n: int = 300) -> str:
    return " ".join(text.strip().split())[-n:]


# ---- corpus --------------------------------------------------------------------------------------


def write_tones(folder: Path, clips: int, max_seconds: float) -> None:
    """``clips`` noisy tones of 1 to ``max_seconds`` s (kept if already there)."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(clips):
        path = folder / f"clip_{i:05d}.wav"
        if path.exists():
            continue
        rng = np.random.default_rng([0, i])  # clip i is the same whatever else exists
        n = int(SAMPLE_RATE * rng.uniform(1.0, max_seconds))
        freq = rng.uniform(100, 4000)
        t = np.arange(n) / SAMPLE_RATE
        wav = 0.2 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(n)
        sf.write(path, wav.astype(np.float32), SAMPLE_RATE)


def make_corpus(work: Path, args: argparse.Namespace) -> tuple[Path, ShardDataset]:
    """The prepared corpus, listed ``repeats`` times in a copy of its manifest (a longer epoch)."""
    from training.prepare import MANIFEST_NAME, prepare

    base = work / "shards"
    if not (base / MANIFEST_NAME).is_file():
        write_tones(work / "wav", args.clips, args.clip_max_seconds)
        workers = max(1, min(16, (os.cpu_count() or 2) - 1))
        summary = prepare(
            work / "wav", base, workers=workers, clips_per_shard=args.clips_per_shard, progress=False
        )
        print(
            f"prepared {summary.clips} clips, {summary.hours:.2f} h, in {summary.shards} shards", flush=True
        )
    manifest = json.loads((base / MANIFEST_NAME).read_text())
    clips = sum(r["clips"] for r in manifest["shards"])
    batch = max(train_config(p, args.tiny).batch_size for p in PRESETS)
    repeats = max(1, math.ceil(args.epoch_steps * batch / clips))
    data = work / f"corpus_x{repeats}"
    if not (data / MANIFEST_NAME).is_file():
        data.mkdir(parents=True, exist_ok=True)
        for top in {Path(r[k]).parts[0] for r in manifest["shards"] for k in ("data", "index")}:
            link = data / top
            if not link.exists():
                link.symlink_to(base / top, target_is_directory=(base / top).is_dir())
        manifest["shards"] = manifest["shards"] * repeats
        (data / MANIFEST_NAME).write_text(json.dumps(manifest))
    dataset = ShardDataset(data)
    # Read every distinct shard once: the page cache holds them, so the reader is timed, not the disk.
    for shard in dataset.shards[: len(dataset.shards) // repeats]:
        np.asarray(shard).sum(dtype=np.float32)
    print(
        f"corpus: {clips} clips listed {repeats}x = {len(dataset)} clips ({data}); epoch of "
        f"{len(dataset) // batch} batches of {batch}",
        flush=True,
    )
    return data, dataset


# ---- train + syncs -------------------------------------------------------------------------------


class TimedSampler:
    """The state's sampler, counting the time the training loop waits for each batch."""

    def __init__(self, sampler) -> None:
        self.sampler = sampler
        self.wait = 0.0

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sampler, name)

    def __iter__(self):
        it = iter(self.sampler)
        try:
            while True:
                start = time.perf_counter()
                try:
                    crops = next(it)
                except StopIteration:
                    return
                self.wait += time.perf_counter() - start
                yield crops
        finally:
            it.close()


def reader_rate(sampler, n_batches: int) -> float:
    """Crops/s of the sampler alone, iterated as the training loop does (two warm-up batches)."""
    produced, start = -2, 0.0
    while produced < n_batches:
        for _crops in sampler:
            produced += 1
            if produced == 0:
                start = time.perf_counter()
            if produced == n_batches:
                break
    return n_batches * sampler.batch_size / (time.perf_counter() - start)


def pretrain_cadence(state: engine.TrainState, result: engine.StepResult) -> None:
    """What pretrain does after a step besides agreeing with other ranks: every log_every steps the
    non-finite check and the logged figures (each a device read)."""
    if state.step % state.cfg.log_every == 0:
        engine.check_finite(state)
        _ = (result.loss, result.on_diag, result.off_diag, result.embedding_std)


def count_host_syncs(gen, n: int) -> tuple[float, list[str]]:
    """Host syncs per step over ``n`` steps of ``gen``, and where they come from (CUDA only)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(n):
                next(gen)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    found = [w for w in caught if "synchroniz" in str(w.message)]
    where = collections.Counter()
    for w in found:
        path = Path(w.filename)
        with contextlib.suppress(ValueError):
            path = path.resolve().relative_to(REPO)
        where[f"{path}:{w.lineno}"] += 1
    return len(found) / n, [f"{k} x{v}" for k, v in where.most_common(4)]


def measure_training(
    state: engine.TrainState, warmup: int, max_steps: int, max_seconds: float, sync_steps: int = 0
) -> dict[str, Any]:
    """samples/s of ``training.loop.steps(state)`` (reader in the loop) after ``warmup`` steps."""
    timed = TimedSampler(state.sampler)
    state.sampler = timed
    gen = steps(state)
    device = state.device
    try:
        start = time.perf_counter()
        result = None
        for _ in range(warmup):
            result = next(gen)
            pretrain_cadence(state, result)
        sync(device)
        warm_s = time.perf_counter() - start
        timed.wait = 0.0
        start = time.perf_counter()
        done = 0
        while done < max_steps:
            result = next(gen)
            pretrain_cadence(state, result)
            done += 1
            if done >= 10 and time.perf_counter() - start > max_seconds:
                break
        sync(device)
        elapsed = time.perf_counter() - start
        engine.check_finite(state)
        figures = {
            "rate": done * state.cfg.batch_size / elapsed,
            "steps": done,
            "seconds": elapsed,
            "warmup_seconds": warm_s,
            "wait_fraction": timed.wait / elapsed,
            "loss": result.loss,
        }
        if sync_steps and device.type == "cuda":
            figures["syncs_per_step"], figures["sync_sites"] = count_host_syncs(gen, sync_steps)
        return figures
    finally:
        gen.close()  # the sampler's reader threads stop here
        state.sampler = timed.sampler


def precision_name(state: engine.TrainState) -> str:
    if state.amp_dtype is None:
        return "fp32" + (" (TF32 on)" if state.device.type == "cuda" and state.cfg.tf32 else "")
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}[state.amp_dtype]


def train_once(
    preset: str, overrides: list[str], dataset: ShardDataset, device: torch.device, args, sync_steps: int
) -> dict[str, Any]:
    """Build as pretrain does, measure the reader alone, then training (shared with ``--worker train``)."""
    cfg = train_config(preset, args.tiny, *overrides)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    state = engine.build(cfg, dataset, device)  # the default reader threads and prefetch
    try:
        figures = {
            "encoder": cfg.encoder,
            "params": sum(p.numel() for p in state.net.parameters()),
            "batch": cfg.batch_size,
            "precision": precision_name(state),
            "threads": state.sampler.threads,
            "prefetch": state.sampler.prefetch,
            "reader": reader_rate(state.sampler, args.reader_batches),
        }
        figures.update(measure_training(state, args.warmup, args.steps, args.train_seconds, sync_steps))
        if device.type == "cuda":
            figures["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        return figures
    finally:
        del state
        free_memory(device)


def judged(rate: float, target: float, device: torch.device, args) -> str:
    if device.type != "cuda" or args.tiny:
        return ""
    return f"; target >= {target:,.0f}: {'PASS' if rate >= target else 'FAIL'}"


def train_section(report: Report, dataset, device, args, budget: Budget, eager: dict) -> None:
    sync_steps = 0 if "syncs" in args.skip_set else args.sync_steps
    for preset in PRESETS:
        if budget.left() < SECTION_SECONDS["train"][args.tiny] / 2:
            report.add("train", preset, "skipped", "", f"budget: {budget.left():.0f} s left")
            continue
        f = train_once(preset, [], dataset, device, args, sync_steps)
        eager[preset] = f["rate"]
        note = (
            f"{f['encoder']}, {f['params'] / 1e6:.1f}M params, batch {f['batch']}, {f['precision']}, "
            f"{f['steps']} steps in {f['seconds']:.1f} s after {args.warmup} ({f['warmup_seconds']:.1f} s), "
            f"loss {f['loss']:.4g}" + (f", peak {f['peak_gib']:.1f} GiB" if "peak_gib" in f else "")
        )
        report.add(
            "train",
            f"{preset} samples/s",
            f["rate"],
            "samples/s",
            note + judged(f["rate"], TARGETS[preset], device, args),
        )
        report.add(
            "train",
            f"{preset} reader crops/s",
            f["reader"],
            "crops/s",
            f"the state's sampler alone: {f['threads']} threads, prefetch {f['prefetch']}",
        )
        ratio = f["reader"] / f["rate"]
        report.add(
            "train",
            f"{preset} reader/train ratio",
            ratio,
            "x",
            f"target >= {READER_TARGET:.0f}x"
            + (
                f": {'PASS' if ratio >= READER_TARGET else 'FAIL'}"
                if device.type == "cuda" and not args.tiny
                else ""
            ),
        )
        report.add(
            "train",
            f"{preset} host waited for reader",
            100.0 * f["wait_fraction"],
            "%",
            "of the timed wall time, inside the loop",
        )
        if not sync_steps:  # --skip syncs (or --sync-steps 0)
            continue
        if device.type == "cuda":
            report.add(
                "syncs",
                f"{preset} host syncs per step",
                float(f["syncs_per_step"]),
                "",
                f"set_sync_debug_mode('warn') over {sync_steps} steps"
                + ("; " + ", ".join(f["sync_sites"]) if f["sync_sites"] else "")
                + "; pretrain adds check_finite + logged figures every log_every steps",
            )
        else:
            report.add("syncs", f"{preset} host syncs per step", "n/a (CUDA only)", "", "")


# ---- torchrun + requeue --------------------------------------------------------------------------


def pretrain_cmd(nproc: int, data: Path, run_dir: Path, overrides: list[str], *extra: str) -> list[str]:
    # No --device: pretrain takes cuda:LOCAL_RANK when CUDA is visible, else the CPU.
    return [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone",
        "-m", "training.pretrain", "--preset", PRESETS[0], "--data", str(data), "--run-dir", str(run_dir),
        "--no-progress", *extra, *overrides,
    ]  # fmt: skip


def show(cmd: list[str]) -> None:
    print("  $ " + " ".join(cmd), flush=True)


def logged_rows(run_dir: Path) -> list[dict[str, str]]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def launched_device(stderr: str) -> str:
    m = re.search(r"device (\S+), world size (\d+)", stderr)
    return f"device {m.group(1)}, world size {m.group(2)}" if m else "device not reported"


def gpu_count(device: torch.device) -> int:
    return torch.cuda.device_count() if device.type == "cuda" else 0


def torchrun_section(report: Report, data: Path, work: Path, device, args, budget: Budget) -> None:
    gpus = gpu_count(device)
    run_steps = 60 if not args.tiny else 3
    for nproc in (1, 2):
        name = f"pretrain nproc_per_node={nproc}, {run_steps} steps"
        if nproc > gpus and nproc > 1:
            report.add(
                "torchrun",
                name,
                "NOT TESTED",
                "",
                f"needs >= 2 GPUs, {gpus} visible"
                + ("" if gpus else " (2 gloo ranks: tests/test_training_e2e.py)"),
            )
            continue
        if budget.left() < SECTION_SECONDS["torchrun"][args.tiny]:
            report.add("torchrun", name, "skipped", "", f"budget: {budget.left():.0f} s left")
            continue
        run_dir = work / f"torchrun_{nproc}"
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(run_dir)
        overrides = tiny_overrides(PRESETS[0], args.tiny) + [f"steps={run_steps}", "checkpoint_every=1000"]
        cmd = pretrain_cmd(nproc, data, run_dir, overrides)
        show(cmd)
        start = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=REPO, env=subprocess_env(device), capture_output=True, text=True,
            timeout=max(10.0, min(args.subprocess_timeout, budget.left())), stdin=subprocess.DEVNULL,
        )  # fmt: skip
        rows = logged_rows(run_dir)
        ok = proc.returncode == 0 and (run_dir / "checkpoints" / "last.pt").is_file() and rows
        ok = ok and int(float(rows[-1]["step"])) == run_steps
        note = f"{launched_device(proc.stderr)}; {time.perf_counter() - start:.1f} s incl. start-up"
        if ok:
            note += f"; pretrain logged {float(rows[-1]['samples_per_s']):,.0f} samples/s at step {rows[-1]['step']}"
        else:
            note += "; " + tail(proc.stderr)
        report.add("torchrun", name, "ok" if ok else f"FAILED (exit {proc.returncode})", "", note)


def rank_pids(marker: str) -> list[int]:
    """Processes started by torchrun (LOCAL_RANK set) whose command line contains ``marker``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() not in cmdline.read_bytes():
                continue
            environ = (cmdline.parent / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(item.startswith(b"LOCAL_RANK=") for item in environ):
            found.append(int(cmdline.parent.name))
    return found


def requeue_section(report: Report, data: Path, work: Path, device, args, budget: Budget) -> None:
    if not Path("/proc/self/environ").exists():
        report.add("requeue", "SIGTERM + --auto-resume", "skipped", "", "needs /proc to find the ranks")
        return
    nproc = 2 if gpu_count(device) >= 2 else 1
    total = 20 if args.tiny else 400
    run_dir = work / "requeue"
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(run_dir)
    overrides = tiny_overrides(PRESETS[0], args.tiny) + [f"steps={total}", "checkpoint_every=1000"]
    if not args.tiny:
        overrides.append("log_every=5")
    cmd = pretrain_cmd(nproc, data, run_dir, overrides, "--auto-resume")
    show(cmd)
    env = subprocess_env(device)
    err_path = work / "requeue.stderr"
    start = time.perf_counter()
    deadline = time.monotonic() + max(10.0, min(args.subprocess_timeout, budget.left()))
    with open(err_path, "w") as err:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL
        )
        while len(logged_rows(run_dir)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        pids = rank_pids(str(run_dir)) if proc.poll() is None else []
        for pid in pids:  # every rank, as a scheduler's signal reaches every task
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            proc.wait(timeout=max(5.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for pid in [proc.pid, *rank_pids(str(run_dir))]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    stderr = err_path.read_text()
    stopped = re.search(r"stopped by SIGTERM after step (\d+) of (\d+)", stderr)
    exit_75 = f"exitcode  : {EXIT_STOPPED}" in stderr or proc.returncode == EXIT_STOPPED
    ok = bool(pids) and stopped is not None and exit_75 and (run_dir / "checkpoints" / "last.pt").is_file()
    if not ok:
        why = "no rank was running when the steps were logged" if not pids else tail(stderr)
        report.add("requeue", "SIGTERM -> exit 75 + checkpoint", f"FAILED (exit {proc.returncode})", "", why)
        return
    at = int(stopped.group(1))
    report.add(
        "requeue",
        "SIGTERM -> exit 75 + checkpoint",
        "ok",
        "",
        f"{len(pids)} rank(s) signalled; stopped after step {at} of {total}, {launched_device(stderr)}",
    )
    again = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=max(10.0, min(args.subprocess_timeout, budget.left())),
    )  # fmt: skip
    rows = logged_rows(run_dir)
    ok = again.returncode == 0 and f"done: {total} steps" in again.stderr and rows
    ok = ok and int(float(rows[-1]["step"])) == total
    report.add(
        "requeue",
        "same command (--auto-resume) finishes",
        "ok" if ok else f"FAILED (exit {again.returncode})",
        "",
        (f"steps {at + 1}-{total}" if ok else tail(again.stderr))
        + f"; {time.perf_counter() - start:.1f} s in all",
    )


# ---- ddp -----------------------------------------------------------------------------------------


def freeze_for_comparison(net: torch.nn.Module, batchnorm_eval: bool) -> None:
    """Dropout off (its masks are random per rank); BatchNorm in eval mode too when asked."""
    for m in net.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) or (
            batchnorm_eval and isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ):
            m.eval()


def weights_digest(net: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in net.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def running_stats(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: b.detach().cpu().clone()
        for n, b in net.named_buffers()
        if n.rsplit(".", 1)[-1].startswith("running_")
    }


def ddp_reference(cfg: TrainConfig, data: Path, device: torch.device, batchnorm_eval: bool) -> dict[str, Any]:
    """One process, the whole global batch: views, loss, gradients, running statistics."""
    state = engine.build(cfg, ShardDataset(data), device, prefetch=0)
    freeze_for_comparison(state.net, batchnorm_eval)
    digest = weights_digest(state.net)
    crops = state.sampler.batch_at(0, 0)
    v1, v2 = state.augmenter(engine.model_input(state, crops), state.aug_gen, tag=(crops.epoch, crops.batch))
    z1, z2 = state.model(v1, v2, None)
    out = state.loss_fn(z1, z2)
    state.optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    ref = {
        "cfg": json.dumps(cfg.to_dict()),
        "data": str(data),
        "batchnorm_eval": batchnorm_eval,
        "digest": digest,
        "v1": v1.detach().cpu(),
        "v2": v2.detach().cpu(),
        "loss": float(out.loss),
        "grads": {
            n: p.grad.detach().cpu().clone() for n, p in state.net.named_parameters() if p.grad is not None
        },
        "stats": running_stats(state.net),
    }
    del state
    free_memory(device)
    return ref


def rel_error(a: torch.Tensor, b: torch.Tensor, floor: float = 0.0) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / max(float(b.norm()), floor, 1e-30))


def ddp_worker(args: argparse.Namespace) -> int:
    """One rank under torchrun: its half of the reference's global batch through the DDP model."""
    warnings.filterwarnings("ignore", message=r"batch_size \d+ over \d+ ranks")  # the small CPU batch
    procs = distributed.setup(args.device, timeout_minutes=10)
    try:
        ref = torch.load(args.ddp_reference, map_location="cpu", weights_only=True)
        cfg = TrainConfig.from_dict(json.loads(ref["cfg"]))
        state = engine.build(
            cfg, ShardDataset(ref["data"]), procs.device, procs.rank, procs.world_size, prefetch=0
        )
        freeze_for_comparison(state.net, ref["batchnorm_eval"])
        figures: dict[str, Any] = {
            "rank": procs.rank,
            "device": str(procs.device),
            "backend": torch.distributed.get_backend(),
            "ddp": isinstance(state.model, torch.nn.parallel.DistributedDataParallel),
            "sync_bn": sum(isinstance(m, torch.nn.SyncBatchNorm) for m in state.net.modules()),
            "same_weights": weights_digest(state.net) == ref["digest"],
        }
        n = ref["v1"].shape[0] // procs.world_size
        rows = slice(procs.rank * n, (procs.rank + 1) * n)
        v1, v2 = ref["v1"][rows].to(procs.device), ref["v2"][rows].to(procs.device)
        z1, z2 = state.model(v1, v2, None)
        out = state.loss_fn(z1, z2)
        state.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        figures["loss"] = rel_error(out.loss.detach().cpu(), torch.tensor(ref["loss"]))
        grads = {n: p.grad for n, p in state.net.named_parameters()}
        missing = sorted(set(ref["grads"]) ^ {n for n, g in grads.items() if g is not None})
        total = math.sqrt(sum(float(g.double().norm()) ** 2 for g in ref["grads"].values()))
        diff = math.sqrt(
            sum(
                float((grads[n].cpu().double() - g.double()).norm()) ** 2
                for n, g in ref["grads"].items()
                if grads.get(n) is not None
            )
        )
        figures["grad"] = diff / max(total, 1e-30)
        per = {
            n: rel_error(grads[n].cpu(), g, 1e-3 * total)
            for n, g in ref["grads"].items()
            if grads.get(n) is not None
        }
        worst = max(per, key=per.get)
        figures.update(worst_grad=per[worst], worst_name=worst, missing=missing, tensors=len(per))
        stats = running_stats(state.net)
        figures["stats"] = max(
            (rel_error(stats[k], v) for k, v in ref["stats"].items() if k in stats), default=0.0
        )
        figures["stats_tensors"] = len(ref["stats"])
        # ... and an ordinary train_step through the same wrapper, on this rank's own batch.
        state.model.train()
        figures["train_step_loss"] = engine.train_step(state, state.sampler.batch_at(0, 0)).loss
        engine.check_finite(state)
        gathered = distributed.gather(procs, figures)
        if procs.is_main:
            print(RESULT + json.dumps(gathered), flush=True)
        distributed.leave_together(procs)
        return 0
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def ddp_check(report: Report, backend: str, data: Path, work: Path, device, args, budget: Budget) -> None:
    on_cuda = backend == "nccl"
    tol = DDP_TOLERANCE[backend]
    tiny = args.tiny or not on_cuda
    name = f"{backend} 2 ranks vs 1 process" + ("" if on_cuda else " (CPU)")
    cfg = train_config(PRESETS[0], tiny, "precision=fp32", "tf32=false")
    ref_device = torch.device("cuda", 0) if on_cuda else torch.device("cpu")
    ref = ddp_reference(cfg, data, ref_device, batchnorm_eval=not on_cuda)
    ref_path = work / f"ddp_{backend}_reference.pt"
    torch.save(ref, ref_path)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        str(Path(__file__).resolve()), "--worker", "ddp", "--device", "cuda" if on_cuda else "cpu",
        "--ddp-reference", str(ref_path),
    ]  # fmt: skip
    show(cmd)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=subprocess_env(ref_device), capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=max(10.0, min(args.subprocess_timeout, budget.left())),
    )  # fmt: skip
    ranks = result_line(proc.stdout)
    if proc.returncode != 0 or not ranks:
        report.add("ddp", name, f"FAILED (exit {proc.returncode})", "", tail(proc.stderr or proc.stdout))
        return
    worst = {k: max(r[k] for r in ranks) for k in ("loss", "grad", "worst_grad", "stats")}
    problems = [
        what
        for what, bad in (
            ("not wrapped in DistributedDataParallel", not all(r["ddp"] for r in ranks)),
            ("different initial weights", not all(r["same_weights"] for r in ranks)),
            ("parameters without gradients", any(r["missing"] for r in ranks)),
            ("no SyncBatchNorm", on_cuda and not all(r["sync_bn"] for r in ranks)),
            ("loss", worst["loss"] > tol),
            ("gradient", worst["grad"] > tol or worst["worst_grad"] > tol),
            ("running statistics", on_cuda and worst["stats"] > tol),
        )
        if bad
    ]
    compared = (
        "loss, every gradient, SyncBatchNorm running stats; Dropout off"
        if on_cuda
        else "loss and every gradient, BatchNorm + Dropout in eval mode (no SyncBatchNorm on the CPU)"
    )
    report.add(
        "ddp",
        name,
        "ok" if not problems else "FAILED",
        "",
        (f"mismatch: {', '.join(problems)}; " if problems else "")
        + f"{compared}; fp32; tolerance {tol:g} (relative L2); ranks on "
        + ", ".join(r["device"] for r in ranks)
        + f"; {ranks[0]['sync_bn']} SyncBatchNorm layers; then a train_step on each rank's own batch: loss "
        + ", ".join(f"{r['train_step_loss']:.4g}" for r in ranks)
        + f"; {time.perf_counter() - start:.1f} s",
    )
    note = f"max over the 2 ranks; tolerance {tol:g}"
    report.add("ddp", f"{backend} loss rel. error", worst["loss"], "", note)
    report.add(
        "ddp",
        f"{backend} gradient rel. error",
        worst["grad"],
        "",
        f"all {ranks[0]['tensors']} tensors together; {note}",
    )
    w = max(ranks, key=lambda r: r["worst_grad"])
    report.add(
        "ddp",
        f"{backend} worst tensor gradient rel. error",
        worst["worst_grad"],
        "",
        f"{w['worst_name']}; {note}",
    )
    if on_cuda:
        report.add(
            "ddp",
            f"{backend} running stats rel. error",
            worst["stats"],
            "",
            f"{ranks[0]['stats_tensors']} buffers; {note}",
        )


def ddp_section(report: Report, data: Path, work: Path, device, args, budget: Budget) -> None:
    gpus = gpu_count(device)
    if gpus >= 2:
        ddp_check(report, "nccl", data, work, device, args, budget)
        return
    where = f"{gpus} GPU visible" if gpus else "CPU run"
    report.add(
        "ddp",
        "nccl 2 ranks vs 1 process",
        "NOT TESTED",
        "",
        f"needs >= 2 GPUs ({where}): NCCL, SyncBatchNorm and multi-GPU DDP are not tested",
    )
    print(
        "  NOTE: DDP over NCCL is NOT tested with fewer than 2 GPUs; the gloo comparison below is CPU-only",
        flush=True,
    )
    ddp_check(report, "gloo", data, work, device, args, budget)


# ---- precision -----------------------------------------------------------------------------------


def precision_section(report: Report, dataset, device, args) -> None:
    preset = PRESETS[0]
    n = args.loss_steps
    batches = None
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = train_config(preset, args.tiny, f"precision={precision}", f"steps={n}")
        state = engine.build(cfg, dataset, device, prefetch=0)
        if batches is None:  # the same crops for both runs (the sampler's own order, drawn once)
            batches = [state.sampler.batch_at(0, b % len(state.sampler)) for b in range(n)]
        curve = [engine.train_step(state, crops).loss for crops in batches]
        losses[precision] = curve
        del state
        free_memory(device)
    fp32, bf16 = losses["fp32"][-1], losses["bf16"][-1]
    report.add(
        "precision",
        f"{preset} loss after {n} steps, fp32",
        fp32,
        "",
        "TF32 on" if device.type == "cuda" else "",
    )
    report.add("precision", f"{preset} loss after {n} steps, bf16", bf16, "")
    rel = abs(bf16 - fp32) / max(abs(fp32), 1e-12)
    first = abs(losses["bf16"][0] - losses["fp32"][0]) / max(abs(losses["fp32"][0]), 1e-12)
    report.add("precision", "relative difference after N steps", rel, "", f"first step: {first:.2e}")


# ---- waveform augmentations ----------------------------------------------------------------------


def waveaug_section(report: Report, device, args, eager: dict) -> None:
    """ms per view of a batch for the device-side waveform front-end and all five waveform
    augmentations (training.augment_wave), beside the eager step of the first preset."""
    from hear_abt.config import FrontendConfig
    from hear_abt.frontend import LogMelFrontend
    from training.augment_wave import WaveAugmenter, WaveAugmentSettings, context_hops, input_hops

    batch, crop = (8, 96) if args.tiny else (128, 96)
    frontend = LogMelFrontend(FrontendConfig()).to(device)
    context = context_hops(frontend.cfg.n_fft, frontend.cfg.hop_length)
    gen = torch.Generator(device=device).manual_seed(0)
    blocks = {
        "front-end only": {},
        "all five": {f"{b}_p": 1.0 for b in ("gain", "eq", "reverb", "pitch", "stretch")},
    }
    per_view = {}
    for name, settings in blocks.items():
        s = WaveAugmentSettings(**settings)
        wav = 0.1 * torch.randn(
            batch, input_hops(crop, context, s.max_rate) * frontend.cfg.hop_length, device=device
        )
        aug = WaveAugmenter(s, frontend, crop, context)
        times = []
        for _ in range(4):  # the first is the warm-up (FFT plans, allocations)
            sync(device)
            t0 = time.perf_counter()
            aug(wav, gen)
            sync(device)
            times.append(time.perf_counter() - t0)
        per_view[name] = 1000 * min(times[1:])
        report.add("waveaug", f"{name}, one view of {batch} x {crop} frames", per_view[name], "ms")
    preset = PRESETS[0]
    both = 2 * per_view["all five"]
    note = ""
    if eager.get(preset):  # per sample: the augmentations' time against the eager step's
        note = f"{(both / batch) / (1000 / eager[preset]):.1%} of a {preset} step's time per sample"
    report.add("waveaug", "both views, all five blocks", both, "ms", note)


# ---- hear ----------------------------------------------------------------------------------------


def hear_section(report: Report, device, args) -> None:
    import hear_abt
    from hear_abt.embedder import ABTEmbedder

    seconds = 3.0 if args.tiny else args.hear_seconds
    rng = np.random.default_rng(0)
    audio = torch.from_numpy((0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32))
    audio = audio[None].to(device)
    norm = NormStats(-5.0, 7.0)
    ntt = TINY_NTT if args.tiny else {}
    vit, vit_kwargs = ("vitc_t", TINY_VIT) if args.tiny else ("vitc_b", {})
    cases = [
        ("audiontt", ntt, "faithful", "timestamps"),
        ("audiontt", ntt, "fast", "timestamps"),
        ("audiontt", ntt, "faithful", "scene"),
        (vit, vit_kwargs, "faithful", "timestamps"),
        (vit, vit_kwargs, "faithful", "scene"),
    ]
    for encoder, kwargs, mode, what in cases:
        torch.manual_seed(0)
        model = ABTEmbedder(
            ModelConfig(encoder=encoder, encoder_kwargs=kwargs, norm=norm), timestamp_mode=mode
        )
        model = model.to(device)
        call = hear_abt.get_timestamp_embeddings if what == "timestamps" else hear_abt.get_scene_embeddings
        call(audio[:, : SAMPLE_RATE * 2], model)  # warm-up (kernels, cuDNN autotuning)
        sync(device)
        start = time.perf_counter()
        out = call(audio, model)
        sync(device)
        elapsed = time.perf_counter() - start
        first = out[0] if isinstance(out, tuple) else out
        finite = bool(torch.isfinite(first).all())
        report.add(
            "hear",
            f"{encoder} {what} {mode if what == 'timestamps' else ''}".strip() + " x real time",
            seconds / elapsed,
            "x",
            f"{seconds:.0f} s clip" + ("" if finite else "; NON-FINITE OUTPUT"),
        )
        del model
    free_memory(device)


# ---- heareval ------------------------------------------------------------------------------------


def heareval_section(report: Report, work: Path, device, args, budget: Budget) -> None:
    try:
        import heareval  # noqa: F401
    except ImportError:
        report.add(
            "heareval", "embeddings runner", "skipped", "",
            "heareval not installed (.venv/bin/python -m abt_eval.hear_tools install)",
        )  # fmt: skip
        return
    from abt_eval import devsuite
    from hear_abt.embedder import ABTEmbedder
    from hear_abt.weights import save_pretrained

    tasks = work / "tasks"
    devsuite.build_task(tasks, "speech-words", small=True, seed=0, jobs=max(1, min(8, os.cpu_count() or 1)))
    kwargs = TINY_NTT if args.tiny else {}
    config = ModelConfig(encoder_kwargs=kwargs, norm=NormStats(-5.0, 7.0))
    torch.manual_seed(0)
    model_dir = save_pretrained(work / "hear_model", config, ABTEmbedder(config).encoder.state_dict())
    env = subprocess_env(device)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cmd = [
        sys.executable, "-m", "abt_eval.heareval_compat", "embeddings", "hear_abt", "--model", str(model_dir),
        "--tasks-dir", str(tasks), "--task", "speech-words", "--embeddings-dir", str(work / "embeddings"),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
        timeout=max(10.0, min(args.subprocess_timeout, budget.left())),
    )  # fmt: skip
    made = list((work / "embeddings").rglob("*.npy"))
    ok = proc.returncode == 0 and made
    report.add(
        "heareval",
        "embeddings runner, speech-words (small)",
        "ok" if ok else f"FAILED (exit {proc.returncode})",
        "",
        f"{len(made)} embedding files, {time.perf_counter() - start:.1f} s"
        + ("" if ok else "; " + tail(proc.stderr)),
    )


# ---- variants ------------------------------------------------------------------------------------


def variants_section(report: Report, data: Path, device, args, budget: Budget, eager: dict) -> None:
    planned = [(s, p) for s in ("channels_last", "compile") if s in args.variants_list for p in PRESETS]
    for setting in sorted({"channels_last", "compile"} - args.variants_list):
        why = (
            "--variants"
            if device.type == "cuda"
            else "not run on the CPU by default (inductor's C++ compile takes minutes); --variants chooses"
        )
        for preset in PRESETS:
            report.add("variants", f"{preset} samples/s, {setting}=true", "skipped", "", why)
    for i, (setting, preset) in enumerate(planned):
        name = f"{preset} samples/s, {setting}=true"
        left = budget.left()
        if left < SECTION_SECONDS["variants"][args.tiny]:
            report.add("variants", name, "skipped", "", f"budget: {max(left, 0):.0f} s left")
            continue
        timeout = max(10.0, min(args.subprocess_timeout, left / (len(planned) - i)))  # a fair share
        cmd = [
            sys.executable, str(Path(__file__).resolve()), "--worker", "train", "--preset", preset,
            "--set", f"{setting}=true", "--device", str(device), "--data", str(data),
            "--steps", str(args.steps), "--warmup", str(args.warmup), "--train-seconds", str(args.train_seconds),
            "--reader-batches", str(args.reader_batches), *(["--tiny"] if args.tiny else []),
        ]  # fmt: skip
        show(cmd)
        try:
            proc = subprocess.run(
                cmd, cwd=REPO, env=subprocess_env(device), capture_output=True, text=True,
                stdin=subprocess.DEVNULL, timeout=timeout,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            report.add(
                "variants", name, "failed", "", f"timed out after {timeout:.0f} s (its share of the budget)"
            )
            continue
        f = result_line(proc.stdout)
        if proc.returncode != 0 or not f:  # reported, not fatal: these settings are off by default
            report.add("variants", name, "failed", "", tail(proc.stderr or proc.stdout))
            continue
        note = f"{f['precision']}; {args.warmup} warm-up steps took {f['warmup_seconds']:.1f} s"
        note += " (incl. compiling)" if setting == "compile" else ""
        if eager.get(preset):
            note = f"{f['rate'] / eager[preset]:.2f}x eager; " + note
        report.add("variants", name, f["rate"], "samples/s", note)


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda[:N] or cpu (default: cuda if available, else cpu)")
    ap.add_argument("--tiny", action="store_true", help="tiny models, data and clips (for the CPU and tests)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--work", type=Path, help="corpus, shards and runs (default: a temporary folder); reused")
    ap.add_argument(
        "--budget-seconds", type=float, default=420.0, help="skip sections past this (default: %(default)s)"
    )
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: " + ",".join(SECTIONS))
    ap.add_argument(
        "--variants",
        default=None,
        help="channels_last,compile (default: both on CUDA, channels_last on the CPU)",
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="most timed training steps (default: 300; tiny: 2)"
    )
    ap.add_argument(
        "--train-seconds", type=float, default=None, help="timed steps stop after this (default: 6; tiny: 60)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 15; tiny: 1)")
    ap.add_argument(
        "--sync-steps", type=int, default=3, help="steps watched for host syncs (default: %(default)s)"
    )
    ap.add_argument(
        "--reader-batches", type=int, default=None, help="reader batches timed (default: 100; tiny: 20)"
    )
    ap.add_argument("--loss-steps", type=int, default=None, help="bf16 vs fp32 steps (default: 20; tiny: 2)")
    ap.add_argument(
        "--clips", type=int, default=None, help="distinct synthetic clips (default: 256; tiny: 40)"
    )
    ap.add_argument(
        "--clip-max-seconds", type=float, default=None, help="clips are 1 s to this (default: 10; tiny: 3)"
    )
    ap.add_argument("--clips-per-shard", type=int, default=None, help="(default: 32; tiny: 16)")
    ap.add_argument(
        "--epoch-steps",
        type=int,
        default=None,
        help="list the clips until an epoch has this many batches (default: 200; tiny: 10)",
    )
    ap.add_argument("--hear-seconds", type=float, default=60.0, help="HEAR API clip (default: %(default)s)")
    ap.add_argument(
        "--subprocess-timeout", type=float, default=240.0, help="per subprocess (s), at most the budget left"
    )
    # Worker modes (this script started by itself).
    ap.add_argument("--worker", choices=["train", "ddp"], help=argparse.SUPPRESS)
    ap.add_argument("--preset", choices=PRESETS, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--ddp-reference", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny

    def default(name: str, full: Any, small: Any) -> None:
        if getattr(args, name) is None:
            setattr(args, name, small if tiny else full)

    default("steps", 300, 2)
    default("train_seconds", 6.0, 60.0)
    default("warmup", 15, 1)
    default("reader_batches", 100, 20)
    default("loss_steps", 20, 2)
    default("clips", 256, 40)
    default("clip_max_seconds", 10.0, 3.0)
    default("clips_per_shard", 32, 16)
    default("epoch_steps", 200, 10)
    args.skip_set = {s.strip() for s in args.skip.split(",") if s.strip()}
    return args


def choose_device(arg: str | None) -> torch.device:
    if arg is None:
        arg = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(arg)
    if device.type == "cuda":
        device = torch.device("cuda", device.index or 0)
        torch.cuda.set_device(device)
    return device


def train_worker(args: argparse.Namespace) -> int:
    device = choose_device(args.device)
    figures = train_once(args.preset, args.set, ShardDataset(args.data), device, args, sync_steps=0)
    print(RESULT + json.dumps(figures), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker == "ddp":
        return ddp_worker(args)
    if args.worker == "train":
        return train_worker(args)
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run with --device cpu --tiny", file=sys.stderr)
        return 2
    unknown = args.skip_set - set(SECTIONS)
    if unknown:
        print(
            f"error: unknown sections to skip: {sorted(unknown)}; known: {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    device = choose_device(args.device)
    args.variants_list = (
        {v.strip() for v in args.variants.split(",") if v.strip()}
        if args.variants is not None
        else ({"channels_last", "compile"} if device.type == "cuda" else {"channels_last"})
    )
    if args.variants_list - {"channels_last", "compile"}:
        print("error: --variants takes channels_last and/or compile", file=sys.stderr)
        return 2
    if device.type == "cuda":
        bf16 = "yes" if torch.cuda.is_bf16_supported() else "NO"
        name = f"{torch.cuda.get_device_name(device)} ({gpu_count(device)} visible), bf16 {bf16}"
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(
        f"gpu_check: torch {torch.__version__}, {name}; {'tiny' if args.tiny else 'full'} sizes", flush=True
    )
    if device.type != "cuda" and not args.tiny:
        print("note: full sizes on the CPU take long; --tiny is the CPU mode", flush=True)
    report = Report()
    report.add("env", "device", name)
    budget = Budget(args.budget_seconds)
    begin = time.perf_counter()
    failures = 0
    eager: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        data, dataset = make_corpus(work, args)
        report.add("time", "corpus", time.perf_counter() - t0, "s", f"{len(dataset)} clips listed")
        sections = [
            ("train", lambda: train_section(report, dataset, device, args, budget, eager)),
            ("torchrun", lambda: torchrun_section(report, data, work, device, args, budget)),
            ("requeue", lambda: requeue_section(report, data, work, device, args, budget)),
            ("ddp", lambda: ddp_section(report, data, work, device, args, budget)),
            ("precision", lambda: precision_section(report, dataset, device, args)),
            ("waveaug", lambda: waveaug_section(report, device, args, eager)),
            ("hear", lambda: hear_section(report, device, args)),
            ("heareval", lambda: heareval_section(report, work, device, args, budget)),
            ("variants", lambda: variants_section(report, data, device, args, budget, eager)),
        ]
        for section, run in sections:
            if section in args.skip_set:
                report.add(section, "section", "skipped", "", "--skip")
                continue
            need = SECTION_SECONDS[section][args.tiny]
            if budget.left() < need:
                report.add(
                    section,
                    "section",
                    "skipped",
                    "",
                    f"budget: {max(budget.left(), 0):.0f} s left of {budget.seconds:.0f}, needs ~{need} s",
                )
                continue
            t0 = time.perf_counter()
            print(f"\n== {section} ({budget.left():.0f} s of the budget left)", flush=True)
            try:
                run()
            except Exception as err:  # one broken section must not hide the others' figures
                failures += 1
                traceback.print_exc()
                report.add(section, "section", f"FAILED: {type(err).__name__}", "", str(err)[:200])
            elapsed = time.perf_counter() - t0
            print(f"   ({section}: {elapsed:.1f} s)", flush=True)
            report.add("time", section, elapsed, "s")
    total = time.perf_counter() - begin
    report.add(
        "env",
        "total time",
        total,
        "s",
        f"budget {budget.seconds:.0f} s" + ("; target < 480 s on one GPU" if device.type == "cuda" else ""),
    )
    print("\nSummary\n" + report.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "tiny": args.tiny, "rows": report.rows}, indent=1))
        print(f"wrote {args.json}")
    failed_rows = [r for r in report.rows if isinstance(r["value"], str) and r["value"].startswith("FAILED")]
    return 1 if failures or failed_rows else 0


if __name__ == "__main__":
    sys.exit(main())
