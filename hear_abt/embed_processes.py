"""Dataset embedding spread over worker processes (``hear-abt embed --processes N``).

Why processes: on a CPU, a short clip through the model is hundreds of small ops, and one process's
threads keep about 1.8 of 2 cores busy (its model threads wait on each other and on the GIL a quarter
of the time). Two processes, each with one torch thread, fill the cores (benchmarks/README.md; with
the paper-size model, whose large convolutions already fill them, they gain nothing on 2 cores).

How: the main process cuts the input into parts of consecutive short files (up to
``max_queued_seconds / (2 * processes)`` of audio and ``4 * batch_size`` files) and sends each part to
a worker, at most two parts per worker in flight. A worker decodes, checks, batches and embeds its part
with the same code as one process (:class:`hear_abt.dataset_embed._Run`, one decoder thread, one torch
thread) and sends back each file's embeddings or its failure. The main process writes the answers in
input order through the same writer methods, and streams long files itself (from their header, or
when a worker finds one longer than its header said), so output files, numbering, failures and
atomicity are those of one process.

Workers are forked (Linux; elsewhere spawned) and each runs with one torch thread: OpenMP's thread pool
does not survive ``fork``, and a forked child that starts more than one OpenMP thread after the parent
used them hangs (seen here with torch 2.14 and libgomp); torch's DataLoader workers set one thread for
the same reason. A worker ignores Ctrl-C (the main process stops the pool) and dies with the main
process, also when that is killed with SIGKILL (Linux: ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional, Union

import torch

from .dataset_embed import ClipResult, Progress, _Item, _Run

__all__ = ["ProcessRun", "WorkerDied", "default_processes", "start_method"]


MAX_DEFAULT_PROCESSES = 8  # more would cut the parts (and so the batches) of 1200 s of audio too small


def default_processes(device: torch.device) -> int:
    """Worker processes for ``hear-abt embed`` by default: one per torch CPU thread (at most
    :data:`MAX_DEFAULT_PROCESSES`) on a Linux CPU with 2+ threads, where forking is cheap; else 0
    (embedding in this process: a GPU must not be used from forked children, and spawning a process
    costs a second or more of imports)."""
    if torch.device(device).type != "cpu" or not sys.platform.startswith("linux"):
        return 0
    threads = torch.get_num_threads()
    return min(threads, MAX_DEFAULT_PROCESSES) if threads >= 2 else 0


class WorkerDied(RuntimeError):
    """A worker process died (killed, e.g. by the kernel's out-of-memory killer): the run stops."""


_DIED = (
    "a worker process of hear-abt embed died (killed, or out of memory?); the run stopped and wrote no "
    "index: run again with fewer --processes, or --processes 0"
)


def start_method() -> str:
    """How workers start: forked on Linux (cheap, and the model is inherited), spawned elsewhere
    (macOS's system frameworks are not fork-safe; the model is pickled to each worker)."""
    return "fork" if sys.platform.startswith("linux") else "spawn"


@dataclass
class _Outcome:
    """One file's answer from a worker: embedded (``result``), failed (``reason``), or ``long``."""

    result: Optional[ClipResult] = None
    reason: str = ""
    seconds: float = 0.0  # a failure's audio seconds, for the progress bar
    long: bool = False


class _PartRun(_Run):
    """A worker's :class:`_Run` over one part: answers collected in input order instead of written;
    long files left to the main process (their output may not fit in memory)."""

    def run(self, files: Iterable[tuple[Path, float]]) -> list[_Outcome]:
        self.outcomes: list[_Outcome] = []
        super().run(files)
        return self.outcomes

    def _write(self, item: _Item) -> None:
        self.outcomes.append(_Outcome(result=item.result))
        item.result = None

    def _stream(self, item: _Item) -> None:
        self.outcomes.append(_Outcome(long=True))

    def _report(self, item: _Item, seconds: float) -> None:
        self.outcomes.append(_Outcome(reason=item.reason, seconds=seconds))


_worker: dict = {}


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def _init_worker(parent: int, run_args: tuple) -> None:
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    torch.set_num_threads(1)
    _worker["run_args"] = run_args


def _embed_part(files: list[tuple[Path, float]]) -> list[_Outcome]:
    return _PartRun(*_worker["run_args"]).run(files)


class ProcessRun(_Run):
    """The main process: parts to the workers, answers written in input order, long files streamed."""

    def __init__(self, processes: int, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.processes = processes
        self.part_files = 4 * self.batch_size
        self.part_seconds = self.max_queued / (2 * processes)

    def run(self, files: Iterable[tuple[Path, float]]) -> list[tuple[str, str]]:
        run_args = (  # a worker's _PartRun: the writer stands in by its info alone (all _Run reads of it)
            self.model,
            SimpleNamespace(info=self.writer.info),
            torch.device("cpu"),
            self.chunk_seconds,
            self.batch_size,
            min(self.workers, 1),  # one decoder thread
            1,  # one batch at a time
            self.max_batch_samples / self.sr,
            self.part_seconds,
            Progress(),
        )
        context = multiprocessing.get_context(start_method())
        pool = ProcessPoolExecutor(
            self.processes, context, initializer=_init_worker, initargs=(os.getpid(), run_args)
        )
        queue: deque[Union[tuple[Future, list[_Item]], _Item]] = deque()  # in input order
        sent = 0  # parts in the queue
        try:
            for entry in self._parts(files):
                if isinstance(entry, list):
                    entry = pool.submit(_embed_part, [(it.path, it.header_seconds) for it in entry]), entry
                    sent += 1
                queue.append(entry)
                while sent >= 2 * self.processes:  # two parts per worker: one embedding, one waiting
                    sent -= self._answer(queue.popleft())
            while queue:
                self._answer(queue.popleft())
        except BrokenProcessPool as err:  # at submit: the pool broke while no answer was awaited
            raise WorkerDied(_DIED) from err
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return self.failures

    def _parts(self, files: Iterable[tuple[Path, float]]) -> Iterator[Union[list[_Item], _Item]]:
        """Consecutive short files in parts; a file long from its header alone, in its turn."""
        part: list[_Item] = []
        seconds = 0.0
        for index, (path, header) in enumerate(files):
            item = _Item(index, Path(path), header)
            if header * self.sr >= self.limit:
                if part:
                    yield part
                    part, seconds = [], 0.0
                item.state = "long"
                yield item
                continue
            part.append(item)
            seconds += header if header > 0 else self.limit / self.sr
            if len(part) >= self.part_files or seconds >= self.part_seconds:
                yield part
                part, seconds = [], 0.0
        if part:
            yield part

    def _answer(self, entry: Union[tuple[Future, list[_Item]], _Item]) -> int:
        """Write one queue entry's files (waiting for a part's answers); returns the parts answered."""
        if isinstance(entry, _Item):
            self._stream(entry)
            return 0
        future, items = entry
        try:
            outcomes = future.result()
        except BrokenProcessPool as err:
            where = f"{items[0].path}" if len(items) == 1 else f"{items[0].path} ... {items[-1].path}"
            raise WorkerDied(f"{_DIED}; its part held {len(items)} file(s): {where}") from err
        if len(outcomes) != len(items):  # a bug, never a silent shift of answers between files
            raise RuntimeError(f"a worker answered {len(outcomes)} files for a part of {len(items)}")
        for item, outcome in zip(items, outcomes):
            if outcome.long:
                self._stream(item)
            elif outcome.result is not None:
                item.result = outcome.result
                self._write(item)
            else:
                item.reason = outcome.reason
                self._report(item, outcome.seconds)
        return 1
