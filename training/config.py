"""Pre-training settings: one dataclass, the paper's presets, and ``key=value`` overrides.

Front-end parameters and the dataset's normalisation statistics are not here: they come from the
prepared data's manifest (``hear_abt.config.FrontendConfig``/``NormStats``), so training and
inference can never disagree on them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .augment import AugmentConfig
from .augment_wave import wave_settings
from .optim import OPTIMIZERS, check_optimizer_settings


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
    # Run length: ``steps`` when > 0, else ``epochs`` passes over the data.
    epochs: float = 100.0
    steps: int = 0
    # Optimiser; None takes the paper's value for that optimiser (training.optim). Rates are for a
    # batch of 128 and are scaled linearly to batch_size once, in training.optim.build_optimizer.
    optimizer: str = "lars"
    lr_weights: float | None = None
    lr_biases: float | None = None
    weight_decay: float | None = None
    warmup_fraction: float = 0.1  # of all steps: 10 of 100 epochs (Barlow Twins warms up 10 epochs)
    # The cosine decay ends at this fraction of the peak rate (Barlow Twins: 1/1000).
    lr_end_factor: float = 0.001
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # "auto": bf16 autocast on GPUs that support it, else fp16 with a grad scaler; fp32 on the CPU.
    precision: str = "auto"
    # CUDA only. tf32: TF32 matmuls/convolutions for the parts autocast leaves in fp32. compile:
    # torch.compile the siamese model; channels_last: NHWC convolutions. Both off by default: they
    # change the numerics (and compile takes minutes up front).
    tf32: bool = True
    compile: bool = False
    channels_last: bool = False
    seed: int = 0
    # Cadences: by steps (0: never) or by minutes of wall time (0: never), whichever comes first. A
    # checkpoint is also written at the end and when the run is stopped by SIGTERM/SIGUSR1.
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 15.0
    log_every: int = 20  # also when non-finite losses are looked for (a device sync)
    log_minutes: float = 0.0
    image_every: int = 1000  # cross-correlation and loss-curve images
    image_minutes: float = 30.0
    # Linear-probe monitor (training.probe): every probe_every steps (0: never), logistic regression
    # on frozen scene embeddings of a HEAR-format scene task; the best checkpoint is kept as best.pt.
    probe_every: int = 0
    probe_task: str = ""
    probe_max_clips: int = 2000
    # "logreg": the cheap logistic regression; "linear": the paper's linear evaluation (Appendix B,
    # training.linear_eval: Adam + early stopping, multiclass or multilabel tasks).
    probe_protocol: str = "logreg"
    # Representation health (training.monitor.representation_health): every rankme_every steps (0:
    # never) and at the end, RankMe effective rank and per-dimension std of the embeddings of a
    # fixed batch of rankme_clips crops (rank <= min(clips, embedding dim)); rank 0 only, eval mode.
    rankme_every: int = 250
    rankme_clips: int = 1024
    # Encoder weights kept along the way, at these fractions of the run's steps (e.g. [0.25, 0.5, 0.75];
    # the end is always in checkpoints/last.pt): run_dir/weights/step-NNNNNN/, a folder load_model
    # reads, so that how the embeddings transfer can be scored over the course of training.
    keep_weights_at: tuple = ()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Type and range checks of every setting, before anything is built; returns self."""
        checks: list[tuple[str, Any, type | tuple[type, ...], Any]] = [
            ("encoder", self.encoder, str, lambda v: bool(v)),
            ("encoder_kwargs", self.encoder_kwargs, dict, None),
            ("projector_hidden", self.projector_hidden, int, lambda v: 1 <= v <= 65536),
            ("projector_depth", self.projector_depth, int, lambda v: 1 <= v <= 8),
            ("projector_out", self.projector_out, int, lambda v: 1 <= v <= 65536),
            ("alpha", self.alpha, (int, float), lambda v: v >= 0),
            ("lambd", self.lambd, (int, float), lambda v: v >= 0),
            ("batch_size", self.batch_size, int, lambda v: v >= 2),
            ("crop_frames", self.crop_frames, int, lambda v: 4 <= v <= 100_000),
            ("epochs", self.epochs, (int, float), lambda v: v > 0),
            ("steps", self.steps, int, lambda v: v >= 0),
            ("optimizer", self.optimizer, str, lambda v: v in OPTIMIZERS),
            ("lr_weights", self.lr_weights, (int, float, type(None)), lambda v: v is None or v >= 0),
            ("lr_biases", self.lr_biases, (int, float, type(None)), lambda v: v is None or v >= 0),
            ("weight_decay", self.weight_decay, (int, float, type(None)), lambda v: v is None or v >= 0),
            ("warmup_fraction", self.warmup_fraction, (int, float), lambda v: 0 <= v <= 1),
            ("lr_end_factor", self.lr_end_factor, (int, float), lambda v: 0 <= v <= 1),
            ("precision", self.precision, str, lambda v: v in ("auto", "fp32", "bf16", "fp16")),
            ("seed", self.seed, int, lambda v: v >= 0),
            ("tf32", self.tf32, bool, None),
            ("compile", self.compile, bool, None),
            ("channels_last", self.channels_last, bool, None),
            ("checkpoint_every", self.checkpoint_every, int, lambda v: v >= 0),
            ("checkpoint_minutes", self.checkpoint_minutes, (int, float), lambda v: v >= 0),
            ("log_every", self.log_every, int, lambda v: v >= 1),
            ("log_minutes", self.log_minutes, (int, float), lambda v: v >= 0),
            ("image_every", self.image_every, int, lambda v: v >= 0),
            ("image_minutes", self.image_minutes, (int, float), lambda v: v >= 0),
            ("probe_every", self.probe_every, int, lambda v: v >= 0),
            ("probe_task", self.probe_task, str, None),
            ("probe_max_clips", self.probe_max_clips, int, lambda v: v >= 1),
            ("probe_protocol", self.probe_protocol, str, lambda v: v in ("logreg", "linear")),
            ("rankme_every", self.rankme_every, int, lambda v: v >= 0),
            ("rankme_clips", self.rankme_clips, int, lambda v: v >= 2),
            (
                "keep_weights_at",
                self.keep_weights_at,
                (tuple, list),
                lambda v: all(
                    isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f <= 1 for f in v
                ),
            ),
        ]
        for name, value, types, ok in checks:
            # bool is an int subclass: refuse it where a number is meant.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
                raise ValueError(
                    f"setting {name}={value!r} has the wrong type; expected {_type_names(types)}"
                )
            if ok is not None and not ok(value):
                raise ValueError(f"setting {name}={value!r} is out of range")
        check_optimizer_settings(self.optimizer, self.lr_weights, self.weight_decay)
        wave_settings(self.augment)  # the waveform augmentations' ranges
        if self.probe_every and not self.probe_task:
            raise ValueError("probe_every needs probe_task=PATH (a HEAR-format scene task folder)")
        return self

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
        if isinstance(data.get("keep_weights_at"), list):
            data["keep_weights_at"] = tuple(data["keep_weights_at"])
        return cls(augment=AugmentConfig(**aug), **data)


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _type_names(types: type | tuple[type, ...]) -> str:
    return " or ".join("None" if t is type(None) else t.__name__ for t in _as_tuple(types))


