"""ABT for X-ARES (the eXtensive Audio Representation and Evaluation Suite, ``pip install xares``).

* :class:`ABTEncoder`: any ABT checkpoint as the ``nn.Module`` X-ARES evaluates (``sampling_rate``,
  ``output_dim``, ``hop_size_in_ms``; ``forward((B, T) audio) -> (B, T', D)`` frames). Its frames are
  the HEAR timestamp embeddings of :func:`hear_abt.get_timestamp_embeddings`, unchanged.
* :func:`write_hear_task`: a HEAR-format scene task (``abt_eval.devsuite``, HEAR 2021) written as an
  X-ARES task: WebDataset tars under an ``env_root`` and the task and encoder files ``xares.run``
  takes. :func:`hear_task_config` is what the written task file calls.

    python -m hear_abt.xares HEAR_TASK_DIR ENV_ROOT [--name NAME]

This module imports no xares itself (only :func:`hear_task_config` does, as X-ARES calls it). How to run
X-ARES on ABT, the frame and edge conventions, and what X-ARES needs on a current torchaudio:
``docs/benchmarks-other.md``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TIMESTAMP_HOP_MS
from .embedder import ABTEmbedder
from .fileio import atomic_open, atomic_write_text
from .hear_api import get_timestamp_embeddings, load_model

__all__ = ["ABTEncoder", "XaresTaskError", "hear_task_config", "write_hear_task"]

TASK_INFO = "hear_task.json"  # what write_hear_task records for hear_task_config
AUDIO_READY = ".audio_tar_ready"  # xares.common.XaresSettings.audio_ready_filename: "do not download"
ENCODER_FILE = "abt_encoder.py"
SHARD_SIZE = 2000  # clips per tar (X-ARES reads a split's tars with one loader worker per tar, up to 4)

ENCODER_FILE_TEXT = '''"""X-ARES encoder file: the ABT checkpoint in $HEAR_ABT_WEIGHTS (written by hear_abt.xares)."""

from hear_abt.xares import ABTEncoder  # noqa: F401  (xares.run builds the one name ending in "Encoder")
'''

TASK_FILE_TEXT = '''"""X-ARES task {formal_name!r}: written by hear_abt.xares from the HEAR task {source}."""

from pathlib import Path

from hear_abt import xares as _abt_xares


def {name}_config(encoder):  # xares.run calls the one name ending in "_config"
    return _abt_xares.hear_task_config(encoder, Path(__file__).resolve().parent, {name!r})
'''


class XaresTaskError(ValueError):
    """A HEAR task that cannot be written as an X-ARES task, or an X-ARES setup that cannot read it."""


class ABTEncoder(nn.Module):
    """An ABT checkpoint as an X-ARES audio encoder: (B, T) 16 kHz audio -> (B, T', D) frames.

    ``model_file_path``: what :func:`hear_abt.load_model` takes (a checkpoint folder, a ``.safetensors``
    or training checkpoint file, a Hub id ``org/name[@revision]``; empty: ``$HEAR_ABT_WEIGHTS``, else
    the released weights), or a model it returned. ``load_options`` (``timestamp_mode``,
    ``window_batch``) go to it unchanged.

    Frame ``k`` is the HEAR timestamp embedding at ``k * 50`` ms (the 950 ms window centred there, the
    paper's embedding), so ``hop_size_in_ms`` is 50 and ``T' = ceil(duration / 50 ms)``: timestamps run
    from 0 to the last sample, as in the HEAR API. Audio is checked as the HEAR API checks it
    (:class:`hear_abt.AudioInputError` with the same messages).
    """

    def __init__(self, model_file_path: str | os.PathLike | ABTEmbedder = "", **load_options: Any):
        super().__init__()
        if isinstance(model_file_path, ABTEmbedder):
            if load_options:
                raise TypeError(
                    f"ABTEncoder got a loaded model and options {sorted(load_options)}: "
                    "pass the options to hear_abt.load_model instead"
                )
            model = model_file_path
        else:
            model = load_model(model_file_path, family=None, **load_options)
        self.model = model
        self.sampling_rate = int(model.sample_rate)
        self.output_dim = int(model.timestamp_embedding_size)
        hop_ms = model.hop_samples * 1000 / model.sample_rate
        if hop_ms != TIMESTAMP_HOP_MS:
            raise ValueError(f"the model's timestamp hop is {hop_ms} ms, not the HEAR {TIMESTAMP_HOP_MS} ms")
        self.hop_size_in_ms = int(TIMESTAMP_HOP_MS)
        self.eval()

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, T) float audio at ``sampling_rate`` -> (B, ceil(T / hop samples), output_dim) float32."""
        embeddings, _ = get_timestamp_embeddings(audio, self.model)
        return embeddings


# ---- HEAR task -> X-ARES task ---------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise XaresTaskError(f"{path} is missing: not a HEAR task folder") from None
    except (OSError, ValueError) as err:
        raise XaresTaskError(f"{path} cannot be read as JSON: {err}") from err


def _identifier(text: str) -> str:
    name = re.sub(r"\W+", "_", text.strip()).strip("_").lower()
    return name if name and not name[0].isdigit() else f"task_{name}"


def _split_plan(metadata: dict) -> dict[str, str]:
    """HEAR split -> the tar prefix X-ARES's TaskConfig looks for (train/valid/test, or k folds)."""
    splits = metadata.get("splits")
    if not isinstance(splits, list) or not splits or not all(isinstance(s, str) for s in splits):
        raise XaresTaskError(f"task_metadata.json has no list of splits: {splits!r}")
    if metadata.get("split_mode") == "trainvaltest":
        if sorted(splits) != ["test", "train", "valid"]:
            raise XaresTaskError(f"a trainvaltest task must have the splits train, valid, test; got {splits}")
        return {s: s for s in splits}  # TaskConfig: "{split}*.tar"
    return {s: f"wds-audio-fold-{s}" for s in splits}  # TaskConfig with k_fold_splits


def write_hear_task(
    task_dir: str | os.PathLike,
    env_root: str | os.PathLike,
    name: str | None = None,
    *,
    shard_size: int = SHARD_SIZE,
) -> Path:
    """Write the HEAR scene multiclass task ``task_dir`` as the X-ARES task ``name`` under ``env_root``.

    Writes ``env_root/name/``: the clips as WebDataset tars (``<key>.wav``, the task's 16 kHz file
    unchanged, and ``<key>.json`` ``{"label": ...}``), named as X-ARES's ``TaskConfig`` finds them
    (``train-000000.tar``...; ``wds-audio-fold-<fold>-000000.tar`` for k-fold tasks), ``hear_task.json``
    (labels, splits) and X-ARES's "audio ready" marker (so it downloads nothing); and beside it
    ``env_root/<name>_task.py`` and ``env_root/abt_encoder.py``, the files ``xares.run`` takes. Returns
    the task file. ``name`` (default: the task's name) must give a Python identifier.
    """
    task_dir, env_root = Path(task_dir), Path(env_root)
    if env_root.resolve().name in ("xares", "tasks"):
        raise XaresTaskError(
            f"env_root {env_root} is named like a package xares installs: xares.run, run from its parent "
            "folder, would import the task files from that package; choose another name"
        )
    if not isinstance(shard_size, int) or shard_size < 1:
        raise XaresTaskError(f"shard_size must be a positive int, got {shard_size!r}")
    metadata = _read_json(task_dir / "task_metadata.json")
    if not isinstance(metadata, dict):
        raise XaresTaskError(f"{task_dir / 'task_metadata.json'} is not a JSON object")
    kind = (metadata.get("embedding_type"), metadata.get("prediction_type"))
    if kind != ("scene", "multiclass"):
        raise XaresTaskError(
            f"{task_dir} is a {kind[0]} {kind[1]} task; only scene multiclass HEAR tasks become X-ARES clip "
            "tasks here (X-ARES's frame tasks build their labels per task)"
        )
    name = _identifier(name if name is not None else str(metadata.get("task_name") or task_dir.name))
    plan = _split_plan(metadata)
    labels = _read_labels(task_dir / "labelvocabulary.csv")
    audio_root = task_dir / "16000"
    if not audio_root.is_dir():
        raise XaresTaskError(f"{audio_root} is missing: write_hear_task reads the task's 16 kHz audio")

    out = env_root / name
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, prefix in plan.items():
        clips = _read_split(task_dir / f"{split}.json", set(labels))
        counts[split] = len(clips)
        for stale in out.glob(f"{prefix}-*.tar"):
            stale.unlink()
        items = sorted(clips.items())
        for shard, start in enumerate(range(0, max(len(items), 1), shard_size)):
            _write_tar(
                out / f"{prefix}-{shard:06d}.tar", audio_root / split, items[start : start + shard_size]
            )
    folds = None if metadata.get("split_mode") == "trainvaltest" else list(plan)
    eval_size = counts["test"] if folds is None else round(sum(counts.values()) / len(counts))
    info = {
        "name": name,
        "formal_name": str(metadata.get("task_name") or name),
        "source": str(task_dir.resolve()),
        "labels": labels,
        "folds": folds,
        "clips": counts,
        "eval_size": eval_size,
    }
    atomic_write_text(out / TASK_INFO, json.dumps(info, indent=1))
    atomic_write_text(out / AUDIO_READY, "")
    task_file = env_root / f"{name}_task.py"
    atomic_write_text(
        task_file, TASK_FILE_TEXT.format(formal_name=info["formal_name"], source=info["source"], name=name)
    )
    atomic_write_text(env_root / ENCODER_FILE, ENCODER_FILE_TEXT)
    return task_file


def _read_labels(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise XaresTaskError(f"{path} cannot be read: {err}") from err
    rows = list(csv.reader(lines))
    if not rows or rows[0][:2] != ["idx", "label"]:
        raise XaresTaskError(f"{path} does not start with the header idx,label")
    labels = [row[1] if len(row) >= 2 else "" for row in rows[1:]]
    if not labels or "" in labels or len(set(labels)) != len(labels):
        raise XaresTaskError(f"{path} must list distinct labels, got {labels}")
    return labels


def _read_split(path: Path, known: set[str]) -> dict[str, str]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise XaresTaskError(f"{path} is not a JSON object {{filename: [label]}}")
    clips = {}
    for filename, value in data.items():
        if not isinstance(value, list) or len(value) != 1 or value[0] not in known:
            raise XaresTaskError(
                f"{path}: {filename!r} has labels {value!r}; a multiclass task has one known label per clip"
            )
        clips[filename] = value[0]
    return clips


def _write_tar(path: Path, audio_dir: Path, items: list[tuple[str, str]]) -> None:
    """One WebDataset shard: ``<key>.wav`` and ``<key>.json`` per clip (keys without dots)."""
    keys: set[str] = set()
    with atomic_open(path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for filename, label in items:
            key = re.sub(r"[^A-Za-z0-9_-]", "_", Path(filename).stem)
            if key in keys:
                raise XaresTaskError(f"two clips of {audio_dir} give the WebDataset key {key!r}")
            keys.add(key)
            try:
                wav = (audio_dir / filename).read_bytes()
            except OSError as err:
                raise XaresTaskError(f"{audio_dir / filename} cannot be read: {err}") from err
            for member, data in ((f"{key}.wav", wav), (f"{key}.json", json.dumps({"label": label}).encode())):
                entry = tarfile.TarInfo(member)
                entry.size, entry.mode = len(data), 0o644
                tar.addfile(entry, io.BytesIO(data))


class _LabelIndex:
    """X-ARES label processor: the sample's json -> class index (a class, so that it pickles)."""

    def __init__(self, labels: list[str]):
        self.index = {label: i for i, label in enumerate(labels)}

    def __call__(self, sample: dict) -> int:
        return self.index[sample["label"]]


def xares_decoding_problem() -> str | None:
    """Why X-ARES cannot decode audio here, or None.

    X-ARES reads WAVs from its tars with ``torchaudio.load`` (through ``webdataset.torch_audio``), and on
    a failure warns and skips the clip. From torchaudio 2.9 on that load needs TorchCodec and FFmpeg.
    """
    import soundfile as sf
    import torchaudio

    with tempfile.TemporaryDirectory() as folder:
        probe = os.path.join(folder, "probe.wav")
        sf.write(probe, [0.0] * 16, 16000, subtype="PCM_16")
        try:
            torchaudio.load(probe)
        except Exception as err:  # noqa: BLE001 - whatever stops it, X-ARES would skip every clip
            return (
                f"torchaudio {torchaudio.__version__} cannot load a WAV here ({type(err).__name__}: {err}); "
                "X-ARES decodes its tars with torchaudio.load and would skip every clip. Install TorchCodec "
                "and FFmpeg (pip install torchcodec; apt-get install ffmpeg), or use torchaudio < 2.9"
            )
    return None


def hear_task_config(encoder: nn.Module | None, env_root: str | os.PathLike, name: str, **overrides: Any):
    """The X-ARES ``TaskConfig`` of a task written by :func:`write_hear_task` (imports xares).

    A clip task: the MLP (X-ARES's LayerNorm + linear layer) and kNN on the mean of the encoder's frames,
    scored by accuracy on the test split (mean over folds for k-fold tasks). ``overrides`` are
    ``TaskConfig`` fields. With an encoder, first checks that X-ARES can decode audio here
    (:func:`xares_decoding_problem`), instead of letting it skip every clip.
    """
    from xares.task import TaskConfig

    info = _read_json(Path(env_root) / name / TASK_INFO)
    if encoder is not None:
        problem = xares_decoding_problem()
        if problem is not None:
            raise XaresTaskError(problem)
    splits: dict[str, Any]
    if info["folds"]:
        splits = {"k_fold_splits": list(info["folds"])}
    else:
        splits = {"train_split": "train", "valid_split": "valid", "test_split": "test"}
    kwargs = {
        "name": name,
        "formal_name": info["formal_name"],
        "env_root": str(env_root),
        "encoder": encoder,
        "output_dim": len(info["labels"]),
        "label_processor": _LabelIndex(info["labels"]),
        "eval_weight": int(info["eval_size"]),
        "metric": "accuracy",
        **splits,
        **overrides,
    }
    return TaskConfig(**kwargs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hear_abt.xares", description=write_hear_task.__doc__.split("\n")[0]
    )
    ap.add_argument(
        "task_dir", help="a HEAR task folder (task_metadata.json, labelvocabulary.csv, 16000/...)"
    )
    ap.add_argument("env_root", help="X-ARES env_root to write into (not named 'xares' or 'tasks')")
    ap.add_argument("--name", default=None, help="X-ARES task name (default: the HEAR task's name)")
    ap.add_argument("--shard-size", type=int, default=SHARD_SIZE, help="clips per tar")
    args = ap.parse_args(argv)
    try:
        task_file = write_hear_task(args.task_dir, args.env_root, args.name, shard_size=args.shard_size)
    except XaresTaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: cannot write the X-ARES task: {err}", file=sys.stderr)
        return 1
    env_root = Path(args.env_root).resolve()
    info = json.loads((env_root / task_file.name[: -len("_task.py")] / TASK_INFO).read_text())  # as written
    clips = ", ".join(f"{split} {n}" for split, n in info["clips"].items())
    print(f"wrote {env_root / info['name']} ({clips} clips), {task_file} and {env_root / ENCODER_FILE}")
    print(f"run X-ARES on it (from {env_root.parent}; --max-jobs 0 without a GPU):")
    print(
        f"  cd {env_root.parent} && HEAR_ABT_WEIGHTS=CHECKPOINT {sys.executable} -m xares.run "
        f"{env_root.name}/{ENCODER_FILE} {env_root.name}/{task_file.name} --max-jobs 0"
    )
    problem = xares_decoding_problem()
    if problem is not None:
        print(f"warning: {problem}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
