"""The training engine: one Barlow Twins step that ``pretrain``, the benchmark and the tests all run.

``build`` makes a :class:`TrainState` (model, optimiser, scaler, sampler, augmenter and this rank's
random streams) from a config and a dataset; ``train_step`` advances it by one step on a batch of
crops without waiting for the device (a non-finite loss is recorded on the device and raised by
:func:`check_finite`, which the loop calls at its logging and checkpoint steps); ``rank_state``,
``checkpoint_state`` and ``load_checkpoint_state`` save and restore it exactly, each rank's own
streams (data position, augmentation generator, mixup bank, torch RNG) as its own. The mixup bank is
saved as the positions of the batches that filled it and rebuilt from the data on resume, so a
checkpoint grows by a few kB per rank, not by each rank's bank.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hear_abt.config import FrontendConfig, NormStats
from hear_abt.frontend import LogMelFrontend

from .augment import ViewAugmenter
from .augment_wave import WaveAugmenter, context_hops, input_hops, wave_settings
from .config import TrainConfig
from .data import CropSampler, RawCrops, ShardDataset, default_reader_threads
from .loss import BarlowTwinsLoss, BarlowTwinsOutput
from .model import BarlowTwinsModel
from .monitor import embedding_std, representation_health
from .optim import build_optimizer, lr_factor, set_lr

# Independent random streams of a rank, derived from (seed, rank, stream) so that ranks differ.
_STREAMS = {"torch": 0, "augment": 1, "python": 2}
# Below this many samples per rank, BatchNorm statistics, the loss's gathers and the gradient all-reduce
# cost more than the rank's own compute: more GPUs stop helping (the paper's 128 over 8 GPUs is 16).
SMALL_RANK_BATCH = 64


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the step was not applied."""


class TrainingSetupError(ValueError):
    """The settings cannot train on this data or device; the message says what to change."""


def rank_seed(seed: int, rank: int, stream: str) -> int:
    """A 63-bit seed for one random stream of one rank (distinct across ranks and streams)."""
    state = np.random.SeedSequence([seed, rank, _STREAMS[stream]]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def autocast_settings(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a grad scaler is needed)."""
    if precision == "fp32" or (precision == "auto" and device.type != "cuda"):
        return None, False
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        return torch.bfloat16, False
    if device.type != "cuda":
        raise TrainingSetupError("precision=fp16 needs a CUDA device; use bf16 or fp32 on the CPU")
    return torch.float16, True


@dataclass
class StepResult:
    """One step's outputs, kept as device tensors: a figure is read (a device sync) only when used."""

    out: BarlowTwinsOutput
    z1: torch.Tensor  # first view's projected embeddings, detached

    @property
    def loss(self) -> float:
        return self.out.loss.item()

    @property
    def on_diag(self) -> float:
        return self.out.on_diag.item()

    @property
    def off_diag(self) -> float:
        return self.out.off_diag.item()

    @property
    def embedding_std(self) -> float:
        return embedding_std(self.z1)

    @property
    def c(self) -> torch.Tensor:
        """Cross-correlation matrix of this step (for images)."""
        return self.out.c.detach()


@dataclass
class TrainState:
    cfg: TrainConfig
    model: nn.Module  # what forward is called on: the DDP wrapper under torchrun
    net: BarlowTwinsModel  # the bare siamese network (encoder + projector)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    augmenter: ViewAugmenter
    aug_gen: torch.Generator
    loss_fn: BarlowTwinsLoss
    sampler: CropSampler
    norm: NormStats
    frontend: FrontendConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    total_steps: int
    warmup_steps: int
    rank: int = 0
    world_size: int = 1
    step: int = 0
    best_probe: float = float("-inf")
    # Step of the first non-finite loss, -1 while every loss is finite; a device tensor, read only
    # by check_finite, so that a step never waits for the device.
    first_bad_step: torch.Tensor = field(default_factory=lambda: torch.tensor(-1))
    first_bad_loss: torch.Tensor = field(default_factory=lambda: torch.tensor(0.0))
    # Waveform folders: their log-mel front-end and waveform augmentations (None for log-mel folders).
    wave: WaveAugmenter | None = None
    # The representation-health monitor's fixed batch, model input on the device (built on first use).
    health_input: torch.Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.sampler)