# The reduced-width AudioNTT and run settings that both CPU recipes share.
_CPU_HOUR_MODEL: dict[str, Any] = {
    "encoder_kwargs": {"channels": 32, "mlp_dim": 512},
    "projector_hidden": 2048,
    "projector_out": 256,
    "batch_size": 128,
    "precision": "fp32",
    "log_every": 10,
    "checkpoint_every": 120,
    "image_every": 360,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Paper section 4 / A.1: AudioSet unbalanced train, 100 epochs, batch 128, LARS.
    "audioset-audiontt": {},
    # ViT_C-B with 16x8 patches, AdamW lr 6.25e-5, wd 0.24 (A.1).
    "audioset-vitc-b": {"encoder": "vitc_b", "optimizer": "adamw"},
    # NOT the paper's run and NOT tuned: AudioNTT with a global batch of 1024, 128 per GPU on 8 GPUs
    # (the paper's 128 is 16 per GPU, too few to keep 8 busy). Learning rates follow
    # training.optim's linear rule (x8 the paper's for batch 128) and the warm-up is the same 10% of
    # the steps; at 8x fewer steps per epoch, 100 epochs are 8x fewer updates. docs/pretraining.md.
    "audioset-audiontt-1024": {"batch_size": 1024},
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
    # The one-CPU-hour budget's recipe (docs/realsuite.md, "The recipe search"): a reduced-width AudioNTT,
    # 360 steps of batch 128 (under 9 min on an idle 2-core CPU) with waveform pitch shift, time stretch,
    # EQ, reverb and gain: the best of a 40-trial TPE search on recorded drums and sound effects (trial 10
    # of docs/studies/realsuite-tpe.jsonl, its values exactly), confirmed best of the 3 re-run with 3
    # pre-training seeds each. Over those seeds it is indistinguishable from the paper's augmentations
    # (cpu-hour-1440's) at 360 steps. Its waveform blocks need waveform shards (`--store waveform`).
    "cpu-hour": {
        **_CPU_HOUR_MODEL,
        "steps": 360,
        "lambd": 0.0031441277013575498,
        "augment": {
            "mixup_ratio": 0.010167235812465258,
            "rrc_interpolation": "bilinear",
            "wave_gain_p": 0.05490737593180972,
            "wave_eq_p": 0.37412619440615597,
            "wave_reverb_p": 0.10455835401853286,
            "wave_pitch_p": 0.4707693828883101,
            "wave_pitch_semitones": 2.647321791950343,
            "wave_stretch_p": 0.5579867287708032,
        },
    },
    # The first recipe (2026-12-01; docs/cpu-experiment.md and the README's tables): 1440 steps, the
    # paper's LARS rates and Mixup 0.4 + RRC + RLF on log-mel shards. The recipe search started from it.
    "cpu-hour-1440": {
        **_CPU_HOUR_MODEL,
        "steps": 1440,
        "augment": {"mixup_ratio": 0.4, "rrc_interpolation": "bilinear"},
    },
}
DEFAULT_PRESET = "audioset-audiontt"  # the paper's run


def parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def flat_settings(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``TrainConfig.to_dict()`` as the dotted keys that overrides use (``augment.mixup_ratio``);
    encoder_kwargs is one open-ended setting, and tuples become lists as JSON would store them."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "encoder_kwargs":
            out.update(flat_settings(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


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
    # A copy: dotted overrides write into nested dicts, which must not be the preset's own (a sweep
    # builds every trial's settings in one process).
    for key, value in copy.deepcopy(PRESETS[preset]).items():
        if isinstance(value, dict) and key == "augment":
            data[key].update(value)
        else:
            data[key] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value")
        _set_dotted(data, key.strip(), parse_value(value.strip()))
    return TrainConfig.from_dict(data).validate()
