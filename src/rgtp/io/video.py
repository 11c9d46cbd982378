"""Video decoding and encoding with PyAV.

PyAV is an optional dependency (``pip install 'rgtp[video]'``).  This module can
always be imported; :class:`ImportError` with an installation hint is raised only
when a function that needs PyAV is called.

All frames exchanged with this module are RGB ``uint8`` arrays of shape
``(H, W, 3)``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

__all__ = [
    "WRITABLE_SUFFIXES",
    "VideoDecodeError",
    "VideoInfo",
    "VideoWriter",
    "read_clip",
    "read_frames",
    "resize_short_side",
    "short_side_size",
    "video_info",
]

logger = logging.getLogger(__name__)

#: File suffixes (containers) that :class:`VideoWriter` accepts.
WRITABLE_SUFFIXES: tuple[str, ...] = (".mp4", ".mkv", ".avi")

_INSTALL_HINT = "PyAV is required for video I/O: install rgtp[video] (pip install 'rgtp[video]')"


class VideoDecodeError(ValueError):
    """Raised when a file exists but cannot be decoded as a video.

    The message always contains the offending path and the underlying reason.
    """


@dataclass(frozen=True)
class VideoInfo:
    """Basic properties of the first video stream of a file.

    Attributes:
        width: Frame width in pixels.
        height: Frame height in pixels.
        fps: Average frame rate in frames per second (0.0 if unknown).
        num_frames: Number of frames reported by the container, or ``None`` if
            the container does not report it.
    """

    width: int
    height: int
    fps: float
    num_frames: int | None


def _import_av() -> Any:
    """Import PyAV lazily, raising a helpful :class:`ImportError` if it is missing."""
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from exc
    return av


def _check_readable(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as a :class:`Path`, raising :class:`FileNotFoundError` if absent."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"video file not found: {p}")
    if p.is_dir():
        raise IsADirectoryError(f"expected a video file but got a directory: {p}")
    return p


def _open_for_reading(av: Any, path: Path) -> Any:
    """Open ``path`` with PyAV, translating FFmpeg failures into :class:`VideoDecodeError`."""
    try:
        container = av.open(str(path), mode="r")
    except FileNotFoundError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoDecodeError(f"cannot open video {path}: {exc}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"cannot decode video {path}: the file contains no video stream")
    return container


def _stream_fps(stream: Any) -> float:
    """Best available frame-rate estimate of a PyAV video stream (0.0 if unknown)."""
    for attr in ("average_rate", "guessed_rate", "base_rate"):
        rate = getattr(stream, attr, None)
        if rate:
            value = float(rate)
            if math.isfinite(value) and value > 0:
                return value
    return 0.0


def video_info(path: str | os.PathLike[str]) -> VideoInfo:
    """Read the size, frame rate and frame count of a video without decoding it.

    Args:
        path: Path to a video file.

    Returns:
        A :class:`VideoInfo` describing the first video stream.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        VideoDecodeError: If the file is not a readable video.
        ImportError: If PyAV is not installed.
    """
    av = _import_av()
    p = _check_readable(path)
    container = _open_for_reading(av, p)
    try:
        stream = container.streams.video[0]
        width = int(stream.codec_context.width or 0)
        height = int(stream.codec_context.height or 0)
        if width <= 0 or height <= 0:
            raise VideoDecodeError(f"cannot decode video {p}: invalid frame size {width}x{height}")
        frames = int(stream.frames or 0)
        return VideoInfo(
            width=width,
            height=height,
            fps=_stream_fps(stream),
            num_frames=frames if frames > 0 else None,
        )
    finally:
        container.close()


def read_frames(
    path: str | os.PathLike[str], max_frames: int | None = None, strict: bool = False
) -> Iterator[np.ndarray]:
    """Decode the first video stream of a file frame by frame.

    The existence of the file and ``max_frames`` are checked eagerly (when this
    function is called); decoding errors are raised while iterating. A stream
    that ends before the frame count (or duration) its container announces is
    damaged: a warning names how many frames decoded, or with ``strict`` a
    :class:`VideoDecodeError` is raised after the last good frame.

    Args:
        path: Path to a video file.
        max_frames: Stop after this many frames (``None`` decodes all frames).
        strict: Fail on a stream shorter than announced instead of warning.

    Yields:
        RGB frames as ``uint8`` arrays of shape ``(H, W, 3)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If ``max_frames`` is negative.
        VideoDecodeError: If the file cannot be decoded or yields no frame.
        ImportError: If PyAV is not installed.
    """
    av = _import_av()
    p = _check_readable(path)
    if max_frames is not None and max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
    return _decode(av, p, max_frames, strict)


def _decode(av: Any, path: Path, max_frames: int | None, strict: bool = False) -> Iterator[np.ndarray]:
    """Generator behind :func:`read_frames`."""
    if max_frames == 0:
        return
    container = _open_for_reading(av, path)
    count, expected = 0, None
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        expected = _announced_frames(container, stream)
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
                array = frame.to_ndarray(format="rgb24")
            except StopIteration:
                break
            except (av.error.FFmpegError, ValueError, OSError) as exc:
                raise VideoDecodeError(f"cannot decode video {path} at frame {count}: {exc}") from exc
            count += 1
            yield array
            if max_frames is not None and count >= max_frames:
                return
    finally:
        container.close()
    if count == 0:
        raise VideoDecodeError(f"cannot decode video {path}: no decodable frames")
    if expected is not None and count < expected - 1:  # one frame of slack: durations round
        message = f"{path}: the stream ends at frame {count} of the {expected} its container announces (damaged?)"
        if strict:
            raise VideoDecodeError(message)
        logger.warning("%s; the frames before it are used", message)
    logger.debug("decoded %d frames from %s", count, path)


def _announced_frames(container: Any, stream: Any) -> int | None:
    """The frame count a container announces for a stream: its count, else duration x frame rate; None if unknown."""
    if stream.frames:
        return int(stream.frames)
    fps = _stream_fps(stream)
    if stream.duration and stream.time_base and fps:
        return round(float(stream.duration * stream.time_base) * fps)
    if container.duration and fps:
        return round(container.duration / 1e6 * fps)  # microseconds
    return None


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """``(height, width)`` scaled so that the short side equals ``short_side``, keeping the aspect ratio.

    The long side is rounded to the nearest integer (halves up), as FFmpeg's
    ``scale=S:S:force_original_aspect_ratio=increase`` does.
    """
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    if height <= width:
        return short_side, (2 * width * short_side + height) // (2 * height)
    return (2 * height * short_side + width) // (2 * width), short_side


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
    """Resize an RGB ``uint8`` image ``(H, W, 3)`` so that its short side is ``short_side`` (bilinear, antialiased).

    Uses Pillow's bilinear filter, which widens its support when shrinking (antialiasing).  An image that already
    has the requested size is returned unchanged.
    """
    from PIL import Image

    height, width = image.shape[:2]
    new_h, new_w = short_side_size(height, width, short_side)
    if (new_h, new_w) == (height, width):
        return image
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def read_clip(
    path: str | os.PathLike[str],
    start: float | None = None,
    stop: float | None = None,
    *,
    fps: float | None = None,
    short_side: int | None = None,
) -> np.ndarray:
    """Decode the frames of a time range of a video, optionally resampled in time and resized.

    Times are seconds from the start of the stream.  Without ``fps`` the result holds every decoded frame whose
    timestamp ``t`` satisfies ``start <= t < stop`` (FFmpeg's ``-ss start -to stop`` input seeking).  With ``fps``
    the range is resampled by timestamps: output frame ``k`` is the frame shown at ``t0 + k / fps`` (the last
    frame with ``t <= t0 + k / fps``), where ``t0`` is the first frame in range, for every such time before
    ``stop`` (or before the end of the last frame when ``stop`` is None); frames are dropped or repeated.

    Args:
        path: Path to a video file.
        start: First time in seconds (None: from the first frame).  The decoder seeks to the keyframe before it.
        stop: End time in seconds, exclusive (None: to the last frame).
        fps: Output frame rate (None keeps the native frames).
        short_side: Resize every frame so that its short side has this many pixels (None keeps the size).

    Returns:
        ``(T, H, W, 3)`` ``uint8`` RGB frames, ``T >= 1``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: On an invalid range, ``fps`` or ``short_side``.
        VideoDecodeError: If the file cannot be decoded or has no frame in the range (the message names the file).
        ImportError: If PyAV (or Pillow, with ``short_side``) is not installed.
    """
    av = _import_av()
    p = _check_readable(path)
    if start is not None and (not math.isfinite(start) or start < 0):
        raise ValueError(f"start must be a finite time >= 0 or None, got {start}")
    if stop is not None and (not math.isfinite(stop) or stop <= (start or 0.0)):
        raise ValueError(f"stop must be a finite time after start ({start}), got {stop}")
    if fps is not None and (not math.isfinite(fps) or fps <= 0):
        raise ValueError(f"fps must be a positive finite number or None, got {fps}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side}")
    container = _open_for_reading(av, p)
    try:
        out = list(_select_frames(av, container, p, start, stop, fps, short_side))
    finally:
        container.close()
    if not out:
        where = "" if start is None and stop is None else f" in [{start}, {stop}) s"
        raise VideoDecodeError(f"cannot decode video {p}: no decodable frames{where}")
    logger.debug("decoded %d frames of %s [%s, %s) at fps=%s", len(out), p, start, stop, fps)
    return np.stack(out)  # (T, H, W, 3)


def _timed_frames(av: Any, container: Any, path: Path, start: float | None) -> Iterator[tuple[float, float, Any]]:
    """Decoded frames of the first video stream as ``(time, duration, frame)``, seeking to ``start`` first."""
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    base = stream.time_base
    origin = stream.start_time or 0  # timestamps are relative to the stream start, like FFmpeg's -ss
    native = _stream_fps(stream)
    try:
        if start and base:
            container.seek(origin + int(start / base), stream=stream, backward=True)
        for index, frame in enumerate(container.decode(stream)):
            if frame.pts is not None and base:
                time = float((frame.pts - origin) * base)
            else:  # no timestamps: assume a constant frame rate
                time = index / native if native else float(index)
            duration = float(frame.duration * base) if frame.duration and base else (1 / native if native else 0.0)
            yield time, duration, frame
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoDecodeError(f"cannot decode video {path}: {exc}") from exc


_EPS = 1e-6  # seconds: a timestamp within _EPS of a boundary counts as on it


def _in_range(
    timed: Iterator[tuple[float, float, Any]], start: float | None, stop: float | None
) -> Iterator[tuple[float, float, Any]]:
    """The ``(time, duration, frame)`` items with ``start <= time < stop`` (stops reading at ``stop``)."""
    lo = -math.inf if start is None else start - _EPS
    hi = math.inf if stop is None else stop - _EPS
    for item in timed:
        if item[0] >= hi:
            break
        if item[0] >= lo:
            yield item


def _resample(timed: Iterator[tuple[float, float, Any]], fps: float, stop: float | None) -> Iterator[Any]:
    """Frames shown at ``t0 + k / fps`` (``t0``: first time), until the last frame ends or ``stop``.

    Each output time takes the last frame whose time is ``<=`` it, so frames are dropped or repeated.
    """
    step = 1.0 / fps
    origin: float | None = None
    count = 0  # output frames so far
    held: Any = None  # latest frame read
    held_end = 0.0  # its time plus its duration
    for time, duration, frame in timed:
        if origin is None:
            origin = time
        while held is not None and origin + count * step < time - _EPS:  # output times still showing `held`
            yield held
            count += 1
        held, held_end = frame, time + (duration if duration > 0 else step)
    if origin is None:
        return
    end = held_end if stop is None else min(held_end, stop)
    while origin + count * step < end - _EPS:
        yield held
        count += 1


def _select_frames(
    av: Any,
    container: Any,
    path: Path,
    start: float | None,
    stop: float | None,
    fps: float | None,
    short_side: int | None,
) -> Iterator[np.ndarray]:
    """The (resized) RGB frames of :func:`read_clip`; a repeated frame is converted once."""
    timed = _in_range(_timed_frames(av, container, path, start), start, stop)
    frames = (frame for _, _, frame in timed) if fps is None else _resample(timed, fps, stop)
    last: Any = None
    array = np.empty((0, 0, 3), dtype=np.uint8)
    for frame in frames:
        if frame is not last:
            try:
                array = frame.to_ndarray(format="rgb24")
            except (av.error.FFmpegError, ValueError, OSError) as exc:
                raise VideoDecodeError(f"cannot decode video {path}: {exc}") from exc
            if short_side is not None:
                array = resize_short_side(array, short_side)
            last = frame
        yield array


class VideoWriter:
    """Encode RGB frames to a video file (``.mp4``, ``.mkv`` or ``.avi``) with PyAV.

    The frame size is fixed by the first frame written.  Frames with an odd
    width or height are padded to even size by replicating the last row/column
    (required by ``yuv420p``).  The encoder is flushed and the file finalised by
    :meth:`close`, which is called automatically when used as a context manager.

    Example:
        >>> with VideoWriter("out.mp4", fps=10) as writer:  # doctest: +SKIP
        ...     for frame in frames:
        ...         writer.write(frame)

    Args:
        path: Output file; its suffix selects the container format.
        fps: Frame rate in frames per second (> 0).
        codec: FFmpeg encoder name, e.g. ``"libx264"`` or ``"mpeg4"``.
        options: Extra encoder options, e.g. ``{"crf": "18"}``.

    Raises:
        ImportError: If PyAV is not installed.
        ValueError: If the suffix is unsupported, ``fps`` is not positive or the
            codec is unknown.
        FileNotFoundError: If the parent directory does not exist.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float,
        codec: str = "libx264",
        *,
        options: Mapping[str, str] | None = None,
    ) -> None:
        self._av = _import_av()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in WRITABLE_SUFFIXES:
            raise ValueError(f"unsupported video container {suffix!r} for {self.path}; use one of {WRITABLE_SUFFIXES}")
        fps = float(fps)
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive finite number, got {fps}")
        if codec not in self._av.codecs_available:
            raise ValueError(f"unknown video codec {codec!r} (not available in this FFmpeg build)")
        parent = self.path.parent
        if not parent.is_dir():
            raise FileNotFoundError(f"output directory does not exist: {parent}")
        self.fps = fps
        self.codec = codec
        self.options: dict[str, str] = dict(options or {})
        self._rate = Fraction(fps).limit_denominator(1001)
        self._container: Any = None
        self._stream: Any = None
        self._size: tuple[int, int] | None = None  # (height, width) of the first frame
        self._frames_written = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        """Number of frames passed to :meth:`write` so far."""
        return self._frames_written

    @property
    def frame_size(self) -> tuple[int, int] | None:
        """``(height, width)`` fixed by the first frame, or ``None`` before it."""
        return self._size

    def _open(self, height: int, width: int) -> None:
        """Create the container and the video stream for frames of size ``(height, width)``."""
        av = self._av
        enc_h, enc_w = height + height % 2, width + width % 2
        if (enc_h, enc_w) != (height, width):
            logger.info(
                "padding %dx%d frames to %dx%d (WxH) for yuv420p encoding of %s",
                width,
                height,
                enc_w,
                enc_h,
                self.path,
            )
        try:
            container = av.open(str(self.path), mode="w")
        except av.error.FFmpegError as exc:
            raise OSError(f"cannot open {self.path} for writing: {exc}") from exc
        try:
            stream = container.add_stream(self.codec, rate=self._rate, options=self.options or None)
            stream.width = enc_w
            stream.height = enc_h
            stream.pix_fmt = "yuv420p"
        except Exception:
            container.close()
            raise
        self._container = container
        self._stream = stream

    def write(self, frame: np.ndarray) -> None:
        """Append one frame.

        Args:
            frame: RGB ``uint8`` array of shape ``(H, W, 3)``.  ``(H, W)`` must
                match the first frame written.

        Raises:
            ValueError: On a wrong dtype/shape, a size different from the first
                frame, or if the writer is closed.
        """
        if self._closed:
            raise ValueError(f"cannot write to closed VideoWriter for {self.path}")
        arr = np.asarray(frame)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise ValueError(f"expected an RGB frame of shape (H, W, 3), got shape {arr.shape}")
        if arr.dtype != np.uint8:
            raise ValueError(f"expected a uint8 frame, got dtype {arr.dtype}")
        height, width = int(arr.shape[0]), int(arr.shape[1])
        if height == 0 or width == 0:
            raise ValueError(f"cannot write an empty frame of shape {arr.shape}")
        if self._size is None:
            self._open(height, width)
            self._size = (height, width)
        elif (height, width) != self._size:
            h0, w0 = self._size
            raise ValueError(
                f"frame size {width}x{height} (WxH) differs from the first frame size {w0}x{h0} in {self.path}"
            )
        pad_h, pad_w = height % 2, width % 2
        if pad_h or pad_w:
            arr = np.pad(arr, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        av_frame = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
        av_frame.pts = self._frames_written
        av_frame.time_base = 1 / self._rate
        for packet in self._stream.encode(av_frame):
            self._container.mux(packet)
        self._frames_written += 1

    def close(self) -> None:
        """Flush the encoder and close the file.  Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        if self._container is None:
            logger.warning("VideoWriter for %s closed without any frame; no file written", self.path)
            return
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None
            self._stream = None
        logger.debug("wrote %d frames to %s", self._frames_written, self.path)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # do not mask the original exception
            logger.exception("error while closing VideoWriter for %s", self.path)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and getattr(self, "_container", None) is not None:
            logger.warning("VideoWriter for %s was not closed; call close() or use 'with'", self.path)
