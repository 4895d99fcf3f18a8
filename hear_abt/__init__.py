"""hear-abt: Audio Barlow Twins embeddings behind the HEAR 2021 API.

``hear_abt`` is the default HEAR module (AudioNTT weights by default; it also loads any ABT
checkpoint). ``hear_abt.audiontt`` and ``hear_abt.vitc_b`` serve one encoder each.
"""

from __future__ import annotations

import os
from typing import Any

from .embedder import ABTEmbedder
from .hear_api import AudioInputError, get_scene_embeddings, get_timestamp_embeddings
from .hear_api import load_model as _load_model
from .weights import WeightsError

__version__ = "0.1.0"
__all__ = [
    "ABTEmbedder",
    "AudioInputError",
    "WeightsError",
    "get_scene_embeddings",
    "get_timestamp_embeddings",
    "load_model",
]


def load_model(model_file_path: str | os.PathLike = "", **kwargs: Any) -> ABTEmbedder:
    """Load any ABT checkpoint (default: $HEAR_ABT_WEIGHTS, else the released AudioNTT weights).

    Options: ``timestamp_mode`` ("faithful" or "fast"), ``window_batch`` (windows per forward pass).
    """
    return _load_model(model_file_path, family=None, **kwargs)
