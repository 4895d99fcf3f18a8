"""The pieces of the training loop that are not the step: how often things happen, and how a run is
asked to stop.

:func:`steps` yields after every step (``training.pretrain`` and ``abt_eval.sweep`` iterate it); a
:class:`Cadence` says when logging, checkpoints and images are due, by steps or by wall-clock minutes;
:class:`StopSignals` turns SIGTERM/SIGUSR1/SIGINT (a scheduler's preemption, SLURM's ``--signal``,
Ctrl-C) into a request that the loop honours at the end of the current step.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from types import FrameType

from . import engine

# The exit status of a run stopped by a signal after writing its checkpoint: EX_TEMPFAIL, "try again
# later", since the same command line (with --auto-resume) continues it.
EXIT_STOPPED = 75
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")


def steps(state: engine.TrainState) -> Iterator[engine.StepResult]:
    """Train until ``state.total_steps``, yielding each step's result (epochs roll over by themselves)."""
    while state.step < state.total_steps:
        for crops in state.sampler:
            yield engine.train_step(state, crops)
            if state.step >= state.total_steps:
                break


class Cadence:
    """Due every ``every`` steps (0: never by steps) or every ``minutes`` of wall time (0: never by time)."""

    def __init__(self, every: int, minutes: float, clock=time.monotonic):
        self.every = every
        self.seconds = minutes * 60.0
        self._clock = clock
        self._last = clock()

    def due(self, step: int) -> bool:
        """Whether ``step`` is due; being due restarts the clock."""
        now = self._clock()
        hit = (self.every > 0 and step % self.every == 0) or (
            self.seconds > 0 and now - self._last >= self.seconds
        )
        if hit:
            self._last = now
        return hit


class StopSignals:
    """While active, SIGTERM, SIGUSR1 and SIGINT ask the run to stop at the end of the current step.

    A second SIGINT (Ctrl-C twice) stops at once, with a KeyboardInterrupt. Outside the main thread
    (where Python cannot install handlers) it does nothing.
    """

    def __init__(self) -> None:
        self.received: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def number(self) -> int:
        """The received signal's number, 0 if none: what ranks share to agree on stopping."""
        return int(getattr(signal, self.received)) if self.received else 0

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT" and self.received == "SIGINT":
            raise KeyboardInterrupt
        if self.received is None:
            self.received = name

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                if hasattr(signal, name):
                    signum = getattr(signal, name)
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
