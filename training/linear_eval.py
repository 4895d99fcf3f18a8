"""Linear evaluation of frozen scene embeddings, as in the paper's Appendix B.

    python -m training.linear_eval TASK_DIR --weights SRC [--crop-frames 96] [--max-clips N] [--seed 0]

A HEAR-format scene task (``task_metadata.json``, ``<split>.json`` label files, audio under
``16000/<split>/``; multiclass or multilabel; splits ``train``/``valid``/``test`` or k folds) is embedded
once with the frozen encoder (optionally every clip randomly cropped, seeded, to the pre-training crop
length, as the paper does for speed), then a linear classifier is trained on the train split with Adam
(batch 200, lr 1e-3, weight decay 1e-8, betas 0.9/0.999, eps 1e-8), at most 100 epochs, early stopping
on the validation split with patience 10 (on its loss by default: accuracy on a small split plateaus, and
a plateau of 10 epochs stopped training long before it converged), and the best-validation weights are scored on the test split
with the task's primary metric: accuracy (multiclass) or mAP (multilabel, macro over the classes that
have a positive in the scored split). A k-fold task is scored as heareval does: fold i is the test
split, fold i+1 the validation split, the others the train split; the score is the mean over folds.

Embeddings are standardised with the train split's mean and std before the classifier (a per-dimension
affine map, so the classifier stays linear in the embeddings; it only makes Adam's fixed learning rate
work for any embedding scale), and the classifier starts from zeros (see ``fit_and_score``). Everything random (crops, subsets, initialisation, batch order) comes
from ``seed``; the caller's random state is left untouched.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hear_abt.audio import read_mono
from hear_abt.config import SAMPLE_RATE, ModelConfig
from hear_abt.embedder import ABTEmbedder
from hear_abt.fileio import atomic_write_text

AUDIO_FOLDER = str(SAMPLE_RATE)
KFOLD_MODES = ("new_split_kfold", "presplit_kfold")


class TaskError(ValueError):
    """The folder is not a HEAR scene task this protocol can score; the message says why."""


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def accuracy(scores: np.ndarray, targets: np.ndarray) -> float:
    """Top-1 accuracy of (N, C) scores against (N,) integer classes."""
    if len(targets) == 0:
        raise ValueError("accuracy of an empty split")
    return float(np.mean(np.argmax(scores, axis=1) == targets))


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Average precision of one class: scikit-learn's ``average_precision_score`` (tied scores form one
    threshold); NaN without positives (where scikit-learn answers 0 with a warning)."""
    positives = np.asarray(positives).astype(bool)
    if not positives.any():
        return float("nan")
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(positives, np.asarray(scores, dtype=np.float64)))


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """Macro mAP of (N, C) scores against (N, C) 0/1 targets, over the classes with a positive."""
    keep = np.asarray(targets).astype(bool).any(axis=0)
    if not keep.any():
        raise ValueError("mAP: no class has a positive example in this split")
    from sklearn.metrics import average_precision_score

    # One call for all classes (the per-class checks once): the macro mean of average_precision.
    kept_targets = np.asarray(targets)[:, keep].astype(bool)
    kept_scores = np.asarray(scores, dtype=np.float64)[:, keep]
    return float(average_precision_score(kept_targets, kept_scores, average="macro"))


METRICS = {"multiclass": ("accuracy", accuracy), "multilabel": ("mAP", mean_average_precision)}


# --------------------------------------------------------------------------------------------------
# The task
# --------------------------------------------------------------------------------------------------


@dataclass
class Split:
    names: list[str]
    audio: list[np.ndarray]  # float32 mono clips at 16 kHz (lengths may differ)
    targets: np.ndarray  # (N,) int64 classes (multiclass) or (N, C) float32 0/1 (multilabel)


@dataclass
class Fold:
    train: list[str]  # split names whose clips form the train set
    valid: str | None  # None: carve a validation set out of train (tasks without one)
    test: str


def read_clip(task_dir: Path, split: str, name: str) -> np.ndarray:
    """One clip of a HEAR task folder as float32 mono at 16 kHz (TaskError for another rate)."""
    path = task_dir / AUDIO_FOLDER / split / name
    wav, sr = read_mono(path)
    if sr != SAMPLE_RATE:
        raise TaskError(f"{path} is {sr} Hz, expected {SAMPLE_RATE}")
    return wav


