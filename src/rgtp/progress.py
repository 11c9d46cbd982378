"""Progress bars for long runs: tqdm when it is installed and wanted, otherwise a silent stand-in."""

from __future__ import annotations

from typing import Any

__all__ = ["progress_bar"]


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int | None, desc: str, enabled: bool = True, unit: str = "frame") -> Any:
    """A bar with ``update(n)`` and ``close()``: tqdm, or a no-op without tqdm or when ``enabled`` is false."""
    if enabled:
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover - tqdm comes with the video extra
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return _NoProgress()
