"""Timing and environment helpers shared by the benchmark scripts.

The timing itself is the package's (:mod:`rgtp.timing`): every sample is taken as ``sync(); t0 = perf_counter();
fn(); sync(); t1 = perf_counter()``, the device synchronised *before* each clock read. This module adds what the
scripts record with their figures: the software, the hardware and the revision they ran.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any

import torch

from rgtp.timing import Case, Stats, device_sync, measure, measure_interleaved, summarize

__all__ = ["Case", "Stats", "cuda_sync", "environment", "measure", "measure_interleaved", "summarize"]


def cuda_sync() -> Any:
    """``torch.cuda.synchronize`` when CUDA is available, else None."""
    return device_sync("cuda") if torch.cuda.is_available() else None


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
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=root, capture_output=True, text=True, check=True
        )
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
