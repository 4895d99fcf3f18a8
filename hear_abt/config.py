"""The one source of truth for every setting shared by training and inference.

A checkpoint carries a serialised :class:`ModelConfig`, so loading never guesses: the front-end
parameters, the normalisation statistics of the pre-training data and the encoder architecture all
travel with the weights.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Optional

# Bump when the meaning of a stored field changes; loaders refuse configs from the future.
FORMAT_VERSION = 1

SAMPLE_RATE = 16_000
# HEAR timestamp embeddings: 950 ms windows every 50 ms (paper, Appendix A.2).
TIMESTAMP_WINDOW_MS = 950
TIMESTAMP_HOP_MS = 50

# Largest encoder a config may describe (parameters + buffers): 2 GB of float32. ViT-B is 86 M.
MAX_ENCODER_ELEMENTS = 500_000_000


class ConfigError(ValueError):
    """A config field has the wrong type or an impossible value; the message names the field."""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(where: str, value: Any, lo: int, hi: int) -> None:
    if not _is_int(value):
        raise ConfigError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
    if not lo <= value <= hi:
        raise ConfigError(f"{where} = {value} is out of range [{lo}, {hi}]")


def _check_real(
    where: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> None:
    if not _is_real(value):
        raise ConfigError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if value < lo or value > hi or (lo_open and value == lo) or (hi_open and value == hi):
        left, right = "(" if lo_open else "[", ")" if hi_open else "]"
        raise ConfigError(f"{where} = {value!r} is out of range {left}{lo}, {hi}{right}")


# encoder_kwargs: JSON values, then the ranges the encoder class declares (KWARG_RANGES; integers in
# lists such as patch or input_size element-wise), then a dry build, which rejects names the encoder
# does not take (see ModelConfig.check_encoder). Bounds are generous; they only stop absurd sizes early.
def _check_json_value(where: str, value: Any, depth: int = 0) -> None:
    """encoder_kwargs values: JSON scalars (finite numbers) or short lists of them."""
    if value is None or isinstance(value, (bool, str)):
        return
    if _is_real(value):
        _check_real(where, value, -1e12, 1e12)
        return
    if isinstance(value, (list, tuple)) and depth == 0 and len(value) <= 16:
        for i, item in enumerate(value):
            _check_json_value(f"{where}[{i}]", item, depth + 1)
        return
    raise ConfigError(f"{where} must be a number, bool, string or short list of them, got {value!r}")


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
        """Every field's type and range, before anything (filterbank, STFT window) is built from it."""
        w = "frontend."
        _check_int(w + "sample_rate", self.sample_rate, 1000, 192_000)
        _check_int(w + "n_fft", self.n_fft, 16, 16384)
        _check_int(w + "win_length", self.win_length, 1, 16384)
        if self.win_length > self.n_fft:
            raise ConfigError(f"frontend.win_length {self.win_length} > frontend.n_fft {self.n_fft}")
        _check_int(w + "hop_length", self.hop_length, 1, self.n_fft)
        _check_int(w + "n_mels", self.n_mels, 1, min(512, self.n_fft // 2 + 1))
        _check_real(w + "f_min", self.f_min, 0.0, self.sample_rate / 2)
        _check_real(w + "f_max", self.f_max, 0.0, self.sample_rate / 2)
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ConfigError(
                f"need 0 <= frontend.f_min < frontend.f_max <= sample_rate/2, got {self.f_min}, {self.f_max}"
            )
        _check_real(w + "log_offset", self.log_offset, 0.0, 1.0, lo_open=True)
        _check_int(w + "window_frames", self.window_frames, 1, 8192)

    @property
    def silence_value(self) -> float:
        """The log-mel value of digital silence, ``log(0 + log_offset)``: what frame-domain padding uses."""
        return math.log(self.log_offset)

    def samples_to_frames(self, n_samples: int) -> int:
        """Frames produced for ``n_samples`` of audio (centred STFT)."""
        return 1 + n_samples // self.hop_length


@dataclass(frozen=True)
class NormStats:
    """Mean/std of the pre-training set's log-mel values (scalars, as in BYOL-A)."""

    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        # Log-mel values lie within about [-16, 25]: statistics far outside are corrupt, not data.
        _check_real("norm.mean", self.mean, -1e4, 1e4)
        _check_real("norm.std", self.std, 0.0, 1e4, lo_open=True)
        if self.std < 1e-6:
            raise ConfigError(
                f"norm.std = {self.std!r} is too small (< 1e-6): the data it was computed from is (nearly) "
                "constant, e.g. all silence"
            )

    def apply(self, logmel: Any) -> Any:
        """Standardise log-mel values (a tensor or array) by these statistics: the only place it is done."""
        return (logmel - self.mean) / self.std


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

    def __post_init__(self) -> None:
        if not isinstance(self.encoder, str) or not self.encoder:
            raise ConfigError(f"encoder must be a non-empty string, got {self.encoder!r}")
        if not isinstance(self.encoder_kwargs, dict):
            raise ConfigError(f"encoder_kwargs must be a dict, got {type(self.encoder_kwargs).__name__}")
        if not isinstance(self.frontend, FrontendConfig):
            raise ConfigError(f"frontend must be a FrontendConfig, got {type(self.frontend).__name__}")
        if not isinstance(self.norm, NormStats):
            raise ConfigError(f"norm must be a NormStats, got {type(self.norm).__name__}")
        _check_int("format_version", self.format_version, 1, FORMAT_VERSION)
        if not isinstance(self.provenance, dict):
            raise ConfigError(f"provenance must be a dict, got {type(self.provenance).__name__}")
        self.check_encoder()

    def check_encoder(self) -> None:
        """Check ``encoder`` and ``encoder_kwargs`` without allocating: types and ranges
        (the encoder class's ``KWARG_RANGES``), then a dry build on torch's ``meta`` device, which raises for
        names the encoder does not take and inconsistent sizes and counts its parameters."""
        from .encoders import list_encoders
        from .encoders.registry import encoder_class

        if self.encoder not in list_encoders():
            raise ConfigError(f"unknown encoder {self.encoder!r}; known: {', '.join(list_encoders())}")
        ranges = encoder_class(self.encoder).KWARG_RANGES
        for key, value in self.encoder_kwargs.items():
            where = f"encoder_kwargs[{key!r}]"
            if not isinstance(key, str):
                raise ConfigError(f"encoder_kwargs keys must be strings, got {key!r}")
            _check_json_value(where, value)
            bounds = ranges.get(key)
            if bounds is not None:
                items = value if isinstance(value, (list, tuple)) else [value]
                for i, item in enumerate(items):
                    name = where if items is not value else f"{where}[{i}]"
                    if isinstance(bounds[0], int):
                        _check_int(name, item, int(bounds[0]), int(bounds[1]))
                    else:
                        _check_real(name, item, *bounds)
        fe = self.frontend
        try:
            _, size = _meta_encoder(self.encoder, self.encoder_kwargs, fe.n_mels, fe.window_frames)
        except (TypeError, ValueError, RuntimeError, ZeroDivisionError, KeyError, IndexError) as err:
            raise ConfigError(
                f"encoder_kwargs {self.encoder_kwargs!r} do not describe a valid {self.encoder!r} encoder "
                f"(with n_mels={fe.n_mels}, window_frames={fe.window_frames}): {err}"
            ) from err
        if size > MAX_ENCODER_ELEMENTS:
            raise ConfigError(
                f"encoder_kwargs {self.encoder_kwargs!r} describe a {self.encoder!r} encoder of {size:,} "
                f"values, more than the {MAX_ENCODER_ELEMENTS:,} allowed: a corrupt or mistyped config?"
            )

    def meta_state_dict(self) -> dict[str, Any]:
        """The described encoder's ``state_dict`` on the ``meta`` device: names, shapes and dtypes, no
        memory. Built once per encoder description (the check of this config already built it)."""
        fe = self.frontend
        return dict(_meta_encoder(self.encoder, self.encoder_kwargs, fe.n_mels, fe.window_frames)[0])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        version = data.get("format_version")
        if not _is_int(version):
            raise ConfigError("config has no integer 'format_version'; is this a hear-abt config?")
        if version > FORMAT_VERSION:
            raise ConfigError(
                f"config format_version {version} is newer than this hear-abt understands "
                f"({FORMAT_VERSION}); upgrade with `pip install -U hear-abt`."
            )
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"config has unknown fields {sorted(unknown)}")
        if "encoder" not in data:
            raise ConfigError("config has no 'encoder' field")
        for name in ("encoder_kwargs", "provenance"):
            if not isinstance(data.get(name, {}), dict):
                raise ConfigError(f"config field {name!r} must be an object, got {data[name]!r}")
        return cls(
            encoder=data["encoder"],
            encoder_kwargs=dict(data.get("encoder_kwargs", {})),
            frontend=_sub_config(FrontendConfig, "frontend", data.get("frontend")),
            norm=_sub_config(NormStats, "norm", data.get("norm")),
            format_version=version,
            provenance=dict(data.get("provenance", {})),
        )

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text))