def task_names(task_dirs: list[str | Path]) -> list[str]:
    """The folder names that label several tasks' scores; refused when two are the same."""
    names = [Path(t).name for t in task_dirs]
    if len(set(names)) != len(names):
        raise ValueError(f"task folders need distinct names: {names}")
    return names


class HearTask:
    """A HEAR scene task's audio and labels, loaded once; :func:`evaluate` embeds it per model.

    ``max_clips``: at most this many clips per split (a seeded random subset; None: all).
    """

    def __init__(self, task_dir: str | Path, max_clips: int | None = None, seed: int = 0):
        self.task_dir = Path(task_dir).resolve()
        meta_path = self.task_dir / "task_metadata.json"
        try:
            self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        except FileNotFoundError as err:
            raise TaskError(f"{meta_path} is missing: not a HEAR task folder") from err
        except json.JSONDecodeError as err:
            raise TaskError(f"{meta_path} is not JSON: {err}") from err
        self.name = str(self.meta.get("task_name", self.task_dir.name))
        if self.meta.get("embedding_type", "scene") != "scene":
            raise TaskError(
                f"{self.name}: linear evaluation scores scene embeddings; this is a "
                f"{self.meta.get('embedding_type')!r} task (use heareval for timestamp tasks)"
            )
        self.kind = self.meta.get("prediction_type")
        if self.kind not in METRICS:
            raise TaskError(f"{self.name}: prediction_type {self.kind!r} is not multiclass or multilabel")
        self.metric = METRICS[self.kind][0]
        self.task_metric = (self.meta.get("evaluation") or [self.metric])[0]
        mode = self.meta.get("split_mode", "trainvaltest")
        names = list(self.meta.get("splits") or [])
        if not names:
            names = [s for s in ("train", "valid", "test") if (self.task_dir / f"{s}.json").is_file()]
        self.folds = self._folds(mode, names)
        raw = {s: self._read_labels(s) for s in names}
        self.labels = self._vocabulary(raw)
        index = {label: i for i, label in enumerate(self.labels)}
        rng = np.random.default_rng([seed, 0x7A5C])
        self.splits: dict[str, Split] = {}
        for s in names:
            files = sorted(raw[s])
            if max_clips is not None and len(files) > max_clips:
                files = sorted(rng.choice(files, size=max_clips, replace=False).tolist())
            self.splits[s] = self._load(s, files, raw[s], index)

    def _folds(self, mode: str, names: list[str]) -> list[Fold]:
        if mode in KFOLD_MODES:
            if len(names) < 3:
                raise TaskError(f"{self.name}: a k-fold task needs at least 3 folds, has {names}")
            k = len(names)
            return [
                Fold([names[j] for j in range(k) if j not in (i, (i + 1) % k)], names[(i + 1) % k], names[i])
                for i in range(k)
            ]
        if "train" not in names or "test" not in names:
            raise TaskError(f"{self.name}: a train/valid/test task needs train and test splits, has {names}")
        return [Fold(["train"], "valid" if "valid" in names else None, "test")]

    def _read_labels(self, split: str) -> dict[str, list]:
        path = self.task_dir / f"{split}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as err:
            raise TaskError(f"{path} is missing (split {split!r} of task_metadata.json)") from err
        if not isinstance(data, dict) or not data:
            raise TaskError(f"{path} must map file names to labels and not be empty")
        return {k: (v if isinstance(v, list) else [v]) for k, v in data.items()}

    def _vocabulary(self, raw: dict[str, dict[str, list]]) -> list[str]:
        vocab_file = self.task_dir / "labelvocabulary.csv"
        if vocab_file.is_file():
            import csv

            with open(vocab_file, newline="") as f:
                rows = list(csv.DictReader(f))
            return [str(r["label"]) for r in sorted(rows, key=lambda r: int(r["idx"]))]
        return sorted({str(lab) for split in raw.values() for labels in split.values() for lab in labels})

    def _load(self, split: str, files: list[str], labels: dict[str, list], index: dict[str, int]) -> Split:
        audio = [read_clip(self.task_dir, split, name) for name in files]
        unknown = {str(lab) for n in files for lab in labels[n]} - set(index)
        if unknown:
            raise TaskError(f"{self.name}/{split}: labels {sorted(unknown)[:5]} are not in the vocabulary")
        if self.kind == "multiclass":
            bad = [n for n in files if len(labels[n]) != 1]
            if bad:
                raise TaskError(
                    f"{self.name}/{split}: multiclass clip {bad[0]} has {len(labels[bad[0]])} labels"
                )
            targets = np.array([index[str(labels[n][0])] for n in files], dtype=np.int64)
        else:
            targets = np.zeros((len(files), len(index)), dtype=np.float32)
            for i, n in enumerate(files):
                for lab in labels[n]:
                    targets[i, index[str(lab)]] = 1.0
        return Split(files, audio, targets)


