"""Linear-probe monitor: how good are the encoder's frozen scene embeddings, during pre-training?

Every ``probe_every`` steps, the current encoder embeds the train and evaluation splits of a
HEAR-format scene task (``abt_eval.devsuite`` makes some) and a linear classifier scores them. The
score goes to TensorBoard and ``probe.csv``, and the best-scoring checkpoint is kept as ``best.pt``.
Two protocols (``probe_protocol``):

- ``"logreg"`` (default, cheap): a logistic regression fitted on the train split, accuracy on
  ``valid`` (or ``test`` if the task has no valid split); multiclass tasks only.
- ``"linear"``: the paper's linear evaluation (``training.linear_eval``: Adam, early stopping on
  ``valid``), multiclass or multilabel. The monitor's score is the best *validation* score, so that
  choosing ``best.pt`` never looks at the test split; ``python -m training.linear_eval`` reports test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from hear_abt.config import ModelConfig

from .linear_eval import HearTask, LinearEvalSettings, embed_clips, embedder_copy, evaluate_encoder, read_clip


def load_split(task_dir: Path, split: str, max_clips: int | None) -> tuple[np.ndarray, list[str]]:
    """(clips, samples) float32 audio and one label per clip, in sorted file order."""
    labels_by_file = json.loads((task_dir / f"{split}.json").read_text())
    names = sorted(labels_by_file)[:max_clips]
    audio, labels = [], []
    for name in names:
        audio.append(read_clip(task_dir, split, name))
        label = labels_by_file[name]
        labels.append(label[0] if isinstance(label, list) else label)
    length = max(len(a) for a in audio)
    return np.stack([np.pad(a, (0, length - len(a))) for a in audio]), labels


PROTOCOLS = ("logreg", "linear")


class LinearProbe:
    """``LinearProbe(task_dir, max_clips)``: the logistic-regression probe; ``protocol="linear"``: the
    paper's linear evaluation (``crop_frames``: crop clips to the pre-training crop, None: whole clips)."""

    def __init__(
        self,
        task_dir: str | Path,
        max_clips: int | None = 2000,
        protocol: str = "logreg",
        crop_frames: int | None = None,
        seed: int = 0,
    ):
        if protocol not in PROTOCOLS:
            raise ValueError(f"probe protocol {protocol!r} is not one of {PROTOCOLS}")
        self.protocol = protocol
        self.task_dir = Path(task_dir).resolve()
        if protocol == "linear":
            self.task = HearTask(self.task_dir, max_clips, seed)
            self.settings = LinearEvalSettings(crop_frames=crop_frames, seed=seed).validate()
            self.name = self.task.name
            self.eval_split = "valid"
            return
        meta = json.loads((self.task_dir / "task_metadata.json").read_text())
        if meta.get("embedding_type") != "scene" or meta.get("prediction_type") != "multiclass":
            raise ValueError(f"{self.task_dir}: the probe needs a scene, multiclass HEAR task")
        self.name = meta.get("task_name", self.task_dir.name)
        eval_split = "valid" if (self.task_dir / "valid.json").is_file() else "test"
        self.train = load_split(self.task_dir, "train", max_clips)
        self.eval = load_split(self.task_dir, eval_split, max_clips)
        self.eval_split = eval_split

    def score(self, encoder: nn.Module, config: ModelConfig, device: torch.device) -> float:
        """Score of frozen scene embeddings of ``encoder`` (a copy is used, in eval mode, so training
        state and random streams are untouched): logistic-regression accuracy, or with
        ``protocol="linear"`` the linear evaluation's best validation score."""
        if self.protocol == "linear":
            return evaluate_encoder(encoder, config, self.task, self.settings, device).valid_score
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        model = embedder_copy(encoder, config, device).to(device).eval()
        train_x = embed_clips(model, list(self.train[0]), device)
        eval_x = embed_clips(model, list(self.eval[0]), device)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
        clf.fit(train_x, self.train[1])
        return float(clf.score(eval_x, self.eval[1]))
