"""The GPU path in one run (< 8 minutes on one GPU): training speed, bf16 vs fp32, data reader, HEAR API,
torchrun + NCCL, heareval. Prints a summary table; ``--json FILE`` writes the figures.

    .venv/bin/python benchmarks/gpu_check.py                       # on a CUDA GPU
    .venv/bin/python benchmarks/gpu_check.py --device cpu --tiny   # tiny sizes on the CPU (tests run this)
        [--json figures.json] [--work DIR] [--steps N] [--compile auto|on|off] [--skip heareval,torchrun]

What it measures (each section also runs with ``--device cpu --tiny``, so the script cannot rot):

1. **Data reader**: a synthetic corpus (``benchmarks/bench_data.py``'s noisy tones) prepared into shards
   with ``training.prepare``; crops/s of ``training.data.CropSampler``'s prefetching iterator.
2. **Training samples/s** for ``audioset-audiontt`` and ``audioset-vitc-b`` in bf16 (``precision=bf16``),
   built by ``training.engine.build`` and stepped by ``training.engine.train_step`` (the one training
   step) with the sampler in the loop, as ``training.pretrain`` runs it; again with ``torch.compile``
   of the siamese model when ``--compile`` allows (default: on CUDA only; a compile failure is
   reported, not fatal). Targets on one H100-class GPU: AudioNTT >= 6,000, ViT_C-B >= 3,000 samples/s,
   data reader >= 10x the training rate.
3. **bf16 vs fp32**: the same N steps (same weights, batches and augmentation draws) in fp32 and bf16;
   the losses after N steps and their relative difference.
4. **HEAR API** x real time (audio seconds per second) on a clip on the device: AudioNTT faithful,
   fast and scene; ViT_C faithful.
5. **torchrun --nproc_per_node=1** of ``python -m training.pretrain`` for a few steps (checks that the
   launcher path trains and writes a checkpoint). At world size 1 ``pretrain`` creates no process group,
   so this alone never touches NCCL; a second torchrun'd process (this script with ``--ddp-probe``)
   initialises NCCL (gloo on the CPU), wraps the model as ``engine.build`` does for several ranks
   (SyncBatchNorm on CUDA, DistributedDataParallel) and runs ``train_step`` through it.
6. **heareval**'s embeddings runner (``python -m abt_eval.heareval_compat embeddings``) on the dev
   suite's small ``speech-words`` task, if heareval is installed (else skipped with a message).

No GPU has been available to the sessions that wrote this script: it has run only with
``--device cpu --tiny`` (tests/test_gpu_check.py). The first GPU run's figures belong in the README.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(REPO))
from bench_data import _make_corpus  # noqa: E402  (the shared synthetic corpus)

from hear_abt.config import SAMPLE_RATE, ModelConfig, NormStats  # noqa: E402
from training import engine  # noqa: E402
from training.config import build_config  # noqa: E402
from training.data import CropSampler, ShardDataset  # noqa: E402
from training.prepare import prepare  # noqa: E402

PRESETS = ("audioset-audiontt", "audioset-vitc-b")
TARGETS = {"audioset-audiontt": 6000.0, "audioset-vitc-b": 3000.0}  # samples/s on one H100-class GPU
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


class Report:
    """Figures in order: printed as they come, and as a table (and JSON) at the end."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, section: str, name: str, value: float | str | None, unit: str = "", note: str = "") -> None:
        self.rows.append({"section": section, "name": name, "value": value, "unit": unit, "note": note})
        shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
        print(f"  [{section}] {name}: {shown} {unit}" + (f"  ({note})" if note else ""), flush=True)

    def table(self) -> str:
        lines = [f"{'section':<10s} {'figure':<46s} {'value':>14s} {'unit':<12s} note", "-" * 100]
        for r in self.rows:
            v = r["value"]
            shown = f"{v:,.4g}" if isinstance(v, float) else ("-" if v is None else str(v))
            lines.append(f"{r['section']:<10s} {r['name']:<46s} {shown:>14s} {r['unit']:<12s} {r['note']}")
        return "\n".join(lines)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tiny_overrides(preset: str, args: argparse.Namespace) -> list[str]:
    return TINY_COMMON + TINY_ENCODER[preset] if args.tiny else []


def train_config(preset: str, args: argparse.Namespace, *extra: str):
    return build_config(preset, tiny_overrides(preset, args) + list(extra))


