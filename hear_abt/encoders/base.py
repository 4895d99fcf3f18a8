"""What every encoder is and declares about itself, so no caller has to ask "which encoder is this?".

An encoder maps a normalised (B, 1, n_mels, frames) log-mel to (B, embed_dim). Its capabilities are
class or instance attributes read by the embedder (inference) and the training engine alike:

- ``frame_features``: it can produce per-frame features (``frame_features``, ``iter_frame_features``,
  ``pooled_chunked``), so scene embeddings pool over the whole clip and the fast timestamp mode works.
  Without it, scenes are the mean over consecutive ``window_frames`` chunks.
- ``exact_window_reuse``: it provides ``window_embeddings``, which gives every window's embedding
  exactly as a separate pass would, from frames shared between overlapping windows (faithful
  timestamps then skip the per-window passes).
- ``input_frames``: the only input length it accepts (a ViT's positional grid), or None for any.
- ``num_patches``: tokens it can drop for view masking (``forward(x, keep=...)``), or None.
"""

from __future__ import annotations

from torch import nn


class Encoder(nn.Module):
    # (low, high) for numeric constructor arguments (each item of a list argument); checked before
    # a config builds anything, so an absurd size is an error, not a huge allocation.
    KWARG_RANGES: dict[str, tuple[float, float]] = {}
    embed_dim: int
    frame_features_supported: bool = False
    exact_window_reuse: bool = False
    input_frames: int | None = None
    num_patches: int | None = None

    @property
    def supports_masking(self) -> bool:
        return self.num_patches is not None
