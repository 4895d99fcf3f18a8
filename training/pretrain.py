"""Audio Barlow Twins pre-training.

    python -m training.pretrain --preset NAME --data DIR --run-dir DIR [key=value ...]
    python -m training.pretrain --run-dir DIR --resume
    torchrun --nproc_per_node=N -m training.pretrain ...

Each step: crops -> dataset normalisation -> two augmented views -> encoder + projector -> Barlow
Twins loss on the global batch -> LARS/AdamW step (training.engine); docs/pretraining.md has more.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from hear_abt.config import ModelConfig
from hear_abt.devices import parse_device

from . import engine
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DEFAULT_PRESET, PRESETS, TrainConfig, build_config
from .data import ShardDataset
from .monitor import Monitor
from .probe import LinearProbe
from .run_dir import RunDir, RunDirError


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and key != "encoder_kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def settings_help(preset: str) -> str:
    lines = [f"Settings of preset {preset!r} (override as key=value, dotted for nested ones):"]
    lines += [f"  {k} = {v!r}" for k, v in _flat(build_config(preset).to_dict()).items()]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # --help shows the chosen preset's values, so find --preset before building the parser.
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--preset", default=None)
    known, _ = early.parse_known_args(argv)
    shown = known.preset if known.preset in PRESETS else DEFAULT_PRESET
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=settings_help(shown),
    )
    parser.add_argument(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help=f"base settings (default: {DEFAULT_PRESET}, the paper's run)",
    )
    parser.add_argument(
        "--data", help="folder written by `python -m training.prepare` (not needed with --resume)"
    )
    parser.add_argument("--run-dir", required=True, help="folder for checkpoints, logs and images")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint (its settings may be repeated, not changed)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda if available; LOCAL_RANK under torchrun)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override (see below)")
    return parser.parse_intermixed_args(argv)  # key=value settings may sit between options


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """Rank, world size and device; initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_arg:
        try:
            device = parse_device(device_arg)
        except ValueError as err:
            raise SystemExit(f"error: --device {err}") from None
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def requested_settings(preset: str, overrides: list[str]) -> dict[str, Any]:
    cfg = build_config(preset, overrides)
    if cfg.probe_task:
        cfg.probe_task = str(Path(cfg.probe_task).resolve())
    return cfg.to_dict()


def resolve_run(args: argparse.Namespace, run_dir: RunDir) -> dict[str, Any]:
    """Settings of a new run, or of the run being resumed (checked against any repeated settings)."""
    if args.resume:
        run = run_dir.read_run()
        if args.preset is not None or args.overrides:
            asked = _flat(requested_settings(args.preset or run["preset"], args.overrides))
            # Through the config class, so that settings added since the run started take their defaults.
            have = _flat(TrainConfig.from_dict(run["train"]).to_dict())
            diff = [
                f"{k} (run: {have.get(k)!r}, given: {asked[k]!r})" for k in asked if asked[k] != have.get(k)
            ]
            if diff:
                raise SystemExit(
                    "--resume continues the run with its own settings; these differ from "
                    f"{run_dir.run_file}: {'; '.join(diff)}. Start a new --run-dir to change them."
                )
        if args.data and str(Path(args.data).resolve()) != run["data"]:
            raise SystemExit(f"--resume: the run trains on {run['data']}, not {Path(args.data).resolve()}")
        return run
    if run_dir.last.exists():
        raise SystemExit(
            f"{run_dir.path} already holds a run: pass --resume to continue it, or choose another --run-dir"
        )
    if not args.data:
        raise SystemExit(
            "--data is required for a new run (a folder written by `python -m training.prepare`)"
        )
    preset = args.preset or DEFAULT_PRESET
    return {
        "preset": preset,
        "data": str(Path(args.data).resolve()),
        "train": requested_settings(preset, args.overrides),
    }


