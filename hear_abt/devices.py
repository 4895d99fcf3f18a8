"""Turning a ``--device`` argument into a torch device that exists on this machine."""

from __future__ import annotations

import torch


def parse_device(text: str) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... as a device this torch can use; ValueError says why not."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1): {err}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{text} asks for CUDA, but this torch sees no CUDA device here; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{text}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ValueError(f"{text}: hear-abt runs on cpu or cuda devices")
    return device
