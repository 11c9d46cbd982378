"""Stopping on SIGINT (Ctrl-C) and SIGTERM without losing work.

:func:`graceful_stop` turns both signals into a request that a loop checks between steps, so ``rgtp run`` finishes
the current frame, closes its video and JSON lines properly and reports what it did. Elsewhere (evaluations, training,
the benchmark, which write their results as they go and resume) :func:`interrupt_as_exception` turns SIGTERM into
:class:`Interrupted`, as SIGINT already is a :class:`KeyboardInterrupt`, so the CLI exits with one line and the
conventional status 128 + signal number (130, 143).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import FrameType

__all__ = ["Interrupted", "StopRequest", "exit_status", "graceful_stop", "interrupt_as_exception"]


class Interrupted(KeyboardInterrupt):
    """A stop signal other than SIGINT (SIGTERM), raised where it arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopRequest:
    """Set by the first SIGINT / SIGTERM while :func:`graceful_stop` is active."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name


def exit_status(signum: int) -> int:
    """The shell's status for a process stopped by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def _installable() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """While active, SIGINT and SIGTERM only set ``request.signum`` (a second one stops at once)."""
    request = StopRequest()
    if not _installable():  # signal handlers can only be set in the main thread
        yield request
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if request.signum is not None:  # a second signal: stop now
            raise Interrupted(signum) if signum != signal.SIGINT else KeyboardInterrupt
        request.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def interrupt_as_exception() -> Iterator[None]:
    """While active, SIGTERM raises :class:`Interrupted` where it arrives (SIGINT raises KeyboardInterrupt)."""
    if not _installable():
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