def subprocess_env() -> dict[str, str]:
    """This environment, with the repository importable."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


# ---- 1. data -------------------------------------------------------------------------------------


def make_dataset(work: Path, args: argparse.Namespace) -> ShardDataset:
    clips, seconds = (40, 3.0) if args.tiny else (args.clips, 10.0)
    _make_corpus(work / "wav", clips, seconds)
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    summary = prepare(work / "wav", work / "shards", workers=workers, clips_per_shard=64, progress=False)
    print(
        f"corpus: {summary.clips} clips, {summary.hours:.2f} h in {summary.shards} shards ({work})",
        flush=True,
    )
    dataset = ShardDataset(work / "shards")
    for shard in dataset.shards:  # page cache: time the reader, not the disk
        np.asarray(shard).sum(dtype=np.float32)
    return dataset


def reader_rate(dataset: ShardDataset, batch: int, n_batches: int) -> float:
    """Crops/s of the prefetching CropSampler (96 frames), as the trainer iterates it."""
    sampler = CropSampler(dataset, batch_size=batch, crop_frames=96, seed=0, prefetch=2)
    produced, start = -2, 0.0
    while produced < n_batches:
        for _crops in sampler:
            produced += 1
            if produced == 0:  # two warm-up batches: permutation, thread start-up
                start = time.perf_counter()
            if produced == n_batches:
                break
    return n_batches * batch / (time.perf_counter() - start)


# ---- 2. training speed ---------------------------------------------------------------------------


def train_rate(state: engine.TrainState, warmup: int, steps: int) -> tuple[float, float]:
    """(samples/s, last loss) with the state's own prefetching sampler feeding train_step."""
    done, start, loss = -warmup, 0.0, float("nan")
    while done < steps:
        for crops in state.sampler:
            loss = engine.train_step(state, crops).loss
            done += 1
            if done == 0:
                sync(state.device)
                start = time.perf_counter()
            if done == steps:
                break
    sync(state.device)
    return steps * state.cfg.batch_size / (time.perf_counter() - start), loss


def training_section(report: Report, dataset, device, args, reader: float) -> None:
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    for preset in PRESETS:
        cfg = train_config(preset, args, "precision=bf16")
        state = engine.build(cfg, dataset, device, prefetch=2)
        params = sum(p.numel() for p in state.net.parameters())
        rate, loss = train_rate(state, args.warmup, args.steps)
        target = TARGETS[preset]
        note = f"{cfg.encoder}, {params / 1e6:.1f}M params, batch {cfg.batch_size}, loss {loss:.4g}"
        if device.type == "cuda" and not args.tiny:
            note += f"; target >= {target:,.0f}: {'PASS' if rate >= target else 'FAIL'}"
        report.add("train", f"{preset} bf16 samples/s", rate, "samples/s", note)
        report.add("train", f"{preset} reader/train ratio", reader / rate, "x", "target >= 10x")
        if use_compile:
            try:
                start = time.perf_counter()
                state.model = torch.compile(state.model)
                crate, _ = train_rate(state, args.warmup, args.steps)
                report.add(
                    "train",
                    f"{preset} bf16 + torch.compile samples/s",
                    crate,
                    "samples/s",
                    f"{crate / rate:.2f}x eager; compile + run took {time.perf_counter() - start:.0f} s",
                )
            except Exception as err:  # compile support varies by platform: report it, go on
                report.add(
                    "train", f"{preset} torch.compile", "failed", "", f"{type(err).__name__}: {err}"[:200]
                )
        del state
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---- 3. bf16 vs fp32 -----------------------------------------------------------------------------


def precision_section(report: Report, dataset, device, args) -> None:
    preset = PRESETS[0]
    n = args.loss_steps
    batches = None
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = train_config(preset, args, f"precision={precision}", f"steps={n}")
        state = engine.build(cfg, dataset, device, prefetch=0)
        if batches is None:  # the same crops for both runs (the sampler's own order, drawn once)
            batches = [state.sampler.batch_at(0, b % len(state.sampler)) for b in range(n)]
        curve = [engine.train_step(state, crops).loss for crops in batches]
        losses[precision] = curve
        del state
    fp32, bf16 = losses["fp32"][-1], losses["bf16"][-1]
    report.add("precision", f"{preset} loss after {n} steps, fp32", fp32, "")
    report.add("precision", f"{preset} loss after {n} steps, bf16", bf16, "")
    rel = abs(bf16 - fp32) / max(abs(fp32), 1e-12)
    first = abs(losses["bf16"][0] - losses["fp32"][0]) / max(abs(losses["fp32"][0]), 1e-12)
    report.add("precision", "relative difference after N steps", rel, "", f"first step: {first:.2e}")


