"""The one source of truth for every setting shared by training and inference.

A checkpoint carries a serialised :class:`ModelConfig`, so loading never guesses: the front-end
parameters, the normalisation statistics of the pre-training data and the encoder architecture all
travel with the weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

# Bump when the meaning of a stored field changes; loaders refuse configs from the future.
FORMAT_VERSION = 1

SAMPLE_RATE = 16_000
# HEAR timestamp embeddings: 950 ms windows every 50 ms (paper, Appendix A.2).
TIMESTAMP_WINDOW_MS = 950
TIMESTAMP_HOP_MS = 50


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel front-end (paper section 4): 64 ms window, 10 ms hop, 64 bins over 60-7800 Hz."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    win_length: int = 1024
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 60.0
    f_max: float = 7800.0
    # log(mel + offset); float32 machine epsilon, small enough to leave speech levels untouched.
    log_offset: float = 1.1920928955078125e-07
    # Frames the encoders see at once: 96 frames = 950 ms (the pre-training crop and inference window).
    window_frames: int = 96

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")

    def samples_to_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` of audio (centred STFT)."""
        return 1 + n_samples // self.hop_length


@dataclass(frozen=True)
class NormStats:
    """Mean/std of the pre-training set's log-mel values (scalars, as in BYOL-A)."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if not (self.std > 0.0):
            raise ValueError(f"normalisation std must be > 0, got {self.std}")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild an encoder and its input pipeline."""

    encoder: str = "audiontt"
    encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    norm: NormStats = field(default_factory=NormStats)
    format_version: int = FORMAT_VERSION
    # Free-form provenance (training preset, data, steps) for model cards; never used to build.
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ValueError("config has no integer 'format_version'; is this a hear-abt config?")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"config format_version {version} is newer than this hear-abt understands "
                f"({FORMAT_VERSION}); upgrade with `pip install -U hear-abt`."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"config has unknown fields {sorted(unknown)}")
        return cls(
            encoder=data["encoder"],
            encoder_kwargs=dict(data.get("encoder_kwargs", {})),
            frontend=FrontendConfig(**data.get("frontend", {})),
            norm=NormStats(**data.get("norm", {})),
            format_version=version,
            provenance=dict(data.get("provenance", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))
