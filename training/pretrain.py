"""Audio Barlow Twins pre-training: ``python -m training.pretrain --preset NAME --data DIR --run-dir DIR``.

One GPU, several GPUs or machines (``torchrun --nproc_per_node=N -m training.pretrain ...``), or the
CPU. Each step: crops -> dataset normalisation -> two augmented views -> encoder + projector ->
Barlow Twins loss on the global batch -> LARS/AdamW step with warm-up + cosine schedule.

A run directory holds ``run.json`` (settings), ``checkpoints/last.pt`` (everything a resume needs,
written atomically every ``checkpoint_every`` steps and at the end), ``metrics.csv``, ``tb/``
(TensorBoard) and ``images/``. ``--resume`` continues a killed run from its last checkpoint and
reaches the same weights as a run never interrupted (on the CPU; GPU kernels may be nondeterministic).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from hear_abt.config import ModelConfig

from .augment import ViewAugmenter
from .checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import PRESETS, TrainConfig, build_config
from .data import CropSampler, ShardDataset
from .loss import BarlowTwinsLoss
from .model import BarlowTwinsModel
from .monitor import CSV_FIELDS, Monitor, embedding_std
from .optim import build_optimizer, lr_factor, set_lr
from .probe import LinearProbe

RUN_FILE = "run.json"


class NonFiniteLoss(RuntimeError):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Settings (key=value, dotted for nested ones, e.g. augment.mixup=false lr_weights=0.2):\n  "
        + "\n  ".join(f"{k} = {v!r}" for k, v in TrainConfig().to_dict().items()),
    )
    parser.add_argument(
        "--preset", default="cpu-tiny", choices=sorted(PRESETS), help="base settings (default: cpu-tiny)"
    )
    parser.add_argument(
        "--data", help="folder written by `python -m training.prepare` (not needed with --resume)"
    )
    parser.add_argument("--run-dir", required=True, help="folder for checkpoints, logs and images")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this many steps; also the length of the learning-rate schedule when shorter than the epochs",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run in --run-dir from its last checkpoint"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda if available; LOCAL_RANK under torchrun)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override (see below)")
    return parser.parse_args(argv)


def setup_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """Rank, world size and device; initialises the process group under torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_arg:
        device = torch.device(device_arg)
    elif torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a grad scaler is needed)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None, False
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise ValueError("precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return torch.float16, True


def load_run(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Settings of a new run (written to run.json) or of the run being resumed."""
    run_file = run_dir / RUN_FILE
    if args.resume:
        if not run_file.is_file():
            raise SystemExit(f"--resume: {run_file} not found; start the run without --resume")
        run = json.loads(run_file.read_text())
        if args.overrides or (args.max_steps is not None and args.max_steps != run["max_steps"]):
            raise SystemExit(
                "--resume continues the run with its own settings; do not pass overrides or a new --max-steps"
            )
        return run
    if (run_dir / "checkpoints" / LAST_NAME).exists():
        raise SystemExit(
            f"{run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir"
        )
    if not args.data:
        raise SystemExit("--data is required for a new run")
    cfg = build_config(args.preset, args.overrides)
    if cfg.probe_task:
        cfg.probe_task = str(Path(cfg.probe_task).resolve())
    if cfg.probe_every and not cfg.probe_task:
        raise SystemExit("probe_every needs probe_task=PATH (a HEAR-format scene task folder)")
    run = {
        "preset": args.preset,
        "data": str(Path(args.data).resolve()),
        "max_steps": args.max_steps,
        "train": cfg.to_dict(),
    }
    return run


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run_dir = Path(args.run_dir).resolve()
    rank, world_size, device = setup_distributed(args.device)
    is_main = rank == 0
    run = load_run(run_dir, args)
    cfg = TrainConfig.from_dict(run["train"])

    dataset = ShardDataset(run["data"])
    if cfg.batch_size % world_size:
        raise SystemExit(f"batch_size {cfg.batch_size} is not divisible by the world size {world_size}")
    sampler = CropSampler(
        dataset,
        cfg.batch_size // world_size,
        cfg.crop_frames,
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
    )
    total_steps = max(1, round(cfg.epochs * len(sampler)))
    if run["max_steps"] is not None:
        total_steps = min(total_steps, run["max_steps"])
    warmup_steps = round(cfg.warmup_fraction * total_steps)
    model_config = ModelConfig(
        encoder=cfg.encoder,
        encoder_kwargs=cfg.encoder_kwargs,
        frontend=dataset.frontend,
        norm=dataset.norm,
        provenance={
            "preset": run["preset"],
            "data": run["data"],
            "clips": len(dataset),
            "total_steps": total_steps,
        },
    )
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2) + "\n")

    torch.manual_seed(cfg.seed)
    model = BarlowTwinsModel(cfg, dataset.frontend).to(device)
    if world_size > 1:
        if device.type == "cuda":
            # Global batch statistics in every BatchNorm, as in the single-process run.
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif is_main:
            print(
                "note: SyncBatchNorm needs CUDA; on the CPU each rank's BatchNorms use local statistics",
                file=sys.stderr,
            )
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    net: BarlowTwinsModel = model.module if world_size > 1 else model
    optimizer = build_optimizer(
        cfg.optimizer, net, cfg.lr_weights, cfg.lr_biases, cfg.weight_decay, batch_size=cfg.batch_size
    )
    amp_dtype, use_scaler = autocast_settings(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    augmenter = ViewAugmenter(cfg.augment)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + rank)
    loss_fn = BarlowTwinsLoss(lambd=cfg.lambd, alpha=cfg.alpha)
    mean, std = dataset.norm.mean, dataset.norm.std
    is_vit = hasattr(net.encoder, "num_patches")
    if is_vit and cfg.crop_frames != dataset.frontend.window_frames:
        raise SystemExit(
            f"ViT encoders take {dataset.frontend.window_frames}-frame inputs (their positional grid), "
            f"so crop_frames={cfg.crop_frames} cannot be used with {cfg.encoder}"
        )

    ckpt_path = run_dir / "checkpoints" / LAST_NAME
    best_path = run_dir / "checkpoints" / BEST_NAME
    probe = LinearProbe(cfg.probe_task, cfg.probe_max_clips) if cfg.probe_every and is_main else None
    best_probe = float("-inf")
    step = 0
    if args.resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        net.encoder.load_state_dict(state["encoder"])
        net.projector.load_state_dict(state["projector"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        sampler.load_state_dict(
            state["sampler"][rank] if isinstance(state["sampler"], list) else state["sampler"]
        )
        augmenter.load_state_dict(state["augment"])
        set_rng_state(state["rng"], aug_gen)
        step = state["step"]
        best_probe = state.get("best_probe", best_probe)
    if world_size > 1 and args.resume:
        dist.barrier()

    def checkpoint(path: Path = ckpt_path) -> None:
        # Sampler and augmentation state differ per rank: gather them so one file resumes all ranks.
        local = {
            "sampler": sampler.state_dict(),
            "augment": augmenter.state_dict(),
            "rng": rng_state(aug_gen),
        }
        if world_size > 1:
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, local)
        else:
            gathered = [local]
        if is_main:
            save_checkpoint(
                path,
                {
                    "model_config": model_config.to_dict(),
                    "train_config": cfg.to_dict(),
                    "encoder": net.encoder.state_dict(),
                    "projector": net.projector.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "step": step,
                    "total_steps": total_steps,
                    # Rank 0's own streams are restored from these; other ranks' from the lists.
                    "sampler": gathered[0]["sampler"]
                    if world_size == 1
                    else [g["sampler"] for g in gathered],
                    "augment": gathered[0]["augment"],
                    "rng": gathered[0]["rng"],
                    "best_probe": best_probe,
                },
            )

    monitor = Monitor(run_dir, resume_step=step) if is_main else None
    bar = tqdm(
        total=total_steps,
        initial=step,
        desc="pre-training",
        unit="step",
        disable=not is_main or args.no_progress,
        dynamic_ncols=True,
    )
    if is_main:
        print(
            f"{cfg.encoder}: {sum(p.numel() for p in net.parameters()):,} parameters; {len(dataset)} clips, "
            f"{len(sampler)} steps/epoch, {total_steps} steps; device {device}, world size {world_size}",
            file=sys.stderr,
        )
    model.train()
    t_last, steps_since = time.perf_counter(), 0
    last_c = None
    try:
        while step < total_steps:
            for crops in sampler:
                x = crops.to(device, non_blocking=True)
                if not cfg.augment.ppn:  # PPN normalises by batch statistics inside the augmenter instead
                    x = (x - mean) / std
                v1, v2 = augmenter(x, aug_gen)
                keep = (
                    augmenter.keep_indices(v2.shape[0], net.encoder.num_patches, step, total_steps, aug_gen)
                    if is_vit
                    else None
                )
                set_lr(optimizer, lr_factor(step, total_steps, warmup_steps))
                autocast = (
                    torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                )
                with autocast:
                    z1, z2 = model(v1, v2, keep)
                out = loss_fn(z1, z2)  # float32 inside
                if not torch.isfinite(out.loss):
                    raise NonFiniteLoss(f"loss is {out.loss.item()} at step {step}")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(out.loss).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                steps_since += 1
                last_c = out.c
                bar.update(1)
                if is_main and (step % cfg.log_every == 0 or step == total_steps):
                    elapsed = time.perf_counter() - t_last
                    rate = steps_since * cfg.batch_size / max(elapsed, 1e-9)
                    t_last, steps_since = time.perf_counter(), 0
                    row = dict(
                        zip(
                            CSV_FIELDS,
                            [
                                step,
                                round(step / len(sampler), 4),
                                out.loss.item(),
                                out.on_diag.item(),
                                out.off_diag.item(),
                                optimizer.param_groups[0]["lr"],
                                optimizer.param_groups[-1]["lr"],
                                rate,
                                embedding_std(z1),
                            ],
                        )
                    )
                    monitor.log(row)
                    bar.set_postfix(loss=f"{row['loss']:.2f}", samples_s=f"{rate:.0f}")
                if cfg.probe_every and step % cfg.probe_every == 0:
                    score = probe.score(net.encoder, model_config, device) if is_main else None
                    if world_size > 1:
                        shared = [score]
                        dist.broadcast_object_list(shared, src=0)
                        score = shared[0]
                    if is_main:
                        monitor.log_probe(step, probe.name, score)
                    if score > best_probe:
                        best_probe = score
                        checkpoint(best_path)
                if step % cfg.checkpoint_every == 0 or step == total_steps:
                    checkpoint()
                if is_main and (step % cfg.image_every == 0 or step == total_steps):
                    monitor.images_at(step, last_c)
                if step >= total_steps:
                    break
    except NonFiniteLoss as err:
        if is_main:
            saved = load_checkpoint(ckpt_path)["step"] if ckpt_path.exists() else None
            print(
                f"\nerror: {err}. Training stopped; the last good checkpoint ({ckpt_path}, step {saved}) is intact. "
                "Try a lower learning rate (lr_weights=...), precision=fp32, or check the data for silence-only clips.",
                file=sys.stderr,
            )
        return 3
    finally:
        bar.close()
        if monitor is not None:
            monitor.close()
        if world_size > 1:
            dist.destroy_process_group()
    if is_main:
        print(
            f"done: {step} steps; checkpoint {ckpt_path}; export with `python -m training.export {run_dir} OUT_DIR`",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
