"""ONNX export of ABT embeddings: two graphs that take raw 16 kHz audio and need only onnxruntime.

``export_onnx(weights, out_dir)`` (``hear-abt export-onnx WEIGHTS OUT_DIR``) writes

- ``scene.onnx``: input ``audio`` float32 (batch, samples) -> ``scene_embeddings`` (batch, D);
- ``timestamps.onnx``: input ``audio`` -> ``timestamp_embeddings`` (batch, n_timestamps, D) and
  ``timestamps`` (batch, n_timestamps), float32 ms,

with dynamic batch and length (from one sample), what ``hear_abt.get_scene_embeddings`` and
``get_timestamp_embeddings`` return (faithful timestamps) within float rounding, timestamps
identical. The whole pipeline is inside each graph: the centred STFT (ONNX ``STFT``, opset 17+), the
HTK mel filterbank, ``log(mel + offset)``, the checkpoint's normalisation, silence padding,
windowing and the encoder. Running them needs ``onnxruntime`` and ``numpy`` only::

    import numpy as np, onnxruntime as ort
    scene = ort.InferenceSession("out/scene.onnx").run(None, {"audio": audio_float32})[0]
    emb, ts = ort.InferenceSession("out/timestamps.onnx").run(None, {"audio": audio_float32})

Each graph also carries metadata (``metadata_props``): the checkpoint's config, sample rate and
embedding sizes, timestamp window and hop, the hear-abt version.

A graph cannot explain bad input (onnxruntime only checks dtype and rank). :class:`OnnxEmbedder`
(``load_onnx(out_dir)``) runs the graphs behind the HEAR API's own audio check
(``hear_api.check_audio``: the same :class:`hear_abt.AudioInputError` messages; float64 is converted)
and returns numpy arrays. A graph computes its whole input at once (no mini-batches of windows as
in torch), so its memory grows with batch x length: for timestamps about 10 MB per second of audio
with the full-size AudioNTT and 90 MB/s with ViT_C-B, for scenes 3-5 MB/s. The runner feeds it
``budget_samples`` (16 s of audio) at a time, at least one clip; it never splits a clip, so for
hour-long audio cut the clips yourself, or use the torch API (``hear_abt.streaming``).

How the graphs compute what the torch model computes:

- Front-end in float64 up to the log (see :class:`_LogMel`): onnxruntime's float32 STFT rounds
  differently from torch's, which on pure tones moves AudioNTT embeddings by 2e-4 relative; in
  float64 the graphs stay within torch's own float32 error.
- Scenes. AudioNTT: mean + max of the frame features of the whole clip's log-mel (padded with silence
  to 96 frames when shorter). ViT: mean of [CLS] over consecutive 96-frame chunks, the last padded
  with silence.
- Timestamps. The clip is padded with 48 frames of silence each side, so window k is frames
  [5k, 5k + 96) and timestamp k sits at its frame 48; there are ``(samples - 1) // 800 + 1``
  windows. ViT: every window through the encoder. AudioNTT: the exact reuse of
  ``AudioNTT.window_embeddings`` in a form torch.export can keep dynamic (:class:`_NttWindows`):
  clip-level output frames on the 4 grid phases (conv1 once, conv2 per parity, pool2 per offset);
  each window's output frames 1..22 are read from them (a sliding mean and max over 22 frames, one
  pooling op each, gathered at the window's first frame), its first and last output frames recomputed
  from its first and last 8 input frames with the window's own zero padding, exactly as a pass over
  the window alone would.

Export: ``torch.export`` with both input sizes ``Dim.DYNAMIC`` and size-oblivious 0/1 reasoning (see
:func:`_size_oblivious`), refused if a size was fixed or bounded; then ``torch.onnx`` (needs
onnxscript). ``verify`` runs the graphs against torch on a 1-sample clip and two 1.3 s clips.

Parity (``max|onnx - torch| <= 1e-4 * max|torch|`` per clip): ``tests/test_onnx.py`` (both encoders,
lengths from 1 sample to 10 s, batches of 1 to 4, pure tones and silence); full-size figures and
the speed against torch: ``benchmarks/bench_onnx.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import TIMESTAMP_HOP_MS, TIMESTAMP_WINDOW_MS
from .embedder import ABTEmbedder
from .frontend import log_mel
from .hear_api import check_audio

SCENE_FILE = "scene.onnx"
TIMESTAMPS_FILE = "timestamps.onnx"
INPUT_NAME = "audio"
SCENE_OUTPUTS = ("scene_embeddings",)
TIMESTAMP_OUTPUTS = ("timestamp_embeddings", "timestamps")
# ONNX STFT exists from opset 17; 18 is widely supported (onnxruntime >= 1.14).
ONNX_OPSET = 18
# Graphs whose weights exceed this are written with their tensors in a ``.data`` file next to them
# (protobuf's 2 GB limit); below it each graph is one self-contained file.
_SINGLE_FILE_BYTES = 1_800_000_000
# export_onnx checks its graphs against torch on this clip length (a little over one window).
_VERIFY_SECONDS = 1.3
PARITY_RTOL = 1e-4


class OnnxExportError(RuntimeError):
    """The graphs could not be exported, or do not give the torch model's answer."""


