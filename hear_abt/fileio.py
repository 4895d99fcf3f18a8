"""Atomic file writes: readers never see a half-written file, and an interrupted write (Ctrl-C,
SIGKILL, a full disk) leaves the previous file intact. Every output of the project goes through here."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import queue
import stat
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Union

PathLike = Union[str, "os.PathLike[str]"]

# "No space left on device" and "Disk quota exceeded": both mean the write cannot finish here.
DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if e is not None)


class DiskFullError(OSError):
    """The disk (or quota) filled up during an atomic write; ``errno`` is the original (ENOSPC).

    The temporary file is gone and the previous file at ``filename`` is intact.
    """

    def __init__(self, path: PathLike, err: OSError):
        reason = "No space left on device" if err.errno == errno.ENOSPC else (err.strerror or str(err))
        message = (
            f"{reason} while writing {os.fspath(path)}: the disk is full. Nothing was written there (the "
            "previous file, if any, is intact); free some disk space, or write elsewhere, and retry."
        )
        super().__init__(err.errno, message)
        self.filename = os.fspath(path)

    def __str__(self) -> str:
        return self.strerror


def is_disk_full(err: BaseException) -> bool:
    """True for an OSError that says the disk or the quota is full."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


_TEMP_COUNTER = itertools.count()
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create_temporary(path: Path) -> tuple[int, str]:
    """(fd, name) of a new file ``.NAME.<unique>.tmp`` beside ``path``, created as an ordinary open()
    creates a file (mode 0666 less the umask), its folder made if missing.

    Cheaper than ``tempfile.mkstemp`` per file (no random name drawn from ``random``, no chmod, no
    mkdir unless the folder is missing), which matters when one run writes thousands of small files.
    The name holds the process id and a per-process counter; O_EXCL makes a clash (a leftover of an
    earlier process with the same id) an error, retried with a random token.
    """
    stem = f".{path.name}.{os.getpid()}-"
    for attempt in range(100):
        token = next(_TEMP_COUNTER) if attempt == 0 else f"{next(_TEMP_COUNTER)}-{os.urandom(4).hex()}"
        tmp = os.path.join(path.parent, f"{stem}{token}.tmp")
        try:
            return os.open(tmp, _TEMP_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            if path.parent.is_dir():
                raise
            path.parent.mkdir(parents=True, exist_ok=True)
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def _keep_mode_of(path: Path, fd: int, tmp: str) -> None:
    """Give the temporary file ``fd`` the mode of the file it will replace, if there is one."""
    try:
        old_mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if old_mode != stat.S_IMODE(os.fstat(fd).st_mode):
        os.chmod(tmp, old_mode)


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "wb", *, fsync: bool = True) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). On any exception the temporary file is removed; a
    full disk (ENOSPC/EDQUOT, from the writes, the flush or the fsync) is re-raised as
    :class:`DiskFullError`, an OSError with the same errno whose message names ``path``.
    ``fsync=False``: renamed without fsync (still whole or absent for readers and after a kill); the
    caller makes it durable later, e.g. with a :class:`FileSyncer`, before anything refers to it.
    The file gets the mode an ordinary open() would give it, or the mode of the file it replaces.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    try:
        fd, tmp = _create_temporary(path)
    except OSError as err:
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path, err) from err
        raise
    try:
        _keep_mode_of(path, fd, tmp)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            Path(tmp).unlink(missing_ok=True)
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise DiskFullError(path, err) from err
        raise


def _load_syncfs():
    """libc's ``syncfs(fd)`` (Linux), or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        syncfs = libc.syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes, syncfs.restype = [ctypes.c_int], ctypes.c_int
    return syncfs


_SYNCFS = _load_syncfs()


class FileSyncer:
    """Makes many written files durable at once, so that a writer of many small files does not wait
    on the disk for each: on this project's CI disk an fsync costs as much as writing 1 MB, and on
    this VM the two fsyncs of an audio file's arrays took 1.3 ms of CPU, more than a tenth of
    embedding a 5-s clip.

    :meth:`add` records a written (renamed) file; :meth:`wait` returns once every recorded file and
    the folders holding them are durable, raising an OSError that names the file or folder when one
    cannot be made so (e.g. EIO, or a file removed meanwhile). Write whatever refers to the files (an
    index) only after :meth:`wait`. Get one from :func:`file_syncer`.
    """

    def add(self, path: PathLike) -> None:
        raise NotImplementedError

    def wait(self) -> None:
        raise NotImplementedError


def file_syncer() -> FileSyncer:
    """The cheapest :class:`FileSyncer` here: :class:`SyncfsSyncer` on Linux, else :class:`FsyncSyncer`."""
    return SyncfsSyncer(_SYNCFS) if _SYNCFS is not None else FsyncSyncer()


class SyncfsSyncer(FileSyncer):
    """One ``syncfs`` per file system at :meth:`wait` (Linux). The folders' file descriptors are opened
    at their first file, so that writeback errors from then on are reported (Linux >= 5.8)."""

    def __init__(self, syncfs: Callable[[int], int]) -> None:
        self._syncfs = syncfs
        self._files: list[Path] = []  # checked to still exist at wait()
        self._folder_fds: dict[Path, int] = {}  # one descriptor per folder

    def add(self, path: PathLike) -> None:
        path = Path(path)
        if path.parent not in self._folder_fds:
            self._folder_fds[path.parent] = os.open(path.parent, os.O_RDONLY)
        self._files.append(path)

    def wait(self) -> None:
        files, self._files = self._files, []
        fds, self._folder_fds = self._folder_fds, {}
        try:
            for path in files:  # syncfs cannot tell that one is gone; the index must not list it
                if not path.exists():
                    raise FileNotFoundError(
                        errno.ENOENT, f"making {path} durable: it is gone (removed while being written?)"
                    )
            devices: set[int] = set()
            for folder, fd in fds.items():  # in opening order: the first of a file system saw the most
                device = os.fstat(fd).st_dev
                if device in devices:
                    continue
                devices.add(device)
                if self._syncfs(fd) != 0:
                    code = ctypes.get_errno()
                    raise OSError(code, f"making the files in {folder} durable (syncfs): {os.strerror(code)}")
        finally:
            for fd in fds.values():
                os.close(fd)

    def __del__(self) -> None:  # a run abandoned before wait() (Ctrl-C): its folders' descriptors
        for fd in getattr(self, "_folder_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)


class FsyncSyncer(FileSyncer):
    """Each file fsynced by a background thread as it comes, then each folder at :meth:`wait` (where
    there is no ``syncfs``)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._folders: set[Path] = set()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def add(self, path: PathLike) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="hear-abt-fsync", daemon=True)
            self._thread.start()
        self._queue.put(Path(path))

    def _run(self) -> None:
        while (path := self._queue.get()) is not None:
            if self._error is not None:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self._folders.add(path.parent)
            except OSError as err:
                self._error = OSError(err.errno, f"making {path} durable (fsync): {err.strerror}")

    def wait(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        for folder in sorted(self._folders):  # the renames themselves
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._folders.clear()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)