# ---- 4. HEAR API ---------------------------------------------------------------------------------


def hear_section(report: Report, device, args) -> None:
    import hear_abt
    from hear_abt.embedder import ABTEmbedder

    seconds = 3.0 if args.tiny else args.clip_seconds
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


# ---- 5. torchrun ---------------------------------------------------------------------------------


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone", *args]


def torchrun_section(report: Report, work: Path, device, args) -> None:
    env = subprocess_env()
    steps = 3
    run_dir = work / "torchrun_run"
    overrides = tiny_overrides(PRESETS[0], args) + [f"steps={steps}", "log_every=1"]
    if device.type == "cuda":
        overrides.append("precision=bf16")
    cmd = _torchrun(
        "-m", "training.pretrain", "--preset", PRESETS[0], "--data", str(work / "shards"),
        "--run-dir", str(run_dir), "--no-progress", "--device", "cuda" if device.type == "cuda" else "cpu",
        *overrides,
    )  # fmt: skip
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(run_dir)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.subprocess_timeout
    )
    ok = proc.returncode == 0 and (run_dir / "checkpoints" / "last.pt").is_file()
    report.add(
        "torchrun",
        f"pretrain, {steps} steps, nproc_per_node=1",
        "ok" if ok else f"FAILED (exit {proc.returncode})",
        "",
        f"{time.perf_counter() - start:.1f} s incl. start-up" + ("" if ok else "; " + proc.stderr[-300:]),
    )
    backend = "nccl" if device.type == "cuda" else "gloo"
    probe = _torchrun(
        str(Path(__file__).resolve()), "--ddp-probe", "--work", str(work), "--device", device.type
    )
    if args.tiny:
        probe.append("--tiny")
    start = time.perf_counter()
    proc = subprocess.run(
        probe, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.subprocess_timeout
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("DDP-PROBE ")), "")
    if proc.returncode == 0 and line:
        info = json.loads(line[len("DDP-PROBE ") :])
        report.add(
            "torchrun",
            f"{info['backend']} process group + DDP train_step",
            "ok",
            "",
            f"loss {info['loss']:.4g}, all_reduce {info['all_reduce']}, SyncBatchNorm layers "
            f"{info['sync_bn']}; {time.perf_counter() - start:.1f} s",
        )
    else:
        report.add(
            "torchrun", f"{backend} process group + DDP train_step", f"FAILED (exit {proc.returncode})", "",
            (proc.stderr or proc.stdout)[-300:],
        )  # fmt: skip


def ddp_probe(args: argparse.Namespace) -> int:
    """Run under torchrun: process group, the multi-rank wrapping of engine.build, train_step through it."""
    import torch.distributed as dist
    from torch import nn

    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if args.device == "cuda" else None
    device = device or torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        dataset = ShardDataset(Path(args.work) / "shards")
        cfg = train_config(PRESETS[0], args, "precision=bf16" if device.type == "cuda" else "precision=fp32")
        # Built as rank 0 of 2, so that engine.build's own multi-rank wrapping (SyncBatchNorm on CUDA,
        # DistributedDataParallel) runs; the process group has one rank, which both accept.
        state = engine.build(cfg, dataset, device, rank=0, world_size=2, prefetch=0)
        if not isinstance(state.model, nn.parallel.DistributedDataParallel):
            raise RuntimeError("engine.build did not wrap the model in DistributedDataParallel")
        sync_bn = sum(isinstance(m, nn.SyncBatchNorm) for m in state.net.modules())
        loss = float("nan")
        for b in range(2):
            loss = engine.train_step(state, state.sampler.batch_at(0, b)).loss
        t = torch.ones(1, device=device)
        dist.all_reduce(t)
        print(
            "DDP-PROBE "
            + json.dumps({"backend": backend, "loss": loss, "all_reduce": float(t), "sync_bn": sync_bn})
        )
        return 0 if math.isfinite(loss) else 1
    finally:
        dist.destroy_process_group()


# ---- 6. heareval ---------------------------------------------------------------------------------


