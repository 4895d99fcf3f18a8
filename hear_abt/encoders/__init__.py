"""Encoders: each maps a normalised (B, 1, n_mels, frames) log-mel to a (B, embed_dim) embedding."""

from . import audiontt, vit  # noqa: F401  (registers the encoders)
from .audiontt import AudioNTT
from .base import Encoder
from .registry import create_encoder, create_encoder_for, list_encoders, register_encoder
from .vit import ViT

__all__ = [
    "AudioNTT",
    "Encoder",
    "ViT",
    "create_encoder",
    "create_encoder_for",
    "list_encoders",
    "register_encoder",
]
