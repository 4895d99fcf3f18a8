"""Audio Barlow Twins pre-training.

    python -m training.pretrain --preset NAME --data DIR --run-dir DIR [key=value ...]
    python -m training.pretrain --run-dir DIR --resume
    python -m training.pretrain --preset NAME --data DIR --run-dir DIR --auto-resume   # a requeued job
    torchrun --nproc_per_node=N -m training.pretrain ...

SIGTERM, SIGUSR1 (SLURM's --signal) and Ctrl-C stop the run at the end of the current step, on every
rank at the same step, after writing its checkpoint; the exit status is then 75.

Each step: crops -> dataset normalisation -> two augmented views -> encoder + projector -> Barlow
Twins loss on the global batch -> LARS/AdamW step (training.engine); docs/pretraining.md has more.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.distributed as dist
from tqdm import tqdm

from hear_abt.config import ModelConfig
from hear_abt.weights import save_pretrained

from . import distributed, engine
from .checkpoint import CheckpointWriter, load_training_checkpoint
from .config import DEFAULT_PRESET, PRESETS, TrainConfig, build_config, flat_settings
from .data import ShardDataset, default_reader_threads
from .loop import EXIT_STOPPED, Cadence, StopSignals, steps
from .monitor import Monitor
from .probe import LinearProbe
from .run_dir import RunDir, RunDirError, RunLock


def settings_help(preset: str) -> str:
    lines = [f"Settings of preset {preset!r} (override as key=value, dotted for nested ones):"]
    lines += [f"  {k} = {v!r}" for k, v in flat_settings(build_config(preset).to_dict()).items()]
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
    resume = parser.add_mutually_exclusive_group()
    resume.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its last checkpoint (its settings may be repeated, not changed)",
    )
    resume.add_argument(
        "--auto-resume",
        action="store_true",
        help="start the run if --run-dir holds none, else continue it as --resume does: one command line "
        "for a job that a scheduler may stop and requeue",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="cpu, cuda (cuda:LOCAL_RANK under torchrun) or, without torchrun, cuda:N (default: cuda if available)",
    )
    parser.add_argument(
        "--reader-threads",
        type=int,
        default=None,
        help=f"threads gathering batches (default here: {default_reader_threads()}); never changes the batches",
    )
    parser.add_argument(
        "--dist-timeout-minutes",
        type=float,
        default=distributed.DEFAULT_TIMEOUT_MINUTES,
        help="how long ranks wait for each other in a collective before the job fails (default: %(default)s)",
    )
    parser.add_argument(
        "--no-lock",
        action="store_true",
        help="do not lock --run-dir (a filesystem without flock, with a scheduler that runs one job per run dir)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="settings to override (see below)")
    return parser.parse_intermixed_args(argv)  # key=value settings may sit between options


def requested_settings(preset: str, overrides: list[str]) -> dict[str, Any]:
    cfg = build_config(preset, overrides)
    if cfg.probe_task:
        cfg.probe_task = str(Path(cfg.probe_task).resolve())
    return cfg.to_dict()


def resolve_run(args: argparse.Namespace, run_dir: RunDir, resuming: bool) -> dict[str, Any]:
    """Settings of a new run, or of the run being resumed (checked against any repeated settings)."""
    flag = "--resume" if args.resume else "--auto-resume"
    if resuming:
        run = run_dir.read_run()
        if args.preset is not None or args.overrides:
            asked = flat_settings(requested_settings(args.preset or run["preset"], args.overrides))
            # Through the config class, so that settings added since the run started take their defaults.
            have = flat_settings(TrainConfig.from_dict(run["train"]).to_dict())
            diff = [
                f"{k} (run: {have.get(k)!r}, given: {asked[k]!r})" for k in asked if asked[k] != have.get(k)
            ]
            if diff:
                raise SystemExit(
                    f"{flag} continues the run with its own settings; these differ from "
                    f"{run_dir.run_file}: {'; '.join(diff)}. Start a new --run-dir to change them."
                )
        if args.data and str(Path(args.data).resolve()) != run["data"]:
            raise SystemExit(f"{flag}: the run trains on {run['data']}, not {Path(args.data).resolve()}")
        return run
    if run_dir.last.exists():
        raise SystemExit(
            f"{run_dir.path} already holds a run: pass --resume (or --auto-resume) to continue it, or "
            "choose another --run-dir"
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


@dataclass
class Run:
    """A run as set up on this rank: its folder, processes, settings, data and training state."""

    args: argparse.Namespace
    run_dir: RunDir
    procs: distributed.Processes
    lock: RunLock | None
    resuming: bool
    settings: dict[str, Any]  # run.json: preset, data folder, training config
    cfg: TrainConfig
    dataset: ShardDataset
    state: engine.TrainState

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig(
            encoder=self.cfg.encoder,
            encoder_kwargs=self.cfg.encoder_kwargs,
            frontend=self.dataset.frontend,
            norm=self.dataset.norm,
            provenance={
                "preset": self.settings["preset"],
                "data": self.settings["data"],
                "clips": len(self.dataset),
                "total_steps": self.state.total_steps,
            },
        )

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def set_up(args: argparse.Namespace) -> Run:
    """Processes, lock, settings, data and the training state (restored from the last checkpoint)."""
    run_dir = RunDir(Path(args.run_dir).resolve())
    try:
        procs = distributed.setup(args.device, args.dist_timeout_minutes)
    except distributed.LaunchError as err:
        raise SystemExit(f"error: {err}") from None
    lock = None
    try:
        lock = run_dir.lock().acquire() if procs.is_main and not args.no_lock else None
        data = Path(args.data).resolve() if args.data else None
        distributed.check_shared_folders(procs, run_dir.path, data)
        # Rank 0 decides whether the run exists: the others could see its run.json appear meanwhile.
        resuming = distributed.broadcast(
            procs, args.resume or (args.auto_resume and run_dir.run_file.exists())
        )
        settings = resolve_run(args, run_dir, resuming)
        cfg = TrainConfig.from_dict(settings["train"]).validate()
        dataset = ShardDataset(settings["data"])
        state = engine.build(
            cfg, dataset, procs.device, procs.rank, procs.world_size, reader_threads=args.reader_threads
        )
    except BaseException as err:
        if lock is not None:
            lock.release()
        if isinstance(err, (RunDirError, ValueError, FileNotFoundError)):
            raise SystemExit(f"error: {err}") from err
        raise
    if procs.is_main:
        run_dir.write_run(settings)
    return Run(args, run_dir, procs, lock, resuming, settings, cfg, dataset, state)


def restore(run: Run) -> dict[str, Any] | None:
    """Load the last checkpoint into the state when resuming one; returns what was loaded."""
    if not (run.resuming and run.run_dir.last.exists()):
        return None
    try:
        saved = load_training_checkpoint(run.run_dir.last)
        engine.load_checkpoint_state(run.state, saved)
    except Exception as err:  # torch raises several types for truncated or corrupt files
        run.release()
        raise SystemExit(
            f"error: cannot resume from {run.run_dir.last}: {err}. If the file is corrupt (a full disk or a "
            "copy cut short), restore it from a backup or start a new --run-dir; checkpoints written by "
            "this code are replaced atomically, so a kill never leaves a half-written one."
        ) from err
    return saved


class Handlers:
    """What happens between steps: log rows, the probe, checkpoints and images.

    Every rank calls :meth:`after_step` with the same arguments at the same step; the collective parts
    (checkpoints, the probe's score) run on all of them, the rest on rank 0 only.
    """

    def __init__(self, run: Run):
        self.run, self.state, self.cfg = run, run.state, run.cfg
        main = run.procs.is_main
        self.model_config = run.model_config
        self.writer = CheckpointWriter() if main else None
        self.monitor = Monitor(run.run_dir.path, resume_step=self.state.step) if main else None
        cfg = self.cfg
        self.probe = (
            LinearProbe(
                cfg.probe_task, cfg.probe_max_clips, protocol=cfg.probe_protocol, crop_frames=cfg.crop_frames
            )
            if cfg.probe_every and main
            else None
        )
        self.checkpoints = Cadence(cfg.checkpoint_every, cfg.checkpoint_minutes)
        self.logs = Cadence(cfg.log_every, cfg.log_minutes)
        self.images = Cadence(cfg.image_every, cfg.image_minutes)
        total = self.state.total_steps
        self.keep_steps = {min(total, max(1, round(f * total))) for f in cfg.keep_weights_at}
        self._t_last, self._steps_since = time.perf_counter(), 0
        self.postfix: dict[str, str] | None = None  # the progress bar's figures, after a log row

    def after_step(self, result: engine.StepResult, stop: bool, checkpoint_due: bool) -> None:
        step, cfg = self.state.step, self.cfg
        done = step >= self.state.total_steps
        self._steps_since += 1
        if step % cfg.log_every == 0:
            engine.check_finite(self.state)  # every rank, same steps: a device sync, not one per step
        health_due = bool(cfg.rankme_every) and (step % cfg.rankme_every == 0 or done)
        if self.monitor is not None and (self.logs.due(step) or done or health_due):
            self.log(result, health_due)
        if cfg.probe_every and step % cfg.probe_every == 0:
            self.score_probe()
        if checkpoint_due or done or stop:
            self.save(self.run.run_dir.last)
        if step in self.keep_steps and self.writer is not None:
            self.keep_weights(step)
        if self.monitor is not None and (self.images.due(step) or done):
            self.monitor.images_at(step, result.c)

    def log(self, result: engine.StepResult, health_due: bool = False) -> None:
        state = self.state
        now = time.perf_counter()
        rate = self._steps_since * self.cfg.batch_size / max(now - self._t_last, 1e-9)
        health = engine.health_figures(state) if health_due else {}
        # The health batch's time counts in no row's samples_per_s.
        self._t_last, self._steps_since = time.perf_counter(), 0
        lrs = state.optimizer.param_groups
        self.monitor.log(
            {
                "step": state.step,
                "epoch": round(state.step / state.steps_per_epoch, 4),
                "loss": result.loss,
                "on_diag": result.on_diag,
                "off_diag": result.off_diag,
                "lr_weights": lrs[0]["lr"],
                "lr_biases": lrs[-1]["lr"],
                "samples_per_s": rate,
                "embedding_std": result.embedding_std,
                **health,
            }
        )
        self.postfix = {"loss": f"{result.loss:.2f}", "samples_s": f"{rate:.0f}"}

    def score_probe(self) -> None:
        """Rank 0 probes; the others wait in the CPU control group, not inside an NCCL collective."""
        engine.check_finite(self.state)
        score = distributed.broadcast(
            self.run.procs,
            self.probe.score(self.state.net.encoder, self.model_config, self.run.procs.device)
            if self.probe
            else None,
        )
        if self.monitor is not None:
            self.monitor.log_probe(self.state.step, self.probe.name, score)
        if score > self.state.best_probe:
            self.state.best_probe = score
            self.save(self.run.run_dir.best)

    def keep_weights(self, step: int) -> None:
        """Rank 0: the encoder as it is now, as a folder ``hear_abt.load_model`` reads (small beside a
        checkpoint: no projector, optimiser or streams); written here, a few times per run."""
        config = self.model_config
        provenance = {**config.provenance, "step": step}
        config = ModelConfig(
            config.encoder, config.encoder_kwargs, config.frontend, config.norm, provenance=provenance
        )
        save_pretrained(self.run.run_dir.weights_at(step), config, self.state.net.encoder.state_dict())

    def save(self, path: Path) -> None:
        """Gather every rank's streams and hand a snapshot to rank 0's writer (all ranks call it)."""
        engine.check_finite(self.state)  # never keep a state that has seen a non-finite loss
        ranks = distributed.gather(self.run.procs, engine.rank_state(self.state))
        if self.writer is not None:
            self.writer.submit(path, engine.checkpoint_state(self.state, self.model_config.to_dict(), ranks))

    def finish(self) -> None:
        """Everything written before any rank leaves; the ranks leave together."""
        if self.writer is not None:
            self.writer.wait()
        distributed.agree(self.run.procs, [0])

    def close(self) -> None:
        for part in (self.writer, self.monitor):
            if part is not None:
                part.close()


def train(run: Run, handlers: Handlers, bar: tqdm) -> str | None:
    """Steps until the end or an agreed stop; returns the name of the signal that stopped the run."""
    with StopSignals() as signals:
        for result in steps(run.state):
            bar.update(1)
            # One tiny CPU collective per step: the ranks stop, and checkpoint, at the same step.
            stop, checkpoint_due = distributed.agree(
                run.procs,
                [signals.number, int(run.procs.is_main and handlers.checkpoints.due(run.state.step))],
            )
            handlers.after_step(result, bool(stop), bool(checkpoint_due))
            if handlers.postfix:
                bar.set_postfix(handlers.postfix)
                handlers.postfix = None
            if stop:  # the signal one of the ranks received (the highest-numbered, if several)
                handlers.finish()
                return signal.Signals(stop).name
        handlers.finish()
    return None


def main(argv: list[str] | None = None, hint_next: bool = True) -> int:
    """Run (or resume) a pre-training run; ``hint_next=False`` omits the closing "export next" hint.

    Returns 0 when the run is complete, :data:`training.loop.EXIT_STOPPED` when a signal stopped it
    after a checkpoint (the same command with --auto-resume or --resume continues it), 3 on a
    non-finite loss.
    """
    run = set_up(parse_args(argv))
    saved = restore(run)
    procs, state, cfg, run_dir = run.procs, run.state, run.cfg, run.run_dir
    handlers = Handlers(run)
    if saved is not None:  # set-up may have drawn from the RNGs: the first step must see the saved ones
        engine.reset_rngs(state, saved)
        del saved
    if procs.is_main:
        print(
            f"{cfg.encoder}: {sum(p.numel() for p in state.net.parameters()):,} parameters (encoder + projector); "
            f"{len(run.dataset)} clips, {state.steps_per_epoch} steps/epoch, {state.total_steps} steps; "
            f"device {procs.device}, world size {procs.world_size}",
            file=sys.stderr,
        )
        if procs.world_size > 1 and procs.device.type != "cuda":
            print(
                "note: SyncBatchNorm needs CUDA; on the CPU each rank's BatchNorms use local statistics",
                file=sys.stderr,
            )
    bar = tqdm(
        total=state.total_steps,
        initial=state.step,
        desc="pre-training",
        unit="step",
        disable=not procs.is_main or run.args.no_progress,
        dynamic_ncols=True,
    )
    try:
        stopped_by = train(run, handlers, bar)
        distributed.leave_together(procs, 60 * run.args.dist_timeout_minutes)  # before the teardown
    except engine.NonFiniteLoss as err:
        handlers.close()  # a checkpoint being written finishes first: the message names it
        if procs.is_main:
            print(f"\nerror: {err}. Training stopped; {_kept(run)}. {NAN_ADVICE}", file=sys.stderr)
        return 3
    finally:
        bar.close()
        handlers.close()
        if procs.world_size > 1:
            dist.destroy_process_group()
        run.release()
    if handlers.writer is not None and handlers.writer.records:
        last = handlers.writer.records[-1]
        print(
            f"checkpoints: {len(handlers.writer.records)} written in the background; the last, "
            f"{last.bytes / 1e6:.1f} MB, took {last.seconds:.2f} s",
            file=sys.stderr,
        )
    if stopped_by is not None:
        if procs.is_main:
            print(
                f"stopped by {stopped_by} after step {state.step} of {state.total_steps}; checkpoint "
                f"{run_dir.last}. The same command with --auto-resume (or --resume) continues the run. "
                f"Exit status {EXIT_STOPPED}.",
                file=sys.stderr,
            )
        return EXIT_STOPPED
    if procs.is_main and hint_next:
        print(
            f"done: {state.step} steps; checkpoint {run_dir.last}. Next: "
            f"`{Path(sys.executable).name} -m training.export {run_dir.path} OUT_DIR` for Hub-style weights",
            file=sys.stderr,
        )
    return 0


NAN_ADVICE = (
    "Try a lower learning rate (lr_weights=...), precision=fp32, or check the data for silence-only clips."
)


def _kept(run: Run) -> str:
    """What a run stopped by a non-finite loss leaves behind."""
    if run.run_dir.last.exists():
        return f"the last good checkpoint ({run.run_dir.last}, step {load_training_checkpoint(run.run_dir.last)['step']}) is intact"
    cfg = run.cfg
    return (
        "no checkpoint had been written yet (one is written every "
        f"{cfg.checkpoint_every} steps or {cfg.checkpoint_minutes:g} minutes)"
    )


if __name__ == "__main__":
    sys.exit(main())
