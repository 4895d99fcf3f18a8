"""Encoder registry: names in configs map to constructors (the timm pattern)."""

from __future__ import annotations

from typing import Callable

from torch import nn

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}
_CLASSES: dict[str, type] = {}


def register_encoder(name: str, cls: type) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a factory under ``name``; ``cls`` is the class it builds (its declared limits are read
    from there, e.g. ``KWARG_RANGES``, before anything is built)."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        _ENCODERS[name] = fn
        _CLASSES[name] = cls
        return fn

    return decorator


def encoder_class(name: str) -> type:
    try:
        return _CLASSES[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}") from None


def list_encoders() -> list[str]:
    return sorted(_ENCODERS)


def create_encoder(name: str, **kwargs) -> nn.Module:
    """Build a registered encoder. Every encoder maps (B, 1, n_mels, frames) to (B, embed_dim)."""
    try:
        factory = _ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known: {', '.join(list_encoders())}") from None
    return factory(**kwargs)


def create_encoder_for(name: str, kwargs: dict, n_mels: int, window_frames: int) -> nn.Module:
    """Build an encoder whose input size follows the front-end (shared by training and inference).

    Every factory takes ``n_mels`` and ``window_frames`` and uses what its architecture needs.
    """
    return create_encoder(name, n_mels=n_mels, window_frames=window_frames, **dict(kwargs))