def run_length(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps of the run: ``cfg.steps`` when set, else ``cfg.epochs`` epochs."""
    return cfg.steps if cfg.steps > 0 else max(1, round(cfg.epochs * steps_per_epoch))


def build(
    cfg: TrainConfig,
    dataset: ShardDataset,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    prefetch: int = 4,
    reader_threads: int | None = None,
) -> TrainState:
    """Everything a run needs, on ``device``; under torchrun call it on every rank.

    ``reader_threads`` (default :func:`training.data.default_reader_threads`) gather batches in
    parallel, ``prefetch`` batches ahead; neither changes what a step sees.
    """
    local_batch = _rank_batch(cfg, len(dataset), world_size, rank)
    wave = wave_augmenter(cfg, dataset, device)
    sampler = CropSampler(
        dataset,
        local_batch,
        cfg.crop_frames
        if wave is None
        else input_hops(cfg.crop_frames, wave.context, wave.settings.max_rate),
        seed=cfg.seed,
        rank=rank,
        world_size=world_size,
        prefetch=prefetch,
        threads=reader_threads or default_reader_threads(),
        pin_memory=device.type == "cuda",
    )
    total_steps = run_length(cfg, len(sampler))
    amp_dtype, use_scaler = autocast_settings(cfg.precision, device)
    if device.type == "cuda":
        # TF32 matmuls and convolutions (fp32 parts of the step; bf16 autocast does the rest), and
        # cuDNN's fastest algorithms for the fixed crop shape.
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True

    model, net = _build_model(cfg, dataset, device, world_size)
    optimizer = build_optimizer(
        cfg.optimizer, net, cfg.lr_weights, cfg.lr_biases, cfg.weight_decay, batch_size=cfg.batch_size
    )
    # Each rank's own streams: dropout masks, augmentation draws and Python's random differ per rank.
    torch.manual_seed(rank_seed(cfg.seed, rank, "torch"))
    random.seed(rank_seed(cfg.seed, rank, "python"))
    aug_gen = torch.Generator(device=device).manual_seed(rank_seed(cfg.seed, rank, "augment"))
    model.train()
    return TrainState(
        cfg=cfg,
        model=model,
        net=net,
        optimizer=optimizer,
        scaler=torch.amp.GradScaler(device.type, enabled=use_scaler),
        augmenter=ViewAugmenter(cfg.augment),
        aug_gen=aug_gen,
        loss_fn=BarlowTwinsLoss(lambd=cfg.lambd, alpha=cfg.alpha),
        sampler=sampler,
        norm=dataset.norm,
        frontend=dataset.frontend,
        device=device,
        amp_dtype=amp_dtype,
        total_steps=total_steps,
        warmup_steps=round(cfg.warmup_fraction * total_steps),
        rank=rank,
        world_size=world_size,
        first_bad_step=torch.tensor(-1, device=device),
        first_bad_loss=torch.tensor(0.0, device=device),
        wave=wave,
    )


def _rank_batch(cfg: TrainConfig, n_clips: int, world_size: int, rank: int) -> int:
    """Samples per rank; refuses a batch the ranks cannot split or the data cannot fill, warns when
    it is small enough for communication to outweigh compute."""
    if cfg.batch_size % world_size:
        raise TrainingSetupError(
            f"batch_size {cfg.batch_size} is not divisible by the world size {world_size}; "
            f"use a multiple of {world_size}"
        )
    local_batch = cfg.batch_size // world_size
    if world_size > 1 and local_batch < SMALL_RANK_BATCH and rank == 0:
        warnings.warn(
            f"batch_size {cfg.batch_size} over {world_size} ranks is {local_batch} samples per rank: "
            "BatchNorm statistics, the loss's gathers and the gradient all-reduce then cost more than "
            "each rank's compute. Use fewer GPUs, or a larger batch such as the audioset-audiontt-1024 "
            "preset (docs/pretraining.md).",
            stacklevel=3,
        )
    if n_clips // world_size < local_batch:
        most = n_clips // world_size * world_size
        raise TrainingSetupError(
            f"{n_clips} clips do not fill one batch of {cfg.batch_size}"
            + (f" over {world_size} ranks" if world_size > 1 else "")
            + f": pass a smaller batch_size= (at most {most}) or prepare more clips"
        )
    return local_batch


def _build_model(
    cfg: TrainConfig, dataset: ShardDataset, device: torch.device, world_size: int
) -> tuple[nn.Module, BarlowTwinsModel]:
    """(the module a step calls: DDP-wrapped and/or compiled as asked, the model itself), seeded so
    that every rank starts from the same weights (DDP also broadcasts rank 0's at construction)."""
    torch.manual_seed(cfg.seed)
    net = BarlowTwinsModel(cfg, dataset.frontend).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    encoder = net.encoder
    if encoder.input_frames is not None and cfg.crop_frames != encoder.input_frames:
        raise TrainingSetupError(
            f"{cfg.encoder} takes {encoder.input_frames}-frame inputs (its positional grid), "
            f"so crop_frames={cfg.crop_frames} cannot be used; set crop_frames={encoder.input_frames}"
        )
    if cfg.augment.mask_ratio > 0 and not encoder.supports_masking:
        raise TrainingSetupError(f"augment.mask_ratio needs a patch-token encoder; {cfg.encoder} has none")
    model: nn.Module = net
    if world_size > 1:
        if device.type == "cuda":
            # Global batch statistics in every BatchNorm, as in the single-process run.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            net = model
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        model = torch.compile(model)
    return model, net


def wave_augmenter(cfg: TrainConfig, dataset: ShardDataset, device: torch.device) -> WaveAugmenter | None:
    """The waveform front-end and augmentations for a waveform folder; None for a log-mel one."""
    settings = wave_settings(cfg.augment)
    if dataset.store != "waveform":
        if settings.enabled:
            raise TrainingSetupError(
                f"augment.wave_* augmentations need waveform shards, and {dataset.data_dir} holds "
                f"{dataset.store}: prepare the corpus with `python -m training.prepare SRC DIR --store waveform`"
            )
        return None
    frontend = LogMelFrontend(dataset.frontend).to(device)
    return WaveAugmenter(
        settings, frontend, cfg.crop_frames, context_hops(frontend.cfg.n_fft, frontend.cfg.hop_length)
    )


def model_input(state: TrainState, crops: RawCrops) -> torch.Tensor:
    """A reader batch as the augmenter takes it: on the device, float32, dataset-normalised.

    PPN normalises by batch statistics inside the augmenter instead of the dataset's. A waveform
    batch becomes its clean log-mel crop here, through hear_abt's front-end on the device.
    """
    if state.wave is not None:
        return _as_input(state, state.wave.clean(crops.to_wave(state.device)))
    x = crops.to_input(state.device, None if state.cfg.augment.ppn else state.norm)
    return x.contiguous(memory_format=torch.channels_last) if state.cfg.channels_last else x


def _as_input(state: TrainState, logmel: torch.Tensor) -> torch.Tensor:
    """Raw (B, n_mels, T) log-mel -> (B, 1, n_mels, T) model input, as :func:`model_input` makes it."""
    x = logmel.unsqueeze(1)
    x = x if state.cfg.augment.ppn else state.norm.apply(x)
    return x.contiguous(memory_format=torch.channels_last) if state.cfg.channels_last else x


def view_inputs(state: TrainState, crops: RawCrops) -> tuple[torch.Tensor, tuple | None]:
    """The clean input and, with waveform augmentations on, each view's own augmented input."""
    if state.wave is None or not state.wave.settings.enabled:
        return model_input(state, crops), None
    wav = crops.to_wave(state.device)
    with torch.no_grad():
        views = tuple(_as_input(state, state.wave(wav, state.aug_gen)) for _ in range(2))
        return _as_input(state, state.wave.clean(wav)), views


def forward_loss(state: TrainState, crops: RawCrops) -> tuple[BarlowTwinsOutput, torch.Tensor]:
    """Crops -> [waveform augmentations -> log-mel] -> dataset normalisation -> two views ->
    encoder + projector -> loss (no update)."""
    x, views = view_inputs(state, crops)
    v1, v2 = state.augmenter(x, state.aug_gen, tag=(crops.epoch, crops.batch), view_inputs=views)
    encoder = state.net.encoder
    keep = (
        state.augmenter.keep_indices(
            v2.shape[0], encoder.num_patches, state.step, state.total_steps, state.aug_gen
        )
        if encoder.supports_masking
        else None
    )
    autocast = (
        torch.autocast(state.device.type, dtype=state.amp_dtype)
        if state.amp_dtype
        else contextlib.nullcontext()
    )
    with autocast:
        z1, z2 = state.model(v1, v2, keep)
    return state.loss_fn(z1, z2), z1  # the loss is computed in float32 inside


def train_step(state: TrainState, crops: RawCrops) -> StepResult:
    """One optimisation step on a reader batch; it never waits for the device.

    A non-finite loss is not checked here (that would stall the host every step): its step is
    recorded on the device, and :func:`check_finite` raises it. Call that before anything is kept.
    """
    set_lr(
        state.optimizer, lr_factor(state.step, state.total_steps, state.warmup_steps, state.cfg.lr_end_factor)
    )
    out, z1 = forward_loss(state, crops)
    bad = ~torch.isfinite(out.loss.detach()) & (state.first_bad_step < 0)
    state.first_bad_step = torch.where(bad, state.step, state.first_bad_step)
    state.first_bad_loss = torch.where(bad, out.loss.detach().float(), state.first_bad_loss)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(out.loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.step += 1
    return StepResult(out=out, z1=z1.detach())


def check_finite(state: TrainState) -> None:
    """Raise :class:`NonFiniteLoss` if any step so far had a NaN/Inf loss (reads one device scalar)."""
    bad = int(state.first_bad_step)
    if bad >= 0:
        raise NonFiniteLoss(f"loss is {float(state.first_bad_loss)} at step {bad}")


def health_crops(sampler: CropSampler, clips: int) -> RawCrops:
    """The health monitor's fixed batch: the middle crop of ``clips`` clips evenly spaced over the
    dataset. Drawn from no random stream, so computing it never changes what training sees."""
    dataset = sampler.dataset
    ids = np.unique(np.linspace(0, len(dataset) - 1, min(clips, len(dataset))).round().astype(np.int64))
    starts = (dataset.clip_length[ids] - sampler.crop_frames) // 2  # negative: silence both sides
    rows, inside = dataset.gather_rows(ids, starts, sampler.crop_frames)
    return RawCrops(torch.from_numpy(rows), torch.from_numpy(inside), dataset.silence)


@torch.no_grad()
def health_figures(state: TrainState, chunk: int = 256) -> dict[str, float]:
    """Effective rank and per-dimension std (:func:`training.monitor.representation_health`) of the
    encoder and projector outputs for the fixed batch, in eval mode (BatchNorm's running statistics,
    no dropout: nothing random is drawn and no running statistic changes)."""
    if state.health_input is None:
        x = model_input(state, health_crops(state.sampler, state.cfg.rankme_clips))
        state.health_input = state.augmenter.norm(x) if state.augmenter.norm is not None else x
    autocast = (
        torch.autocast(state.device.type, dtype=state.amp_dtype)
        if state.amp_dtype
        else contextlib.nullcontext()
    )
    net, was_training = state.net, state.net.training
    net.eval()
    try:
        ys, zs = [], []
        with autocast:
            for part in state.health_input.split(chunk):
                y = net.encoder(part)
                ys.append(y.float())
                zs.append(net.projector(y).float())
    finally:
        net.train(was_training)
    return representation_health(torch.cat(ys), torch.cat(zs))


# ---- state ----------------------------------------------------------------------------------


def rank_state(state: TrainState) -> dict[str, Any]:
    """This rank's own streams: data position, augmentation generator and mixup bank, RNGs."""
    return {
        "rank": state.rank,
        "sampler": state.sampler.state_dict(),
        "augment": state.augmenter.state_dict(),
        "rng": rngs(state),
    }


def rngs(state: TrainState) -> dict[str, Any]:
    """The random streams a run draws from (torch, augmentation, Python, CUDA): :func:`set_rngs` sets them."""
    py_version, py_internal, py_gauss = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "augment": state.aug_gen.get_state(),
        # Python's state is a tuple of ints: stored as a list, which weights_only loading accepts.
        "python": [py_version, list(py_internal), py_gauss],
    }
    if state.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(state.device)
    return rng


def load_rank_state(state: TrainState, saved: dict[str, Any]) -> None:
    if saved["rank"] != state.rank:
        raise ValueError(f"rank {state.rank} was handed the state of rank {saved['rank']}")
    state.sampler.load_state_dict(saved["sampler"])
    # The mixup bank is rebuilt from the batches it recorded (pure functions of their position).
    state.augmenter.load_state_dict(
        saved["augment"], lambda tag: model_input(state, state.sampler.batch_at(*tag))
    )
    set_rngs(state, saved["rng"])


def set_rngs(state: TrainState, rng: dict[str, Any]) -> None:
    """Set this rank's random streams (torch, augmentation, Python, CUDA) to the saved ``rng``."""
    torch.set_rng_state(rng["torch"])
    state.aug_gen.set_state(rng["augment"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in rng and state.device.type == "cuda":
        torch.cuda.set_rng_state(rng["cuda"], state.device)


def _cpu_copy(tree: Any) -> Any:
    """``tree`` with every tensor copied to the CPU: a snapshot that later steps cannot change."""
    if isinstance(tree, torch.Tensor):
        return tree.detach().to("cpu", copy=True)
    if isinstance(tree, dict):
        return {k: _cpu_copy(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_cpu_copy(v) for v in tree)
    return tree


def checkpoint_state(
    state: TrainState, model_config: dict[str, Any], ranks: list[dict[str, Any]]
) -> dict[str, Any]:
    """The full state of the run, as CPU copies (safe to write while training goes on).

    ``ranks``: every rank's :func:`rank_state`, in rank order (gathered by the caller).
    """
    return _cpu_copy(
        {
            "model_config": model_config,
            "train_config": state.cfg.to_dict(),
            "encoder": state.net.encoder.state_dict(),
            "projector": state.net.projector.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "scaler": state.scaler.state_dict(),
            "step": state.step,
            "total_steps": state.total_steps,
            "best_probe": state.best_probe,
            "world_size": state.world_size,
            "ranks": ranks,
        }
    )


def load_checkpoint_state(state: TrainState, saved: dict[str, Any]) -> None:
    """Restore a state written by :func:`checkpoint_state`; each rank takes its own streams."""
    if saved.get("world_size", 1) != state.world_size:
        raise TrainingSetupError(
            f"the checkpoint was written by {saved.get('world_size', 1)} processes and this run has "
            f"{state.world_size}: resume with the same number of processes (the data order and random "
            "streams are per rank)"
        )
    if saved["total_steps"] != state.total_steps:
        raise TrainingSetupError(
            f"the checkpoint's run is {saved['total_steps']} steps long, this one {state.total_steps}"
        )
    state.net.encoder.load_state_dict(saved["encoder"])
    state.net.projector.load_state_dict(saved["projector"])
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scaler.load_state_dict(saved["scaler"])
    state.step = int(saved["step"])
    state.best_probe = float(saved.get("best_probe", float("-inf")))
    load_rank_state(state, saved["ranks"][state.rank])


def reset_rngs(state: TrainState, saved: dict[str, Any]) -> None:
    """Set this rank's random streams to ``saved``'s again: call it after any set-up that ran between
    :func:`load_checkpoint_state` and the first step, since set-up code may draw from the global RNGs
    (with TensorFlow installed, TensorBoard's import pulls in `rich`, which calls random.getrandbits)."""
    set_rngs(state, saved["ranks"][state.rank]["rng"])
