"""The hear-abt checkpoint format: writing it, reading it, checking it. No Hub, no network.

A released checkpoint is a Hub-style folder::

    config.json          ModelConfig fields + "weights_sha256" of the weights file
                         + "config_sha256" of the config fields (canonical JSON, see config_sha256)
    model.safetensors    encoder tensors; its header metadata also carries the config

A lone ``.safetensors`` file (its metadata carries the config) and a training checkpoint (``.pt``,
``.pth``, ``.ckpt``; keys ``format``, ``model_config``, ``encoder``) are read too.

Reading is strict and never unpickles anything: weights are safetensors, and training checkpoints are
read with ``torch.load(weights_only=True)``. Before any model is built, the config is validated (every
field's type and range, the encoder dry-built on the ``meta`` device) and every tensor is checked
against that encoder (:func:`check_state_dict`): no missing or unexpected name, the right shape, a
floating dtype where the encoder has floating parameters (int64/bool weights are refused), and finite
values. Integrity: the weights' sha256 and the config's sha256 are both checked; folders written before
``config_sha256`` existed are checked against the config the (checksummed) weights file carries.

Where weights come from (a path or a Hub id) is :mod:`hear_abt.weights`' job; the Hub is :mod:`hear_abt.hub`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .config import ModelConfig
from .fileio import atomic_write_bytes

WEIGHTS_SHA_KEY = "weights_sha256"
CONFIG_SHA_KEY = "config_sha256"

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SAFETENSORS_CONFIG_KEY = "hear_abt_config"
TRAINING_CHECKPOINT_FORMAT = "hear-abt-training"

# The environment variable naming the weights a bare load_model() loads (read by
# hear_abt.hub.default_weights_source); here because HOW_TO_GET_WEIGHTS, the advice every weights error
# ends with, names it.
WEIGHTS_ENV = "HEAR_ABT_WEIGHTS"
HOW_TO_GET_WEIGHTS = (
    "Produce weights with `python -m training.pretrain ...` then `python -m training.export RUN_DIR OUT_DIR` "
    "(or run `python -m training.demo` for a tiny CPU model), and pass the folder to load_model() or set "
    f"{WEIGHTS_ENV}=/path/to/folder (a folder, a .safetensors or training checkpoint file, or a Hub id org/name[@revision])."
)


class WeightsError(RuntimeError):
    """Weights could not be found, downloaded, verified or matched to the model."""


@dataclass
class Checkpoint:
    """A checkpoint's validated config, its tensors (checked by :func:`check_state_dict` when loaded
    through :func:`hear_abt.weights.load_weights`) and where it came from."""

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    source: str


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def config_sha256(fields: dict) -> str:
    """sha256 of a config's fields (without the two checksums) as canonical JSON (sorted keys, compact)."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_pretrained(
    folder: str | os.PathLike, config: ModelConfig, state_dict: dict[str, torch.Tensor]
) -> Path:
    """Write a Hub-style checkpoint folder (config.json + model.safetensors), both checksummed."""
    folder = Path(folder).resolve()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save_safetensors_bytes(tensors, metadata={SAFETENSORS_CONFIG_KEY: config.to_json()})
    atomic_write_bytes(folder / WEIGHTS_NAME, blob)
    fields = config.to_dict()
    meta = {
        **fields,
        WEIGHTS_SHA_KEY: hashlib.sha256(blob).hexdigest(),
        CONFIG_SHA_KEY: config_sha256(fields),
    }
    atomic_write_bytes(folder / CONFIG_NAME, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def _parse_config(data: object, where: str) -> tuple[ModelConfig, str | None]:
    """Validate a config (type and range of every field) and check its own checksum if it has one."""
    if not isinstance(data, dict):
        raise WeightsError(
            f"invalid hear-abt config in {where}: expected a JSON object, got {type(data).__name__}"
        )
    fields = dict(data)
    sha = fields.pop(WEIGHTS_SHA_KEY, None)
    expected_config_sha = fields.pop(CONFIG_SHA_KEY, None)
    try:
        config = ModelConfig.from_dict(fields)
    except (ValueError, TypeError, KeyError) as err:
        raise WeightsError(f"invalid hear-abt config in {where}: {err}") from err
    if expected_config_sha is not None:
        try:
            actual = config_sha256(fields)
        except ValueError:  # NaN/Inf cannot be canonical JSON; from_dict refuses them anyway
            actual = None
        if actual != expected_config_sha:
            raise WeightsError(
                f"{where} does not match its {CONFIG_SHA_KEY}: the config was edited or corrupted after "
                "export. Restore the original file (for a Hub download: delete the cached snapshot and retry)."
            )
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
        raise WeightsError(
            f"invalid hear-abt config in {where}: {WEIGHTS_SHA_KEY} is not a sha256 hex digest"
        )
    return config, sha


def check_state_dict(config: ModelConfig, state_dict: object, source: str) -> None:
    """Check tensors against the encoder ``config`` describes, before anything is allocated for it.

    Against the encoder's ``meta``-device state_dict (:meth:`ModelConfig.meta_state_dict`, no memory),
    every tensor must exist there with the same shape, be floating point where the encoder's is (int64
    or bool weights are refused), have its exact dtype otherwise (BatchNorm's int64 counters), and
    hold only finite values.
    """
    if not isinstance(state_dict, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state_dict.items()
    ):
        raise WeightsError(f"weights in {source} are not a mapping of tensor names to tensors")
    expected = config.meta_state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        parts = ([f"Missing keys {missing[:8]}"] if missing else []) + (
            [f"Unexpected keys {unexpected[:8]}"] if unexpected else []
        )
        raise WeightsError(
            f"weights in {source} do not fit the {config.encoder!r} encoder its config describes: "
            + "; ".join(parts)
        )
    for name, want in expected.items():
        got = state_dict[name]
        if tuple(got.shape) != tuple(want.shape):
            raise WeightsError(
                f"weights in {source} do not fit the {config.encoder!r} encoder: size mismatch for {name}: "
                f"the file has {tuple(got.shape)}, the config's encoder needs {tuple(want.shape)}"
            )
        if want.dtype.is_floating_point:
            if not got.dtype.is_floating_point:
                raise WeightsError(
                    f"weights in {source}: tensor {name} is {got.dtype}, but the encoder needs floating point "
                    f"({want.dtype}): the file is corrupt or was not written by hear-abt"
                )
            if not bool(torch.isfinite(got).all()):
                bad = int((~torch.isfinite(got)).sum())
                raise WeightsError(
                    f"weights in {source}: tensor {name} holds {bad} NaN/Inf value(s): the model diverged "
                    "or the file is corrupt; use an earlier checkpoint"
                )
        elif got.dtype != want.dtype:
            raise WeightsError(f"weights in {source}: tensor {name} is {got.dtype}, expected {want.dtype}")


def _read_tensors(path: Path, expected_sha256: str | None) -> tuple[dict[str, torch.Tensor], dict]:
    blob = path.read_bytes()
    if expected_sha256 is not None and hashlib.sha256(blob).hexdigest() != expected_sha256:
        raise WeightsError(
            f"{path} does not match the sha256 recorded in its config.json: the file is corrupt or "
            "truncated (an interrupted download?). Delete it (for a Hub download: the cached snapshot) and retry."
        )
    try:
        tensors = load_safetensors_bytes(blob)
        metadata = _safetensors_metadata(blob)
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise WeightsError(
            f"{path} is not a readable safetensors file ({err}); it may be truncated or corrupt."
        ) from err
    return tensors, metadata


def _safetensors_metadata(blob: bytes) -> dict:
    header_len = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + header_len])
    return header.get("__metadata__", {}) or {}