# --------------------------------------------------------------------------------------------------
# Embeddings
# --------------------------------------------------------------------------------------------------


def crop_clips(clips: list[np.ndarray], crop_samples: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random ``crop_samples`` window of every clip longer than that (shorter clips are kept whole)."""
    out = []
    for clip in clips:
        extra = len(clip) - crop_samples
        start = int(rng.integers(0, extra + 1)) if extra > 0 else 0
        out.append(clip[start : start + crop_samples])
    return out


@torch.no_grad()
def embed_clips(
    model: ABTEmbedder, clips: list[np.ndarray], device: torch.device, batch: int = 32
) -> np.ndarray:
    """(N, D) float32 scene embeddings; clips are batched by equal length (no padding between clips)."""
    out = np.empty((len(clips), model.scene_embedding_size), dtype=np.float32)
    by_length: dict[int, list[int]] = {}
    for i, clip in enumerate(clips):
        by_length.setdefault(len(clip), []).append(i)
    for ids in by_length.values():
        for a in range(0, len(ids), batch):
            chunk = ids[a : a + batch]
            x = torch.from_numpy(np.stack([clips[i] for i in chunk])).to(device)
            out[chunk] = model.scene_embeddings(x).float().cpu().numpy()
    return out


# --------------------------------------------------------------------------------------------------
# The classifier
# --------------------------------------------------------------------------------------------------


@dataclass
class LinearEvalSettings:
    """Appendix B's protocol (footnote 10) and the options around it."""

    batch_size: int = 200
    lr: float = 1e-3
    weight_decay: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_epochs: int = 100
    patience: int = 10
    stop_on: str = "loss"  # early-stopping criterion on the validation split: "loss" or "score"
    standardize: bool = True
    crop_frames: int | None = (
        None  # crop inputs to this many frames (the pre-training crop); None: whole clips
    )
    seed: int = 0
    valid_fraction: float = 0.1  # of train, for tasks without a validation split
    embed_batch: int = 32

    def validate(self) -> LinearEvalSettings:
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1 or self.embed_batch < 1:
            raise ValueError("batch_size, max_epochs, patience and embed_batch must be >= 1")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 < self.valid_fraction < 1):
            raise ValueError("need lr > 0, weight_decay >= 0 and 0 < valid_fraction < 1")
        if self.stop_on not in ("loss", "score"):
            raise ValueError(f"stop_on must be 'loss' or 'score', got {self.stop_on!r}")
        if self.crop_frames is not None and self.crop_frames < 1:
            raise ValueError(f"crop_frames must be >= 1 or None, got {self.crop_frames}")
        return self


@dataclass
class FitResult:
    valid_score: float
    test_score: float
    best_epoch: int  # 1-based epoch of the kept weights (best validation loss, or score)
    epochs: int  # epochs run (early stopping may end before max_epochs)


