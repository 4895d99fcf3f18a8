"""The HEAR 2021 API (load_model, get_scene_embeddings, get_timestamp_embeddings) over ABTEmbedder.

The public modules ``hear_abt``, ``hear_abt.audiontt`` and ``hear_abt.vitc_b`` bind these functions
to their encoder family and default weights.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from .embedder import ABTEmbedder
from .weights import WeightsError, default_weights_source, load_weights


class AudioInputError(ValueError):
    """The audio given to an embedding function is not what the HEAR API specifies."""


# HEAR audio lies in [-1, 1]. Far beyond, float32 power spectra overflow (from about 1e17 the
# embeddings are NaN); up to this bound every result is finite (the spectrum's power stays < 1e32).
MAX_ABS_SAMPLE = 1e9


def load_model(
    model_file_path: str | os.PathLike = "",
    *,
    family: str | None = "audiontt",
    timestamp_mode: str = "faithful",
    window_batch: int = 64,
    **unknown: Any,
) -> ABTEmbedder:
    """Load an ABT model for the HEAR API.

    ``model_file_path``: a checkpoint folder, a ``.safetensors`` or training checkpoint file, or a Hub
    id ``org/name[@revision]``. Empty: ``$HEAR_ABT_WEIGHTS`` if set, else the pinned default weights
    of ``family``. ``family`` (set by the public module) is the encoder the weights must hold; None
    accepts any. The model is returned in eval mode on the CPU; move it with ``.to(device)`` or let
    the embedding functions follow the audio's device.
    """
    if unknown:
        raise TypeError(
            f"load_model() got unexpected options {sorted(unknown)}; known: timestamp_mode, window_batch"
        )
    source = os.fspath(model_file_path) or default_weights_source(family or "audiontt")
    checkpoint = load_weights(source)
    config = checkpoint.config
    if family is not None and config.encoder != family:
        raise WeightsError(
            f"{source} holds a {config.encoder!r} encoder, but this module serves {family!r}: "
            f"use the module hear_abt.{config.encoder} (or hear_abt, which takes any)."
        )
    model = ABTEmbedder(config, timestamp_mode=timestamp_mode, window_batch=window_batch)
    try:
        model.encoder.load_state_dict(checkpoint.state_dict, strict=True)
    except RuntimeError as err:
        raise WeightsError(
            f"weights in {checkpoint.source} do not fit the {config.encoder!r} encoder: {err}"
        ) from err
    return model.eval()


def module_loader(family: str):
    """``load_model`` for a HEAR module that serves one encoder family."""

    def load(model_file_path: str | os.PathLike = "", **kwargs: Any) -> ABTEmbedder:
        return load_model(model_file_path, family=family, **kwargs)

    load.__doc__ = (
        f"Load ABT {family} weights (default: $HEAR_ABT_WEIGHTS, else the released {family} weights)."
    )
    return load


def check_audio(audio: Any, *, per_sound: bool = True) -> torch.Tensor:
    """The one check of audio input, for the HEAR API, ``hear_abt.streaming`` and ``abt_eval.logmel``.

    HEAR audio is a real floating (n_sounds, n_samples) torch tensor or numpy array, at least one sound
    of at least one sample, every sample finite and within +-``MAX_ABS_SAMPLE``. Returns it as a
    float32 tensor on its device (float64/float16 are converted first, so the answer is the float32
    answer); anything else is an :class:`AudioInputError` naming the problem and the fix. With
    ``per_sound=False`` (one file read in blocks: ``hear-abt embed``) the messages name no sounds.
    """
    if isinstance(audio, np.ndarray):
        if audio.dtype.kind != "f":
            raise AudioInputError(_dtype_message(str(audio.dtype)))
        audio = torch.from_numpy(np.ascontiguousarray(audio))
    if not isinstance(audio, torch.Tensor):
        raise AudioInputError(f"audio must be a torch.Tensor or numpy array, got {type(audio).__name__}")
    if not audio.dtype.is_floating_point:
        raise AudioInputError(_dtype_message(str(audio.dtype)))
    if audio.ndim != 2:
        hint = " For a single clip use audio[None]." if audio.ndim == 1 else ""
        raise AudioInputError(
            f"audio must be 2-D (n_sounds, n_samples), got shape {tuple(audio.shape)}.{hint}"
        )
    if audio.shape[0] == 0:
        raise AudioInputError("audio is an empty batch (0 sounds); pass at least one clip")
    if audio.shape[1] == 0:
        raise AudioInputError("audio clips have zero length (0 samples); pass at least one sample per clip")
    audio = audio.float()
    _check_samples(audio, per_sound)
    return audio


def _check_samples(audio: torch.Tensor, per_sound: bool) -> None:
    """Finite samples within +-MAX_ABS_SAMPLE in every sound of a float32 (n_sounds, n_samples)."""

    def which(bad: torch.Tensor) -> str:
        return f" in sound(s) {torch.nonzero(bad).flatten().tolist()[:10]}" if per_sound else ""

    finite = torch.isfinite(audio).all(dim=1)
    if not bool(finite.all()):
        raise AudioInputError(f"audio has NaN or Inf samples{which(~finite)}; clean or drop them first")
    peak = audio.abs().amax(dim=1)
    if bool((peak > MAX_ABS_SAMPLE).any()):
        raise AudioInputError(
            f"audio{which(peak > MAX_ABS_SAMPLE)} has samples up to {float(peak.max()):.3g}, beyond the "
            f"{MAX_ABS_SAMPLE:.0e} this model can compute with (float32 overflow would give NaN "
            "embeddings); HEAR audio is float in [-1, 1]: scale it first"
        )


def _dtype_message(dtype: str) -> str:
    if "complex" in dtype:
        return f"audio is {dtype}: pass real-valued samples (e.g. the real part), as float32 in [-1, 1]"
    return f"audio is {dtype}: pass float samples in [-1, 1] (e.g. int16 audio / 32768.0)"


def _checked_input(audio: Any, model: ABTEmbedder) -> torch.Tensor:
    if not isinstance(model, ABTEmbedder):
        raise TypeError(f"model must come from load_model(), got {type(model).__name__}")
    audio = check_audio(audio)
    # Follow the audio's device: the caller decides where to compute (never .cuda() on our own).
    param = next(model.parameters())
    if param.device != audio.device:
        model.to(audio.device)
    model.eval()
    return audio


def get_scene_embeddings(audio: Any, model: ABTEmbedder) -> torch.Tensor:
    """(n_sounds, n_samples) 16 kHz audio -> (n_sounds, model.scene_embedding_size) float32."""
    audio = _checked_input(audio, model)
    with torch.no_grad():
        return model.scene_embeddings(audio).float()


def get_timestamp_embeddings(audio: Any, model: ABTEmbedder) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) 16 kHz audio -> ((n_sounds, n_timestamps, D) float32, timestamps in ms)."""
    audio = _checked_input(audio, model)
    with torch.no_grad():
        emb, ts = model.timestamp_embeddings(audio)
        return emb.float(), ts