def read_folder(folder: Path, source: str) -> Checkpoint:
    """Read (not yet :func:`check_state_dict`) a checkpoint folder: config.json + model.safetensors."""
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for p in (config_path, weights_path):
        if not p.is_file():
            raise WeightsError(
                f"{folder} is not a hear-abt checkpoint folder: {p.name} is missing. {HOW_TO_GET_WEIGHTS}"
            )
    data = _read_json(config_path)
    config, sha = _parse_config(data, str(config_path))
    tensors, metadata = _read_tensors(weights_path, sha)
    if sha is not None and SAFETENSORS_CONFIG_KEY in metadata:
        # The weights file is checksummed and carries the config it was saved with: config.json must
        # say the same (this also covers folders written before config_sha256 existed).
        embedded = _embedded_config(metadata, weights_path)
        if embedded != config:
            raise WeightsError(
                f"{config_path} differs from the config stored inside {weights_path.name} (checksummed): "
                "config.json was edited or corrupted after export. Restore the original file."
            )
    return Checkpoint(config, tensors, source)


def _embedded_config(metadata: dict, path: Path) -> ModelConfig:
    try:
        data = json.loads(metadata[SAFETENSORS_CONFIG_KEY])
    except (TypeError, json.JSONDecodeError) as err:
        raise WeightsError(
            f"{path}: the hear-abt config in its safetensors metadata is not valid JSON ({err})."
        ) from err
    return _parse_config(data, f"the metadata of {path}")[0]


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path} is not valid JSON ({err}).") from err


def read_safetensors_file(path: Path) -> Checkpoint:
    """Read a lone .safetensors file; its config comes from its metadata, else a config.json beside it."""
    tensors, metadata = _read_tensors(path, None)
    if SAFETENSORS_CONFIG_KEY in metadata:
        config = _embedded_config(metadata, path)
    elif (path.parent / CONFIG_NAME).is_file():
        config, _ = _parse_config(_read_json(path.parent / CONFIG_NAME), str(path.parent / CONFIG_NAME))
    else:
        raise WeightsError(f"{path} carries no hear-abt config (no metadata, no config.json beside it).")
    return Checkpoint(config, tensors, str(path))


def read_training_encoder(path: Path) -> Checkpoint:
    """Read the encoder and config of a training checkpoint (the rest of it is training's business)."""
    try:
        # weights_only: a checkpoint is tensors and plain containers; nothing gets unpickled into code.
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt/unsafe files
        raise WeightsError(f"cannot read training checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or state.get("format") != TRAINING_CHECKPOINT_FORMAT:
        raise WeightsError(
            f"{path} is not a hear-abt training checkpoint (no format={TRAINING_CHECKPOINT_FORMAT!r})."
        )
    missing = [key for key in ("model_config", "encoder") if key not in state]
    if missing:
        raise WeightsError(f"training checkpoint {path} lacks {missing}: it is incomplete or corrupt.")
    config, _ = _parse_config(state["model_config"], str(path))
    return Checkpoint(config, state["encoder"], str(path))