def main(argv: list[str] | None = None, hint_next: bool = True) -> int:
    """Run (or resume) a pre-training run; ``hint_next=False`` omits the closing "export next" hint."""
    args = parse_args(argv)
    run_dir = RunDir(Path(args.run_dir).resolve())
    rank, world_size, device = setup_distributed(args.device)
    is_main = rank == 0
    lock = None
    try:
        lock = run_dir.lock().acquire() if is_main else None
        run = resolve_run(args, run_dir)
        cfg = TrainConfig.from_dict(run["train"]).validate()
        dataset = ShardDataset(run["data"])
        state = engine.build(cfg, dataset, device, rank, world_size)
    except BaseException as err:
        if lock is not None:
            lock.release()
        if isinstance(err, (RunDirError, ValueError, FileNotFoundError)):
            raise SystemExit(f"error: {err}") from err
        raise
    model_config = ModelConfig(
        encoder=cfg.encoder,
        encoder_kwargs=cfg.encoder_kwargs,
        frontend=dataset.frontend,
        norm=dataset.norm,
        provenance={
            "preset": run["preset"],
            "data": run["data"],
            "clips": len(dataset),
            "total_steps": state.total_steps,
        },
    )
    if is_main:
        run_dir.write_run(run)
    saved = None
    if args.resume and run_dir.last.exists():
        try:
            saved = load_checkpoint(run_dir.last)
            engine.load_checkpoint_state(state, saved)
        except Exception as err:  # torch raises several types for truncated or corrupt files
            if lock is not None:
                lock.release()
            raise SystemExit(
                f"error: cannot resume from {run_dir.last}: {err}. If the file is corrupt (a full disk or a "
                "copy cut short), restore it from a backup or start a new --run-dir; checkpoints written by "
                "this code are replaced atomically, so a kill never leaves a half-written one."
            ) from err

    def save(path: Path) -> None:
        full = engine.checkpoint_state(state, model_config.to_dict())  # a collective: every rank calls it
        if full is not None:
            save_checkpoint(path, full)

    probe = (
        LinearProbe(
            cfg.probe_task, cfg.probe_max_clips, protocol=cfg.probe_protocol, crop_frames=cfg.crop_frames
        )
        if cfg.probe_every and is_main
        else None
    )
    monitor = Monitor(run_dir.path, resume_step=state.step) if is_main else None
    if saved is not None:  # set-up may have drawn from the RNGs: the first step must see the saved ones
        engine.reset_rngs(state, saved)
        del saved
    bar = tqdm(
        total=state.total_steps,
        initial=state.step,
        desc="pre-training",
        unit="step",
        disable=not is_main or args.no_progress,
        dynamic_ncols=True,
    )
    if is_main:
        print(
            f"{cfg.encoder}: {sum(p.numel() for p in state.net.parameters()):,} parameters (encoder + projector); "
            f"{len(dataset)} clips, {state.steps_per_epoch} steps/epoch, {state.total_steps} steps; "
            f"device {device}, world size {world_size}",
            file=sys.stderr,
        )
        if world_size > 1 and device.type != "cuda":
            print(
                "note: SyncBatchNorm needs CUDA; on the CPU each rank's BatchNorms use local statistics",
                file=sys.stderr,
            )
    t_last, steps_since = time.perf_counter(), 0
    try:
        while state.step < state.total_steps:
            for crops in state.sampler:
                result = engine.train_step(state, crops)
                step, done = state.step, state.step >= state.total_steps
                steps_since += 1
                bar.update(1)
                if is_main and (step % cfg.log_every == 0 or done):
                    now = time.perf_counter()
                    rate = steps_since * cfg.batch_size / max(now - t_last, 1e-9)
                    t_last, steps_since = now, 0
                    lrs = state.optimizer.param_groups
                    monitor.log(
                        {
                            "step": step,
                            "epoch": round(step / state.steps_per_epoch, 4),
                            "loss": result.loss,
                            "on_diag": result.on_diag,
                            "off_diag": result.off_diag,
                            "lr_weights": lrs[0]["lr"],
                            "lr_biases": lrs[-1]["lr"],
                            "samples_per_s": rate,
                            "embedding_std": result.embedding_std,
                        }
                    )
                    bar.set_postfix(loss=f"{result.loss:.2f}", samples_s=f"{rate:.0f}")
                if cfg.probe_every and step % cfg.probe_every == 0:
                    score = [probe.score(state.net.encoder, model_config, device) if is_main else None]
                    if world_size > 1:
                        dist.broadcast_object_list(score, src=0)
                    if is_main:
                        monitor.log_probe(step, probe.name, score[0])
                    if score[0] > state.best_probe:
                        state.best_probe = score[0]
                        save(run_dir.best)
                if step % cfg.checkpoint_every == 0 or done:
                    save(run_dir.last)
                if is_main and (step % cfg.image_every == 0 or done):
                    monitor.images_at(step, result.c)
                if done:
                    break
        if world_size > 1:
            dist.barrier()  # rank 0 has written the last checkpoint; leave together
    except engine.NonFiniteLoss as err:
        if is_main:
            kept = (
                f"the last good checkpoint ({run_dir.last}, step {load_checkpoint(run_dir.last)['step']}) is intact"
                if run_dir.last.exists()
                else f"no checkpoint had been written yet (one is written every {cfg.checkpoint_every} steps)"
            )
            print(
                f"\nerror: {err}. Training stopped; {kept}. Try a lower learning rate (lr_weights=...), "
                "precision=fp32, or check the data for silence-only clips.",
                file=sys.stderr,
            )
        return 3
    finally:
        bar.close()
        if monitor is not None:
            monitor.close()
        if world_size > 1:
            dist.destroy_process_group()
        if lock is not None:
            lock.release()
    if is_main and hint_next:
        print(
            f"done: {state.step} steps; checkpoint {run_dir.last}. Next: "
            f"`{Path(sys.executable).name} -m training.export {run_dir.path} OUT_DIR` for Hub-style weights",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
