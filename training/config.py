"""Pre-training settings: one dataclass, the paper's presets, and ``key=value`` overrides.

Front-end parameters and the dataset's normalisation statistics are not here: they come from the
prepared data's manifest (``hear_abt.config.FrontendConfig``/``NormStats``), so training and
inference can never disagree on them.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .augment import AugmentConfig


@dataclass
class TrainConfig:
    # Encoder (a name in hear_abt.encoders) and projector: Linear-BN-ReLU blocks, then a Linear.
    encoder: str = "audiontt"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    projector_hidden: int = 8192
    projector_depth: int = 2  # Linear layers; 2 = one hidden layer (paper A.1)
    projector_out: int = 1048
    # Barlow Twins objective (eq. 1): alpha * invariance + lambd * redundancy reduction.
    alpha: float = 1.0
    lambd: float = 0.005
    # Data: global batch (all ranks together) and crop length in frames (96 = 950 ms).
    batch_size: int = 128
    crop_frames: int = 96
    epochs: float = 100.0
    # Optimiser; None takes the paper's value for that optimiser (training.optim). Rates are for a
    # batch of 128 and are scaled linearly to batch_size once, in training.optim.build_optimizer.
    optimizer: str = "lars"
    lr_weights: float | None = None
    lr_biases: float | None = None
    weight_decay: float | None = None
    warmup_fraction: float = 0.1  # of all steps: 10 of 100 epochs
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # "auto": bf16 autocast on GPUs that support it, else fp16 with a grad scaler; fp32 on the CPU.
    precision: str = "auto"
    seed: int = 0
    checkpoint_every: int = 1000  # steps; a checkpoint is also written at the end
    log_every: int = 20
    image_every: int = 1000  # cross-correlation and loss-curve images
    # Linear-probe monitor (training.probe): every probe_every steps (0: never), logistic regression
    # on frozen scene embeddings of a HEAR-format scene task; the best checkpoint is kept as best.pt.
    probe_every: int = 0
    probe_task: str = ""
    probe_max_clips: int = 2000

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        aug = data.pop("augment", {})
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}")
        aug_fields = {f.name: f for f in dataclasses.fields(AugmentConfig)}
        bad = set(aug) - set(aug_fields)
        if bad:
            raise ValueError(f"unknown augment settings {sorted(bad)}")
        aug = {k: tuple(v) if isinstance(v, list) else v for k, v in aug.items()}
        return cls(augment=AugmentConfig(**aug), **data)


PRESETS: dict[str, dict[str, Any]] = {
    # Paper section 4 / A.1: AudioSet unbalanced train, 100 epochs, batch 128, LARS.
    "audioset-audiontt": {},
    # ViT_C-B with 16x8 patches, AdamW lr 6.25e-5, wd 0.24 (A.1).
    "audioset-vitc-b": {"encoder": "vitc_b", "optimizer": "adamw"},
    # Ablation set-up (Appendix C): FSD50K dev, 100 epochs, projector output 256.
    "fsd50k-ablation": {"projector_out": 256},
    # Small AudioNTT for tests, the demo and laptops: minutes on a CPU.
    "cpu-tiny": {
        "encoder_kwargs": {"channels": 16, "mlp_dim": 256},
        "projector_hidden": 512,
        "projector_out": 128,
        "batch_size": 32,
        "epochs": 20.0,
        "precision": "fp32",
        "checkpoint_every": 50,
        "log_every": 5,
        "image_every": 100,
        "augment": {"mixup_bank_size": 256},
    },
}


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if part not in node or not isinstance(node[part], dict):
            raise ValueError(f"unknown setting {key!r}")
        node = node[part]
    leaf = parts[-1]
    # encoder_kwargs is open-ended; everything else must already exist.
    if leaf not in node and parts[0] != "encoder_kwargs":
        raise ValueError(f"unknown setting {key!r}; see `python -m training.pretrain --help`")
    node[leaf] = value


def build_config(preset: str, overrides: list[str] = ()) -> TrainConfig:
    """The preset's settings with ``key=value`` overrides (dotted keys reach nested settings)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    data = TrainConfig().to_dict()
    for key, value in PRESETS[preset].items():
        if isinstance(value, dict) and key == "augment":
            data[key].update(value)
        else:
            data[key] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        _set_dotted(data, key.strip(), _parse_value(value.strip()))
    config = TrainConfig.from_dict(data)
    if config.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {config.precision!r}")
    return config