def heareval_section(report: Report, work: Path, device, args) -> None:
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
    env = subprocess_env()
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device.type != "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ""
    cmd = [
        sys.executable, "-m", "abt_eval.heareval_compat", "embeddings", "hear_abt", "--model", str(model_dir),
        "--tasks-dir", str(tasks), "--task", "speech-words", "--embeddings-dir", str(work / "embeddings"),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=args.subprocess_timeout
    )
    made = list((work / "embeddings").rglob("*.npy"))
    ok = proc.returncode == 0 and made
    report.add(
        "heareval",
        "embeddings runner, speech-words (small)",
        "ok" if ok else f"FAILED (exit {proc.returncode})",
        "",
        f"{len(made)} embedding files, {time.perf_counter() - start:.1f} s"
        + ("" if ok else "; " + proc.stderr[-300:]),
    )


# ---- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda[:N] or cpu (default: %(default)s)")
    ap.add_argument("--tiny", action="store_true", help="tiny models, data and clips (for the CPU and tests)")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--work", type=Path, help="corpus, shards and runs (default: a temporary folder)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps (default: 40; tiny: 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 5; tiny: 1)")
    ap.add_argument("--loss-steps", type=int, default=None, help="bf16 vs fp32 steps (default: 20; tiny: 2)")
    ap.add_argument("--clips", type=int, default=1024, help="synthetic corpus clips (default: %(default)s)")
    ap.add_argument("--clip-seconds", type=float, default=60.0, help="HEAR API clip (default: %(default)s)")
    ap.add_argument(
        "--compile", choices=["auto", "on", "off"], default="auto", help="torch.compile (auto: CUDA)"
    )
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: " + ",".join(SECTIONS))
    ap.add_argument("--subprocess-timeout", type=float, default=240.0, help="per torchrun/heareval run (s)")
    ap.add_argument("--ddp-probe", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.steps = args.steps or (2 if tiny else 40)
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 5)
    args.loss_steps = args.loss_steps or (2 if tiny else 20)
    return args


SECTIONS = ("reader", "train", "precision", "hear", "torchrun", "heareval")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.ddp_probe:
        return ddp_probe(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA GPU visible to torch; run with --device cpu --tiny", file=sys.stderr)
        return 2
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        print(
            f"error: unknown sections to skip: {sorted(unknown)}; known: {', '.join(SECTIONS)}",
            file=sys.stderr,
        )
        return 2
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        name = (
            f"{torch.cuda.get_device_name(device)}, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'NO'}"
        )
    else:
        name = f"CPU, {torch.get_num_threads()} threads"
    print(
        f"gpu_check: torch {torch.__version__}, {name}; {'tiny' if args.tiny else 'full'} sizes", flush=True
    )
    report = Report()
    report.add("env", "device", name)
    begin = time.perf_counter()
    failures = 0
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = (args.work or Path(tmp)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        dataset = make_dataset(work, args)
        reader = float("nan")

        def reader_section() -> None:
            nonlocal reader
            batch = 8 if args.tiny else 128
            reader = reader_rate(dataset, batch, 20 if args.tiny else 200)
            report.add("reader", f"CropSampler crops/s (batch {batch} x 96 frames)", reader, "crops/s")

        steps = [
            ("reader", reader_section),
            ("train", lambda: training_section(report, dataset, device, args, reader)),
            ("precision", lambda: precision_section(report, dataset, device, args)),
            ("hear", lambda: hear_section(report, device, args)),
            ("torchrun", lambda: torchrun_section(report, work, device, args)),
            ("heareval", lambda: heareval_section(report, work, device, args)),
        ]
        for section, run in steps:
            if section in skip:
                report.add(section, "section", "skipped", "", "--skip")
                continue
            t0 = time.perf_counter()
            print(f"\n== {section}", flush=True)
            try:
                run()
            except Exception as err:  # one broken section must not hide the others' figures
                failures += 1
                traceback.print_exc()
                report.add(section, "section", f"FAILED: {type(err).__name__}", "", str(err)[:200])
            print(f"   ({section}: {time.perf_counter() - t0:.1f} s)", flush=True)
    total = time.perf_counter() - begin
    report.add("env", "total time", total, "s", "target < 480 s on one GPU" if device.type == "cuda" else "")
    print("\nSummary\n" + report.table())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": name, "tiny": args.tiny, "rows": report.rows}, indent=1))
        print(f"wrote {args.json}")
    failed_rows = [r for r in report.rows if isinstance(r["value"], str) and r["value"].startswith("FAILED")]
    return 1 if failures or failed_rows else 0


if __name__ == "__main__":
    sys.exit(main())
