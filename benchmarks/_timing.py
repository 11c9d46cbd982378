"""Wall-clock timing helpers shared by the benchmark scripts.

Every sample is taken as ``sync(); t0 = perf_counter(); fn(); sync(); t1 = perf_counter()``: the device is
synchronised *before* each clock read, so asynchronous (CUDA) work is inside the measured interval.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

__all__ = ["Case", "Stats", "cuda_sync", "environment", "measure", "measure_interleaved", "summarize"]


@dataclass(frozen=True)
class Stats:
    """Summary of timing samples, in milliseconds."""

    mean_ms: float
    median_ms: float
    min_ms: float
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


def cuda_sync() -> Callable[[], None] | None:
    """``torch.cuda.synchronize`` when CUDA is available, else None."""
    return torch.cuda.synchronize if torch.cuda.is_available() else None


def summarize(samples_ms: Sequence[float]) -> Stats:
    """Stats of a non-empty list of samples in milliseconds."""
    if not samples_ms:
        raise ValueError("no samples")
    std = statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0
    return Stats(
        mean_ms=statistics.fmean(samples_ms),
        median_ms=statistics.median(samples_ms),
        min_ms=min(samples_ms),
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

    Interleaving spreads slow drifts (thermal state, background load) evenly over the cases. The warm-up rounds are
    discarded. Returns the samples in milliseconds per case name.
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


def measure(fn: Callable[[], Any], warmup: int, iters: int, sync: Callable[[], None] | None = None) -> Stats:
    """Run ``fn`` ``warmup`` times untimed, then time ``iters`` calls with :func:`time.perf_counter`."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    samples = measure_interleaved([Case("fn", lambda _: fn())], warmup, iters, sync)
    return summarize(samples["fn"])


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _revision() -> str | None:
    """Commit of the checkout holding these scripts, with ``+dirty`` when src/ has uncommitted changes."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True,
                               text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Software and hardware the numbers were taken on."""
    dev = torch.device(device)
    cuda = dev.type == "cuda" and torch.cuda.is_available()
    env: dict[str, Any] = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if cuda else _cpu_model(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "rgtp_revision": _revision(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,  # other load on the machine
    }
    if cuda:
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return env