# Dry builds by (encoder, canonical encoder_kwargs, n_mels, window_frames): every config of a checkpoint
# load (config.json, the copy inside the weights, the tensor check) describes the same encoder.
_META_ENCODERS: dict[tuple[str, str, int, int], tuple[dict[str, Any], int]] = {}
_META_ENCODERS_MAX = 64


def _meta_encoder(
    encoder: str, kwargs: dict[str, Any], n_mels: int, window_frames: int
) -> tuple[dict[str, Any], int]:
    """(``state_dict`` on the ``meta`` device, parameter + buffer count) of an encoder; cached."""
    key = (encoder, json.dumps(kwargs, sort_keys=True), n_mels, window_frames)
    hit = _META_ENCODERS.get(key)
    if hit is None:
        import torch

        from .encoders import create_encoder_for

        with torch.device("meta"):
            module = create_encoder_for(encoder, kwargs, n_mels, window_frames)
        size = sum(t.numel() for t in module.parameters()) + sum(t.numel() for t in module.buffers())
        if len(_META_ENCODERS) >= _META_ENCODERS_MAX:
            _META_ENCODERS.clear()
        hit = _META_ENCODERS[key] = (module.state_dict(), size)
    return hit


def _sub_config(cls: type, name: str, data: Optional[dict[str, Any]]) -> Any:
    """Build FrontendConfig/NormStats from a config's sub-object, naming unknown fields."""
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ConfigError(f"config field {name!r} must be an object, got {data!r}")
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"config field {name!r} has unknown fields {sorted(unknown)}")
    return cls(**data)
