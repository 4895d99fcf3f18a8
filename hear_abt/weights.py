"""Loading weights from wherever they are: ``load_weights(source) -> Checkpoint``.

A source is a checkpoint folder, a ``.safetensors`` or training checkpoint file, or a Hub id
``org/name[@revision]``. Something that exists on disk is always read as a local path (a broken
symlink or unreadable path is a local error, never a Hub request); anything else must be a valid Hub
id. Every checkpoint is checked (:func:`check_state_dict`) before it is returned.

The jobs behind it, each in its own module:

* :mod:`hear_abt.weights_format`: the checkpoint format (save_pretrained, reading folders, .safetensors
  and training .pt files, the config and tensor checks, checksums, :class:`WeightsError`).
* :mod:`hear_abt.hub`: Hub ids, downloads through huggingface_hub, the default weights source
  (``HEAR_ABT_WEIGHTS``, the pinned released weights).

Their public names are importable from here too.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .hub import (
    DEFAULT_HUB_WEIGHTS,
    RELEASED_HUB_WEIGHTS,
    default_weights_source,
    hub_id_problem,
    load_hub,
    parse_hub_id,
    validate_hub_id,
)
from .weights_format import (
    CONFIG_NAME,
    CONFIG_SHA_KEY,
    HOW_TO_GET_WEIGHTS,
    SAFETENSORS_CONFIG_KEY,
    TRAINING_CHECKPOINT_FORMAT,
    WEIGHTS_ENV,
    WEIGHTS_NAME,
    WEIGHTS_SHA_KEY,
    Checkpoint,
    WeightsError,
    check_state_dict,
    config_sha256,
    read_folder,
    read_safetensors_file,
    read_training_encoder,
    save_pretrained,
    sha256_file,
)

__all__ = [
    "CONFIG_NAME",
    "CONFIG_SHA_KEY",
    "DEFAULT_HUB_WEIGHTS",
    "HOW_TO_GET_WEIGHTS",
    "RELEASED_HUB_WEIGHTS",
    "SAFETENSORS_CONFIG_KEY",
    "TRAINING_CHECKPOINT_FORMAT",
    "WEIGHTS_ENV",
    "WEIGHTS_NAME",
    "WEIGHTS_SHA_KEY",
    "Checkpoint",
    "WeightsError",
    "check_state_dict",
    "config_sha256",
    "default_weights_source",
    "hub_id_problem",
    "load_weights",
    "parse_hub_id",
    "save_pretrained",
    "sha256_file",
    "validate_hub_id",
]


def load_weights(source: str | os.PathLike) -> Checkpoint:
    """Read and check a checkpoint from a folder, a ``.safetensors``/training checkpoint file, or a Hub id.

    The config is validated and every tensor checked (:func:`check_state_dict`) before returning.
    """
    checkpoint = _read_checkpoint(source)
    check_state_dict(checkpoint.config, checkpoint.state_dict, checkpoint.source)
    return checkpoint


def _read_checkpoint(source: str | os.PathLike) -> Checkpoint:
    text = os.fspath(source)
    path = Path(text).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except PermissionError as err:
        raise WeightsError(
            f"{path} cannot be read: permission denied ({err}). Check the permissions of it and its folders."
        ) from err
    except (ValueError, OSError):  # an embedded NUL byte, a name too long for the file system, ...
        is_dir = is_file = False
    if is_dir:
        return read_folder(path.resolve(), str(path.resolve()))
    if is_file:
        path = path.resolve()
        if path.suffix == ".safetensors":
            return read_safetensors_file(path)
        if path.suffix in {".pt", ".pth", ".ckpt"}:
            return read_training_encoder(path)
        if path.name == CONFIG_NAME:
            return read_folder(path.parent, str(path.parent))
        raise WeightsError(
            f"{path}: unknown weights file type (expected a folder, .safetensors, .pt or .ckpt)."
        )
    # Something on disk that is neither a file nor a folder is a local path gone wrong, never a Hub id.
    try:
        unreadable = _unreadable_on_disk(path)
    except (ValueError, OSError):
        unreadable = None
    if unreadable is not None:
        raise WeightsError(unreadable)
    problem = hub_id_problem(text)
    if problem is None:
        return load_hub(*parse_hub_id(text), text)
    raise WeightsError(
        f"{text!r} is neither an existing file or folder nor a valid Hub id 'org/name[@revision]': {problem}."
    )


def _unreadable_on_disk(path: Path) -> str | None:
    """Why ``path`` (or one of its parents) is on disk but cannot be read as a file or folder, if so.

    Checks ``path`` and its parents with ``os.path.lexists``, which sees broken symlinks and symlink
    loops that ``exists``/``is_file``/``is_dir`` report as absent.
    """
    for candidate in (path, *path.parents):
        if not os.path.lexists(candidate):
            continue
        if candidate.is_dir() and candidate != path:
            return None  # an ordinary folder in which ``path`` does not exist
        where = str(candidate) if candidate == path else f"{candidate} (in {path})"
        if candidate.is_symlink():
            try:
                os.stat(candidate)
            except OSError as err:
                target = os.readlink(candidate)
                if err.errno == errno.ELOOP:
                    return (
                        f"{where} exists but cannot be read: a symlink loop ({candidate} -> {target}). "
                        "Fix or remove the link, or pass the checkpoint's real path."
                    )
                return (
                    f"{where} exists but cannot be read: broken symlink? ({candidate} -> {target}, "
                    f"which does not exist: {err.strerror}). Fix the link or pass the checkpoint's real path."
                )
        if candidate == path and not candidate.is_symlink():
            return (
                f"{where} exists but cannot be read as a weights file or folder (a FIFO, socket or device?). "
                "Pass a checkpoint folder, a .safetensors or a training checkpoint file."
            )
        if candidate != path:
            return f"{where} exists but is not a folder, so {path} cannot exist. Check the path."
        return f"{where} exists but cannot be read as a file or folder. Check the path."
    return None