# ---- the graphs, as torch modules written for export ------------------------------------------


class _LogMel(nn.Module):
    """The embedder's front-end, computed in float64, and its normalisation, for export.

    The same STFT, window, filterbank and log offset as :class:`hear_abt.frontend.LogMelFrontend`
    (its buffers, cast), in float64 up to the log, then float32 as there. onnxruntime's float32 STFT
    rounds differently from torch's: on a pure tone the far-off mel bins, which hold only rounding
    noise under the log offset, differ by up to 7e-3 in log-mel (2e-4 relative in the embeddings).
    In float64 the graph's log-mel is the exact one (within 5e-7), which torch's float32 front-end is
    within 2e-3 of: the graphs then agree with torch within its own float32 error (full-size
    AudioNTT: up to 5e-5 on pure tones and chirps, 3e-7 on broadband sound; ViT_C: 1e-6). The STFT is
    about a tenth of the AudioNTT timestamp graph's time, in float32 or float64 alike.
    """

    def __init__(self, embedder: ABTEmbedder):
        super().__init__()
        self.cfg = embedder.config.frontend
        self.norm = embedder.config.norm
        self.silence = self.cfg.silence_value
        self.register_buffer("window", embedder.frontend.window.double(), persistent=False)
        self.register_buffer("fbanks", embedder.frontend.fbanks.double(), persistent=False)

    def raw(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, n_mels, 1 + N // hop) float32 log-mel, not normalised (centred STFT)."""
        return log_mel(audio.double(), self.cfg, self.window, self.fbanks).float()

    def pad_silence(self, mel: torch.Tensor, frames: Any) -> torch.Tensor:
        """Append ``frames`` (>= 0) frames of the log-mel of silence."""
        return F.pad(mel, (0, frames), value=self.silence)

    def normalize(self, mel: torch.Tensor) -> torch.Tensor:
        return self.norm.apply(mel)


class _NttWindows(nn.Module):
    """Faithful AudioNTT window embeddings by exact reuse (see the module docstring).

    Written for ``torch.export`` with a dynamic length: no Python branch on a size, no slice whose
    bounds the exporter would have to prove (tables are cut with ``index_select``), sizes passed
    explicitly rather than inferred (``-1``), and window positions as index tensors.
    """

    def __init__(self, encoder: nn.Module, width: int, hop: int):
        super().__init__()
        stride = encoder.TIME_STRIDE
        if width % stride or width < 4 * stride:
            raise OnnxExportError(f"AudioNTT windows must be a multiple of {stride} frames, got {width}")
        self.encoder = encoder
        self.width, self.hop, self.stride = width, hop, stride
        self.n_out = width // stride
        self.inner = self.n_out - 2  # output frames 1 .. n_out - 2 come from the clip-level frames
        self.edge_frames = 2 * stride  # an edge output frame needs 7 input frames: 2 whole grid cells

    def _mlp_columns(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's MLP (eval mode) on feature-major frames: (B, conv_dim, T) -> (B, mlp_dim, T)."""
        for layer in self.encoder.mlp:
            if isinstance(layer, nn.Linear):
                x = torch.matmul(layer.weight, x) + layer.bias[:, None]
            elif not isinstance(layer, nn.Dropout):  # dropout is the identity in eval mode
                x = layer(x)
        return x

    def forward(self, x: torch.Tensor, n_windows: Any) -> torch.Tensor:
        """(B, 1, n_mels, T) normalised log-mel holding every window -> (B, n_windows, D)."""
        enc = self.encoder
        block1, block2 = enc.features
        conv1, bn1, relu = block1[0], block1[1], block1[2]
        conv2, bn2 = block2[0], block2[1]
        b, n_mels, total = x.shape[0], x.shape[2], x.shape[3]
        stride, device = self.stride, x.device

        # Clip-level output frames on each grid phase p (frame m covers input [p + 4m, p + 4m + 4)),
        # each table cut to the same `length` frames, which hold every frame a window reads (the last
        # window ends at or before frame T, so its frame 22 ends 4 frames before, at 4 * length or less).
        # Feature-major, (B, C * F, 4, frames), the conv output as it comes: no transposed copy of it.
        length = (total - stride) // stride
        keep = torch.arange(length, device=device)
        a1 = bn1(conv1(x))  # ReLU commutes with max-pooling: it runs after each pool
        phases = [None] * stride
        for r in (0, 1):
            a2 = bn2(conv2(relu(F.max_pool2d(a1[..., r:], 2))))
            for shift in (0, 1):
                h = relu(F.max_pool2d(a2[..., shift:], 2))  # (B, C, F, frames)
                phases[r + 2 * shift] = h.flatten(1, 2).index_select(2, keep)
        conv_cols = torch.stack(phases, dim=2)  # (B, conv_dim, 4, length)
        mlp_cols = self._mlp_columns(conv_cols.flatten(2)).unflatten(2, (stride, length))
        cols = torch.cat([conv_cols, mlp_cols], dim=1)  # (B, D, 4, length)

        # Mean and max over every run of `inner` consecutive frames of each phase (one pooling op each).
        runs = length - self.inner + 1
        inner_mean = F.avg_pool2d(cols, (1, self.inner), stride=1).flatten(2)  # (B, D, 4 * runs)
        inner_max = F.max_pool2d(cols, (1, self.inner), stride=1).flatten(2)

        # Window k starts at frame s = hop * k, on phase p = s % 4; its output frame 1 is phase frame
        # (s - p) / 4 + 1: column p * runs + (s - p) / 4 + 1 of the pooled tables.
        starts = torch.arange(n_windows, device=device) * self.hop
        phase = starts % stride
        column = phase * runs + (starts - phase) // stride + 1
        inner_mean = inner_mean.index_select(2, column).transpose(1, 2)  # (B, n_windows, D)
        inner_max = inner_max.index_select(2, column).transpose(1, 2)

        # The first and last output frames of each window, from its first and last 8 input frames
        # with the window's own zero padding (a pass over those 8 frames computes them exactly).
        cells = torch.arange(self.edge_frames, device=device)
        at = torch.cat([starts[:, None] + cells, (starts + self.width - self.edge_frames)[:, None] + cells])
        patches = x[:, 0][:, :, at]  # (B, n_mels, 2 * n_windows, 8)
        patches = patches.permute(0, 2, 1, 3).reshape(b * 2 * n_windows, 1, n_mels, self.edge_frames)
        edge = enc.features(patches).flatten(1, 2)  # (B * 2 * n_windows, conv_dim, 2)
        edge = edge.reshape(b, 2, n_windows, edge.shape[1], 2)
        edge = torch.stack([edge[:, 0, :, :, 0], edge[:, 1, :, :, 1]], dim=1)  # (B, 2, n_windows, conv_dim)
        edge = torch.cat([edge, enc.mlp(edge)], dim=-1)
        first, last = edge[:, 0], edge[:, 1]

        total_sum = inner_mean * self.inner + first + last
        peak = torch.maximum(inner_max, torch.maximum(first, last))
        return total_sum / self.n_out + peak


class SceneGraph(nn.Module):
    """``audio`` (B, N) float32 -> scene embeddings (B, D), as ``ABTEmbedder.scene_embeddings``."""

    def __init__(self, embedder: ABTEmbedder):
        super().__init__()
        self.logmel = _LogMel(embedder)
        self.encoder = embedder.encoder
        self.window_frames = embedder.window_frames
        self.pooled = bool(embedder.encoder.frame_features_supported)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        mel = self.logmel.raw(audio)
        b, n_mels, frames = mel.shape
        width = self.window_frames
        if self.pooled:  # AudioNTT: the whole clip, padded with silence to one window if shorter
            mel = self.logmel.pad_silence(mel, torch.sym_max(width - frames, 0))
            return self.encoder(self.logmel.normalize(mel).unsqueeze(1)).float()
        n_chunks = (frames + width - 1) // width  # ViT: consecutive windows, the last one padded
        mel = self.logmel.pad_silence(mel, n_chunks * width - frames)
        chunks = mel.reshape(b, n_mels, n_chunks, width).permute(0, 2, 1, 3)
        cls = self.encoder(self.logmel.normalize(chunks.reshape(b * n_chunks, 1, n_mels, width))).float()
        return cls.reshape(b, n_chunks, cls.shape[-1]).mean(dim=1)


class TimestampGraph(nn.Module):
    """``audio`` (B, N) float32 -> ((B, T, D) embeddings, (B, T) timestamps in ms), faithful mode."""

    def __init__(self, embedder: ABTEmbedder):
        super().__init__()
        self.logmel = _LogMel(embedder)
        self.encoder = embedder.encoder
        self.window_frames = embedder.window_frames
        self.hop_frames = embedder.hop_frames
        self.hop_samples = embedder.hop_samples
        self.sample_rate = embedder.sample_rate
        fe = embedder.config.frontend
        self.left = (self.window_frames // 2) * fe.hop_length
        self.right = (self.window_frames - self.window_frames // 2) * fe.hop_length
        self.reuse = (
            _NttWindows(embedder.encoder, self.window_frames, self.hop_frames)
            if embedder.encoder.exact_window_reuse
            else None
        )

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n_samples = audio.shape
        n_ts = (n_samples - 1) // self.hop_samples + 1
        # Silence each side: window k is frames [k * hop, k * hop + width), timestamp k at its centre.
        x = self.logmel.normalize(self.logmel.raw(F.pad(audio, (self.left, self.right))))
        n_mels = x.shape[1]
        if self.reuse is not None:
            emb = self.reuse(x.unsqueeze(1), n_ts)
        else:
            starts = torch.arange(n_ts, device=audio.device) * self.hop_frames
            at = starts[:, None] + torch.arange(self.window_frames, device=audio.device)
            windows = x[:, :, at].permute(0, 2, 1, 3).reshape(b * n_ts, 1, n_mels, self.window_frames)
            emb = self.encoder(windows).float()
            emb = emb.reshape(b, n_ts, emb.shape[-1])
        k = torch.arange(n_ts, device=audio.device, dtype=torch.float64)
        ts = (k * self.hop_samples * 1000.0 / self.sample_rate).float()  # as ABTEmbedder.timestamps_ms
        return emb, ts.expand(b, n_ts)


# ---- export -------------------------------------------------------------------------------------


def _require(module: str, purpose: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise OnnxExportError(
            f"{purpose} needs the '{module}' package: pip install 'hear-abt[onnx]' "
            "(onnx, onnxscript and onnxruntime)"
        )


def _metadata(embedder: ABTEmbedder, source: str) -> dict[str, str]:
    """Written into both graphs (``metadata_props``), read back by :class:`OnnxEmbedder`."""
    from . import __version__

    return {
        "hear_abt_version": __version__,
        "hear_abt_source": source,
        "hear_abt_config": embedder.config.to_json(),
        "sample_rate": str(embedder.sample_rate),
        "scene_embedding_size": str(embedder.scene_embedding_size),
        "timestamp_embedding_size": str(embedder.timestamp_embedding_size),
        "timestamp_window_ms": str(TIMESTAMP_WINDOW_MS),
        "timestamp_hop_ms": str(TIMESTAMP_HOP_MS),
        "timestamp_mode": "faithful",
        "input": f"{INPUT_NAME}: float32 (batch, samples) at {embedder.sample_rate} Hz, samples >= 1",
    }


@contextlib.contextmanager
def _size_oblivious() -> Iterator[None]:
    """torch.export without 0/1 size guards (``backed_size_oblivious``, an experimental torch setting).

    Without it, broadcasting and view checks would guard the traced graph on "at least 2 windows"
    (or chunks, or clips), which an ONNX graph cannot express; ONNX ops broadcast at run time, and
    the graphs are checked on 1-sample clips and batches of 1 (``export_onnx(verify=True)``, the tests).
    """
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:  # pragma: no cover - a torch without the setting: export as is
        yield
        return
    if not hasattr(fx_config, "backed_size_oblivious"):  # pragma: no cover
        yield
        return
    with fx_config.patch(backed_size_oblivious=True):
        yield


def _check_dynamic(program: Any, name: str) -> dict[str, str]:
    """Both input dimensions must have stayed symbolic, valid from size 1 (or 0) up without bound.

    Returns {symbol: "batch" / "samples"}, to name the ONNX graph's dimensions.
    """
    try:
        from torch.utils._sympy.numbers import int_oo
    except ImportError:  # pragma: no cover - an older torch: unbounded ranges end at sympy's oo
        from sympy import oo as int_oo

    dims = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.op == "placeholder" and n.name in dims)
    shape = node.meta["val"].shape
    symbols = {}
    for axis, size in zip(("batch", "samples"), shape):
        if not isinstance(size, torch.SymInt):
            raise OnnxExportError(
                f"{name}: torch.export fixed the {axis} size to {size}; the graph would not be dynamic"
            )
        bounds = program.range_constraints.get(size.node.expr)
        if bounds is not None and (bounds.lower > 1 or bounds.upper != int_oo):
            raise OnnxExportError(
                f"{name}: torch.export limited the {axis} size to [{bounds.lower}, {bounds.upper}]"
            )
        symbols[str(size.node.expr)] = axis
    return symbols


def _export_graph(
    module: nn.Module,
    example: torch.Tensor,
    path: Path,
    outputs: Sequence[str],
    metadata: dict[str, str],
    opset: int,
) -> None:
    """torch.export ``module`` with a dynamic (batch, samples) input, convert, check and save it."""
    import onnx

    dynamic = getattr(torch.export.Dim, "DYNAMIC", None)
    if dynamic is None:
        raise OnnxExportError(
            f"ONNX export needs torch >= 2.6 (torch.export.Dim.DYNAMIC); this is {torch.__version__}"
        )
    n_bytes = sum(p.numel() * p.element_size() for p in module.parameters())
    external = n_bytes > _SINGLE_FILE_BYTES
    try:
        with _size_oblivious():
            program = torch.export.export(
                module, (example,), dynamic_shapes={INPUT_NAME: {0: dynamic, 1: dynamic}}, strict=False
            )
            symbols = _check_dynamic(program, path.name)
            onnx_program = torch.onnx.export(
                program,
                input_names=[INPUT_NAME],
                output_names=list(outputs),
                opset_version=opset,
                dynamo=True,
                external_data=external,
                verbose=False,
            )
    except OnnxExportError:
        raise
    except Exception as err:  # the exporter raises many types; say which graph failed
        raise OnnxExportError(f"exporting {path.name} failed: {type(err).__name__}: {err}") from err
    model = onnx_program.model_proto
    _name_dims(model, symbols)
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        f"hear-abt {path.stem}: input '{INPUT_NAME}' float32 (batch, samples) at "
        f"{metadata['sample_rate']} Hz; outputs {', '.join(outputs)}"
    )
    if external:
        onnx.save_model(
            model,
            path,
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=path.name + ".data",
        )
    else:
        onnx.save_model(model, path)
    onnx.checker.check_model(str(path))


def _name_dims(model: Any, symbols: dict[str, str]) -> None:
    """Readable names for the graph's dynamic dimensions: batch, samples and n_timestamps."""
    for value in list(model.graph.input) + list(model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.dim_param:
                continue
            if dim.dim_param in symbols:
                dim.dim_param = symbols[dim.dim_param]
            elif axis == 1 and value.name in TIMESTAMP_OUTPUTS:
                dim.dim_param = "n_timestamps"


def export_onnx(
    weights: str | os.PathLike | ABTEmbedder,
    out_dir: str | os.PathLike,
    *,
    opset: int = ONNX_OPSET,
    verify: bool = True,
) -> dict[str, Path]:
    """Write ``scene.onnx`` and ``timestamps.onnx`` for ``weights`` into ``out_dir``.

    ``weights``: anything ``hear_abt.load_model`` takes (folder, ``.safetensors``, training
    checkpoint, Hub id; errors are its :class:`hear_abt.WeightsError`), or a loaded
    :class:`ABTEmbedder` (left as it is). With ``verify`` (the default), both graphs are run with
    onnxruntime on a 1-sample clip and a batch of two 1.3 s clips and compared with the torch model
    (``PARITY_RTOL``, timestamps exactly); a mismatch is an :class:`OnnxExportError`. The graphs are
    written next to ``out_dir`` first and moved in only once exported and verified, so a failed
    export leaves an earlier export in ``out_dir`` as it was. Returns ``{"scene": path,
    "timestamps": path}``.
    """
    if not isinstance(opset, int) or opset < 17:
        raise OnnxExportError(f"opset must be an int >= 17 (ONNX STFT), got {opset!r}")
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export (torch.onnx's exporter)")
    if verify:
        _require("onnxruntime", "checking the exported graphs (verify=False skips it)")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise OnnxExportError(f"{out} exists and is not a folder; give a folder for the ONNX graphs")
    if isinstance(weights, ABTEmbedder):
        source = f"ABTEmbedder({weights.config.encoder})"
        embedder = weights if _on_cpu(weights) else copy.deepcopy(weights).cpu()
    else:
        from .hear_api import load_model

        source = os.fspath(weights)
        embedder = load_model(weights, family=None)
    was_training = embedder.training
    embedder.eval()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".export-onnx-", dir=out) as tmp:
            staged = _export_both(embedder, Path(tmp), source, opset)
            if verify:
                _verify(embedder, Path(tmp))
            return _move_in(staged, out)
    finally:
        embedder.train(was_training)


def _on_cpu(embedder: ABTEmbedder) -> bool:
    return all(t.device.type == "cpu" for t in list(embedder.parameters()) + list(embedder.buffers()))


def _export_both(embedder: ABTEmbedder, folder: Path, source: str, opset: int) -> dict[str, Path]:
    metadata = _metadata(embedder, source)
    # Example input: 2 clips of a length that is no multiple of any hop (no size is special).
    example = torch.zeros(2, int(2.5 * embedder.sample_rate) + 123)
    paths = {"scene": folder / SCENE_FILE, "timestamps": folder / TIMESTAMPS_FILE}
    graphs = {
        "scene": (SceneGraph(embedder), SCENE_OUTPUTS),
        "timestamps": (TimestampGraph(embedder), TIMESTAMP_OUTPUTS),
    }
    with torch.no_grad():
        for name, (module, outputs) in graphs.items():
            _export_graph(module.eval(), example, paths[name], outputs, metadata, opset)
    return paths


def _verify(embedder: ABTEmbedder, folder: Path) -> None:
    """The graphs against the torch model on the sizes most likely to break a dynamic graph."""
    cases = [(1, 1), (2, int(_VERIFY_SECONDS * embedder.sample_rate))]
    report = parity_report(embedder, OnnxEmbedder(folder), cases)
    worst = max(report.values())
    if not worst <= PARITY_RTOL:
        raise OnnxExportError(
            f"the exported graphs differ from the torch model by up to {worst:.3g} relative "
            f"(more than {PARITY_RTOL:g}): {report}. Please report this with the checkpoint's config."
        )


def _move_in(staged: dict[str, Path], out: Path) -> dict[str, Path]:
    final = {}
    for name, path in staged.items():
        data = path.with_name(path.name + ".data")
        old_data = out / data.name
        if data.exists():
            os.replace(data, old_data)
        elif old_data.exists():
            old_data.unlink()  # an earlier, larger export's tensors: this graph carries its own
        final[name] = out / path.name
        os.replace(path, final[name])
    return final


# ---- running the graphs -------------------------------------------------------------------------


class OnnxEmbedder:
    """The two exported graphs behind the HEAR API's audio check; results are numpy float32 arrays.

    ``OnnxEmbedder(out_dir)`` opens ``scene.onnx`` (its metadata gives ``sample_rate``,
    ``scene_embedding_size``, ``timestamp_embedding_size``) and ``timestamps.onnx`` when first used.
    Audio goes through ``hear_abt.hear_api.check_audio`` first, so bad input is the same
    :class:`hear_abt.AudioInputError` the HEAR API raises. Clips are fed ``budget_samples`` samples'
    worth at a time (at least one clip), which bounds the graphs' memory for large batches.
    ``providers`` and ``threads`` (intra-op threads) go to onnxruntime.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        budget_samples: int = 16 * 16_000,
    ):
        _require("onnxruntime", "running the ONNX graphs")
        self.folder = Path(out_dir).expanduser()
        self.paths = {"scene": self.folder / SCENE_FILE, "timestamps": self.folder / TIMESTAMPS_FILE}
        missing = [str(p) for p in self.paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"no exported ONNX graph at {', '.join(missing)}; run `hear-abt export-onnx WEIGHTS {self.folder}`"
            )
        if not isinstance(budget_samples, int) or budget_samples < 1:
            raise ValueError(f"budget_samples must be a positive int, got {budget_samples!r}")
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.threads = threads
        self.budget_samples = budget_samples
        self._sessions: dict[str, Any] = {}
        meta = self._session("scene").get_modelmeta().custom_metadata_map
        if "scene_embedding_size" not in meta:
            raise ValueError(
                f"{self.paths['scene']} is not a graph written by hear-abt export-onnx (no metadata)"
            )
        self.metadata = dict(meta)
        self.sample_rate = int(meta["sample_rate"])
        self.scene_embedding_size = int(meta["scene_embedding_size"])
        self.timestamp_embedding_size = int(meta["timestamp_embedding_size"])

    def _session(self, name: str) -> Any:
        if name not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._sessions[name] = ort.InferenceSession(
                str(self.paths[name]), options, providers=self.providers
            )
        return self._sessions[name]

    def _run(self, name: str, audio: Any) -> list[np.ndarray]:
        clips = check_audio(audio).detach().cpu().numpy()
        group = max(1, self.budget_samples // clips.shape[1])
        session = self._session(name)
        parts = [
            session.run(None, {INPUT_NAME: np.ascontiguousarray(clips[i : i + group])})
            for i in range(0, len(clips), group)
        ]
        return [np.concatenate(p) if len(parts) > 1 else p[0] for p in zip(*parts)]

    def scene_embeddings(self, audio: Any) -> np.ndarray:
        """(n_sounds, n_samples) 16 kHz audio -> (n_sounds, scene_embedding_size) float32."""
        return self._run("scene", audio)[0]

    def timestamp_embeddings(self, audio: Any) -> tuple[np.ndarray, np.ndarray]:
        """(n_sounds, n_samples) audio -> ((n_sounds, n_timestamps, D) float32, timestamps in ms)."""
        emb, ts = self._run("timestamps", audio)
        return emb, ts


def load_onnx(out_dir: str | os.PathLike, **kwargs: Any) -> OnnxEmbedder:
    """The graphs ``export_onnx`` wrote into ``out_dir``, ready to run (see :class:`OnnxEmbedder`)."""
    return OnnxEmbedder(out_dir, **kwargs)


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Largest per-clip ``max|got - ref| / max|ref|`` (the parity measure of the tests and benchmark)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        return math.inf
    axes = tuple(range(1, ref.ndim))
    scale = np.maximum(np.abs(ref).max(axis=axes), np.finfo(np.float32).tiny)
    return float((np.abs(got - ref).max(axis=axes) / scale).max())


def parity_report(
    embedder: ABTEmbedder,
    onnx_model: OnnxEmbedder,
    cases: Sequence[tuple[int, int]],
    seed: int = 0,
) -> dict[str, float]:
    """Relative error (:func:`relative_error`) of the ONNX graphs against the HEAR API.

    ``cases``: (batch, n_samples) pairs, each a batch of :func:`parity_audio` clips. Keys
    ``"scene b=2 n=16000"`` and ``"timestamps b=2 n=16000"``; timestamp embeddings count only if the
    timestamps are identical (else the error is inf).
    """
    from .hear_api import get_scene_embeddings, get_timestamp_embeddings

    rng = np.random.default_rng(seed)
    report = {}
    for batch, n_samples in cases:
        audio = parity_audio(rng, batch, n_samples, embedder.sample_rate)
        with torch.no_grad():
            scene = get_scene_embeddings(audio, embedder).numpy()
            emb, ts = get_timestamp_embeddings(audio, embedder)
        o_emb, o_ts = onnx_model.timestamp_embeddings(audio)
        report[f"scene b={batch} n={n_samples}"] = relative_error(onnx_model.scene_embeddings(audio), scene)
        same_ts = o_ts.shape == tuple(ts.shape) and np.array_equal(o_ts, ts.numpy())
        report[f"timestamps b={batch} n={n_samples}"] = (
            relative_error(o_emb, emb.numpy()) if same_ts else math.inf
        )
    return report


def parity_audio(
    rng: np.random.Generator, batch: int, n_samples: int, sample_rate: int = 16_000
) -> np.ndarray:
    """Clips of tones + noise at speech-like levels (float32, in [-1, 1]), as the tests use."""
    t = np.arange(n_samples) / sample_rate
    tones = np.stack([np.sin(2 * np.pi * (220.0 + 170.0 * i) * t) for i in range(batch)])
    return (0.3 * tones + 0.05 * rng.standard_normal((batch, n_samples))).astype(np.float32)


# ---- command line -------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``hear-abt export-onnx``, on ``parser`` (the CLI's subparser), run by :func:`run_from_args`."""
    parser.add_argument("weights", help="checkpoint folder, .safetensors/.pt file or Hub id org/name[@rev]")
    parser.add_argument(
        "out_dir", help="folder to write scene.onnx and timestamps.onnx into (created if needed)"
    )
    parser.add_argument(
        "--opset", type=int, default=ONNX_OPSET, help="ONNX opset, >= 17 (STFT) (default: %(default)s)"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="do not run the graphs with onnxruntime against the torch model after export",
    )
    parser.set_defaults(func=run_from_args)
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(
        argparse.ArgumentParser(
            prog="hear-abt export-onnx",
            description="Write scene.onnx and timestamps.onnx (raw 16 kHz audio in, HEAR embeddings out; "
            "onnxruntime runs them without torch). Needs: pip install 'hear-abt[onnx]'.",
        )
    )


def run_from_args(args: argparse.Namespace) -> int:
    """``hear-abt export-onnx``: export, print the written paths. Export problems exit with "error: ..."
    (as the CLI's other checks do); :class:`hear_abt.WeightsError` is left to the caller."""
    start = time.perf_counter()
    try:
        paths = export_onnx(args.weights, args.out_dir, opset=args.opset, verify=not args.no_verify)
    except OnnxExportError as err:
        raise SystemExit(f"error: {err}") from err
    for path in paths.values():
        print(path)
    verified = "not verified" if args.no_verify else f"verified against torch within {PARITY_RTOL:g}"
    print(f"exported in {time.perf_counter() - start:.1f} s, {verified}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hear_abt.onnx_export WEIGHTS OUT_DIR``: what ``hear-abt export-onnx`` does."""
    from .weights import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return run_from_args(args)
    except WeightsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
