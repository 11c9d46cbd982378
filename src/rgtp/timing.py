"""Wall-clock timing: one way to take a sample, used by the CLI, the benchmark and the scripts in ``benchmarks/``.

Every sample is ``sync(); t0 = perf_counter(); fn(); sync(); t1 = perf_counter()``: the device is synchronised
*before* each clock read, so asynchronous (CUDA) work is inside the measured interval and work queued before the
sample is not. :func:`measure` takes warm-up runs first and summarises (median, min, max, mean, std);
:func:`measure_interleaved` times several cases round-robin, so that slow drifts of a shared machine hit them alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Case", "Stats", "device_sync", "measure", "measure_interleaved", "stopwatch", "summarize"]


@dataclass(frozen=True)
class Stats:
    """Summary of timing samples, in milliseconds."""

    median_ms: float
    min_ms: float
    max_ms: float
    mean_ms: float
    std_ms: float  # sample standard deviation (0 for a single sample)
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass
class Case:
    """One timed piece of work for :func:`measure_interleaved`.

    ``setup`` (untimed) runs before every sample and its return value is passed to ``fn``; ``fn`` runs ``repeat``
    times between the two clock reads and the sample is the elapsed time divided by ``repeat``.
    """

    name: str
    fn: Callable[[Any], Any]
    setup: Callable[[], Any] | None = None
    repeat: int = 1


def device_sync(device: torch.device | str | None = None) -> Callable[[], None] | None:
    """The function that waits for ``device``'s queued work (CUDA, MPS), or None for the CPU (and for None when no
    accelerator is available)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.synchronize
    if kind == "mps":
        return torch.mps.synchronize
    return None


@contextmanager
def stopwatch(device: torch.device | str | None = "cpu") -> Iterator[list[float]]:
    """Time the enclosed code in seconds, synchronising ``device`` before both clock reads::

    with stopwatch(device) as elapsed:
        work()
    seconds = elapsed[0]
    """
    sync = device_sync(device)
    elapsed: list[float] = []
    if sync is not None:
        sync()
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        if sync is not None:
            sync()
        elapsed.append(time.perf_counter() - start)


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Stats of a non-empty list of samples in milliseconds."""
    if not samples_ms:
        raise ValueError("no samples")
    std = statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0
    return Stats(
        median_ms=statistics.median(samples_ms),
        min_ms=min(samples_ms),
        max_ms=max(samples_ms),
        mean_ms=statistics.fmean(samples_ms),
        std_ms=std,
        n=len(samples_ms),
    )


def _sample(case: Case, sync: Callable[[], None] | None) -> float:
    arg = case.setup() if case.setup is not None else None
    if sync is not None:
        sync()  # pending work of the setup must not land in the timed interval
    t0 = time.perf_counter()
    for _ in range(case.repeat):
        case.fn(arg)
    if sync is not None:
        sync()  # before reading the clock
    return (time.perf_counter() - t0) * 1e3 / case.repeat


def measure_interleaved(
    cases: Sequence[Case], warmup: int, iters: int, sync: Callable[[], None] | None = None
) -> dict[str, list[float]]:
    """Time several cases round-robin: each of ``warmup + iters`` rounds times every case once, in order.

    The warm-up rounds are discarded. Returns the samples in milliseconds per case name.
    """
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"case names must be unique: {names}")
    samples: dict[str, list[float]] = {c.name: [] for c in cases}
    for rnd in range(warmup + iters):
        for case in cases:
            ms = _sample(case, sync)
            if rnd >= warmup:
                samples[case.name].append(ms)
    return samples


def measure(
    fn: Callable[[], Any],
    warmup: int = 1,
    iters: int = 5,
    device: torch.device | str | None = "cpu",
    setup: Callable[[], Any] | None = None,
) -> Stats:
    """Run ``fn`` ``warmup`` times untimed, then time ``iters`` calls (``setup``, untimed, before each; its result is
    passed to ``fn`` when given)."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    call = (lambda arg: fn(arg)) if setup is not None else (lambda _: fn())
    samples = measure_interleaved([Case("fn", call, setup)], warmup, iters, device_sync(device))
    return summarize(samples["fn"])