def fit_and_score(
    train: tuple[np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    kind: str,
    n_classes: int,
    settings: LinearEvalSettings | None = None,
) -> FitResult:
    """Train the linear classifier on ``train`` (x, targets), early-stop on ``valid``, score ``test``.

    Targets: (N,) int classes for ``kind="multiclass"``, (N, C) 0/1 for ``"multilabel"``. Runs on the
    CPU in float32 with its own seeded random streams.
    """
    s = (settings or LinearEvalSettings()).validate()
    tx, vx, ex = (np.asarray(x, dtype=np.float32) for x in (train[0], valid[0], test[0]))
    if s.standardize:
        mean = tx.mean(axis=0)
        std = tx.std(axis=0)
        std = np.where(std > 0, std, 1.0)  # a constant dimension stays constant (zero)
        tx, vx, ex = ((x - mean) / std for x in (tx, vx, ex))
    threads = torch.get_num_threads()
    # One thread: the classifier is small, and on a busy machine intra-op threads cost 10-20x.
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            return _fit(tx, vx, ex, train[1], valid[1], test[1], kind, n_classes, s)
    finally:
        torch.set_num_threads(threads)


def _fit(tx, vx, ex, ty, vy, ey, kind: str, n_classes: int, s: LinearEvalSettings) -> FitResult:
    metric = METRICS[kind][1]
    torch.manual_seed(s.seed)
    gen = torch.Generator().manual_seed(s.seed)
    clf = nn.Linear(tx.shape[1], n_classes)
    # Zero start: the problem is convex, and with few samples an epoch is a single Adam step of
    # 1e-3, too small to leave a random start; from zeros the first steps already follow the class means.
    nn.init.zeros_(clf.weight)
    nn.init.zeros_(clf.bias)
    opt = torch.optim.Adam(clf.parameters(), lr=s.lr, betas=s.betas, eps=s.eps, weight_decay=s.weight_decay)
    loss_fn = nn.CrossEntropyLoss() if kind == "multiclass" else nn.BCEWithLogitsLoss()
    x_t = torch.from_numpy(np.ascontiguousarray(tx))
    y_t = torch.from_numpy(np.ascontiguousarray(ty))
    vx_t = torch.from_numpy(np.ascontiguousarray(vx))
    vy_t = torch.from_numpy(np.ascontiguousarray(vy))

    def predict(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return clf(x).numpy()

    best, best_score, best_state, best_epoch, wait, epoch = math.inf, -math.inf, None, 0, 0, 0
    for epoch in range(1, s.max_epochs + 1):
        clf.train()
        for ids in torch.randperm(len(x_t), generator=gen).split(s.batch_size):
            opt.zero_grad(set_to_none=True)
            loss_fn(clf(x_t[ids]), y_t[ids]).backward()
            opt.step()
        logits = predict(vx_t)
        # Early stopping on the validation loss (smooth) or score (coarse: accuracy plateaus); on the loss,
        # the score is only needed for a new best epoch.
        score = None if s.stop_on == "loss" else metric(logits, vy)
        value = float(loss_fn(torch.from_numpy(logits), vy_t)) if s.stop_on == "loss" else -score
        if value < best:
            best, best_score, best_epoch, wait = (
                value,
                metric(logits, vy) if score is None else score,
                epoch,
                0,
            )
            best_state = {k: v.clone() for k, v in clf.state_dict().items()}
        else:
            wait += 1
            if wait >= s.patience:
                break
    clf.load_state_dict(best_state)
    test_score = metric(predict(torch.from_numpy(np.ascontiguousarray(ex))), ey)
    return FitResult(float(best_score), float(test_score), best_epoch, epoch)


# --------------------------------------------------------------------------------------------------
# The protocol
# --------------------------------------------------------------------------------------------------


@dataclass
class LinearEvalResult:
    task: str
    metric: str  # "accuracy" or "mAP"
    task_metric: str  # the task's own primary metric (task_metadata.json ``evaluation[0]``)
    score: float  # test score (mean over folds)
    valid_score: float  # best validation score (mean over folds): what early stopping selected on
    folds: list[dict[str, Any]] = field(default_factory=list)
    embedding_dim: int = 0
    crop_frames: int | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def embed_task(
    model: ABTEmbedder, task: HearTask, device: torch.device, settings: LinearEvalSettings
) -> dict[str, np.ndarray]:
    """Every split's (N, D) embeddings (cropped when ``settings.crop_frames`` is set; seeded per split)."""
    out = {}
    fe = model.config.frontend
    for i, (name, split) in enumerate(task.splits.items()):
        clips = split.audio
        if settings.crop_frames is not None:
            rng = np.random.default_rng([settings.seed, 0xC409, i])
            clips = crop_clips(clips, (settings.crop_frames - 1) * fe.hop_length, rng)
        out[name] = embed_clips(model, clips, device, settings.embed_batch)
    return out


def _carve_valid(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng([seed, 0x5A11]).permutation(n)
    n_valid = max(1, round(n * fraction))
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def score_embeddings(
    embeddings: dict[str, np.ndarray], task: HearTask, settings: LinearEvalSettings | None = None
) -> LinearEvalResult:
    """The classifier part of the protocol, on precomputed split embeddings (every fold of the task)."""
    s = (settings or LinearEvalSettings()).validate()
    folds = []
    for fold in task.folds:
        tx = np.concatenate([embeddings[n] for n in fold.train])
        ty = np.concatenate([task.splits[n].targets for n in fold.train])
        if fold.valid is None:
            keep, held = _carve_valid(len(tx), s.valid_fraction, s.seed)
            (tx, ty), (vx, vy) = (tx[keep], ty[keep]), (tx[held], ty[held])
        else:
            vx, vy = embeddings[fold.valid], task.splits[fold.valid].targets
        ex, ey = embeddings[fold.test], task.splits[fold.test].targets
        fit = fit_and_score((tx, ty), (vx, vy), (ex, ey), task.kind, len(task.labels), s)
        folds.append(
            {"test_split": fold.test, "valid_split": fold.valid or "carved from train", **asdict(fit)}
        )
    dim = next(iter(embeddings.values())).shape[1]
    return LinearEvalResult(
        task=task.name,
        metric=task.metric,
        task_metric=task.task_metric,
        score=float(np.mean([f["test_score"] for f in folds])),
        valid_score=float(np.mean([f["valid_score"] for f in folds])),
        folds=folds,
        embedding_dim=int(dim),
        crop_frames=s.crop_frames,
    )


def evaluate(
    model: ABTEmbedder,
    task: HearTask,
    settings: LinearEvalSettings | None = None,
    device: torch.device | str = "cpu",
) -> LinearEvalResult:
    """Linear evaluation of ``model``'s frozen scene embeddings on ``task`` (model put in eval mode)."""
    t0 = time.perf_counter()
    s = (settings or LinearEvalSettings()).validate()
    device = torch.device(device)
    model.to(device).eval()
    result = score_embeddings(embed_task(model, task, device, s), task, s)
    result.seconds = time.perf_counter() - t0
    return result


def evaluate_encoder(
    encoder: nn.Module,
    config: ModelConfig,
    task: HearTask,
    settings: LinearEvalSettings | None = None,
    device: torch.device | str = "cpu",
) -> LinearEvalResult:
    """:func:`evaluate` on a copy of a training encoder (its weights, running stats and mode untouched)."""
    device = torch.device(device)
    return evaluate(embedder_copy(encoder, config, device), task, settings, device)


def embedder_copy(encoder: nn.Module, config: ModelConfig, device: torch.device) -> ABTEmbedder:
    """An ABTEmbedder holding a copy of ``encoder``'s weights (the caller's random streams untouched)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = ABTEmbedder(config)
    model.encoder.load_state_dict(encoder.state_dict())
    return model


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.linear_eval",
        description=__doc__.split("\n\n")[0],
        epilog="The protocol: the module docstring of training/linear_eval.py; docs/search.md.",
    )
    ap.add_argument("task_dir", type=Path, help="a HEAR-format scene task folder")
    ap.add_argument(
        "--weights", required=True, help="checkpoint folder, .safetensors, training .pt or Hub id"
    )
    ap.add_argument(
        "--random-init", action="store_true", help="score a fresh encoder of the checkpoint's architecture"
    )
    ap.add_argument(
        "--crop-frames",
        type=int,
        default=0,
        help="crop clips to this many frames (paper: 96); 0: whole clips",
    )
    ap.add_argument("--max-clips", type=int, default=None, help="at most this many clips per split")
    ap.add_argument("--max-epochs", type=int, default=100)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)

    from hear_abt.hear_api import load_model
    from hear_abt.weights import WeightsError

    try:
        model = load_model(args.weights, family=None)
        if args.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                model = ABTEmbedder(model.config)
        task = HearTask(args.task_dir, args.max_clips, args.seed)
        settings = LinearEvalSettings(
            max_epochs=args.max_epochs,
            patience=args.patience,
            crop_frames=args.crop_frames or None,
            seed=args.seed,
        ).validate()
    except (TaskError, WeightsError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = evaluate(model, task, settings, args.device)
    sizes = {n: len(s.names) for n, s in task.splits.items()}
    print(
        f"{task.name}: test {result.metric} {result.score:.4f} (valid {result.valid_score:.4f}); "
        f"{len(task.folds)} fold(s), clips {sizes}, embedding {result.embedding_dim}-d, "
        f"epochs {[f['epochs'] for f in result.folds]}, {result.seconds:.1f} s"
    )
    if args.json:
        atomic_write_text(args.json, json.dumps(result.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
