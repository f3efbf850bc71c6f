"""Video frames for Video-LLaVA: the frames its evaluation samples, decoded with decord, else PyAV.

Video-LLaVA's video processor (LanguageBind, `video_decode_backend="decord"`) reads `num_frames` = 8 frames at
`np.linspace(0, n_frames - 1, 8, dtype=int)`: the first and the last frame and six evenly spaced between them,
rounded down. `frame_indices` is that rule; `read_frames` decodes those frames as RGB arrays. decord is the reference
decoder; a file it cannot read (decord 0.6 fails on frames narrower than its 64-pixel buffer alignment, e.g. the
bundled 48-pixel synthetic set) is decoded with PyAV (both decode through FFmpeg), and `VideoFrames.decoder` says
which one did. A file neither can read raises VideoError with one line naming the file and both reasons, which the
harness records as that document's failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

T = TypeVar("T")
NUM_FRAMES = 8  # Video-LLaVA-7B: 8 frames x 256 patches = 2048 visual tokens (plus one CLS token per frame in HF)


class VideoError(ValueError):
    """A video that cannot be decoded (one line: the file and why)."""


@dataclass(frozen=True)
class VideoFrames:
    """The frames of one video that a model reads: (num_frames, height, width, 3) uint8 RGB."""

    path: str
    frames: np.ndarray
    indices: tuple[int, ...]
    n_frames: int  # frames in the whole file
    decoder: str = "decord"  # "decord" (Video-LLaVA's) or "pyav" (when decord cannot read the file)


def frame_indices(n_frames: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """Video-LLaVA's uniform sampling: linspace over [0, n_frames - 1], rounded down (repeats in short videos)."""
    if n_frames < 1:
        raise VideoError(f"a video needs at least one frame, got {n_frames}")
    return np.linspace(0, n_frames - 1, num_frames, dtype=int).tolist()


def probe(path: str | Path) -> int:
    """The frame count of a video file (opens the container, decodes nothing); VideoError if it cannot be opened."""
    n_frames, _ = _decord_else_pyav(path, "open", lambda: _decord_count(path), lambda: _pyav_count(path))
    if n_frames < 1:
        raise VideoError(f"video {path}: no frames")
    return n_frames


def _decord_else_pyav(path: str | Path, action: str, decord: Callable[[], T], pyav: Callable[[], T]) -> tuple[T, str]:
    """(decord's result, "decord"), else (PyAV's, "pyav"); VideoError naming the file and both reasons if both fail."""
    try:
        return decord(), "decord"
    except VideoError as decord_error:
        try:
            return pyav(), "pyav"
        except VideoError as pyav_error:
            raise VideoError(f"video {path}: cannot {action} (decord: {decord_error}; pyav: {pyav_error})") from None


def _decord_count(path: str | Path) -> int:
    """decord's frame count of a file (its index; decodes nothing)."""
    import decord

    try:
        return len(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1))
    except (decord.DECORDError, RuntimeError, OSError) as err:
        raise VideoError(_last_line(err)) from None


def _pyav_count(path: str | Path) -> int:
    """PyAV's frame count of a file: the stream header's, else counted by demuxing packets (decodes nothing)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            return stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
    except (av.error.FFmpegError, IndexError, OSError) as err:
        raise VideoError(_last_line(err) if str(err) else "no video stream") from None


def _last_line(err: BaseException) -> str:
    """decord's messages end with the useful line (after the C++ location)."""
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def read_frames(path: str | Path, num_frames: int = NUM_FRAMES) -> VideoFrames:
    """Decode the `num_frames` uniformly sampled frames of a video (decord, else PyAV); VideoError if neither can."""
    (n_frames, indices, frames), decoder = _decord_else_pyav(
        path, "decode", lambda: _decord_frames(path, num_frames), lambda: _pyav_frames(path, num_frames)
    )
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise VideoError(f"video {path}: decoded frames of shape {frames.shape}, expected ({num_frames}, H, W, 3)")
    return VideoFrames(str(path), frames, tuple(indices), n_frames, decoder)


def _decord_frames(path: str | Path, num_frames: int) -> tuple[int, list[int], np.ndarray]:
    """(frame count, sampled indices, frames) decoded by decord, seeking to the sampled frames."""
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        indices = frame_indices(len(reader), num_frames)
        return len(reader), indices, reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError, OSError) as err:
        raise VideoError(_last_line(err)) from None


def _pyav_frames(path: str | Path, num_frames: int) -> tuple[int, list[int], np.ndarray]:
    """(frame count, sampled indices, frames) decoded by PyAV in one pass, keeping the sampled frames as RGB."""
    import av

    n_frames = _pyav_count(path)
    indices = frame_indices(n_frames, num_frames)
    wanted, decoded = set(indices), {}
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i in wanted:
                    decoded[i] = frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
    except (av.error.FFmpegError, OSError) as err:
        raise VideoError(_last_line(err)) from None
    missing = sorted(wanted - decoded.keys())
    if missing:
        raise VideoError(f"frames {missing} of {n_frames} did not decode")
    return n_frames, indices, np.stack([decoded[i] for i in indices])


def accepts_videos(processor: object) -> bool:
    """Whether a processor expands a video placeholder into frames (VideoLlavaProcessor: `<video>`, `videos=`)."""
    return getattr(processor, "video_processor", None) is not None and bool(getattr(processor, "video_token", None))


def split_visuals(visuals: list) -> tuple[list, list[np.ndarray]]:
    """(images, videos' frame arrays) of one request's or one batch's visuals, each in order."""
    videos = [v.frames for v in visuals if isinstance(v, VideoFrames)]
    return [v for v in visuals if not isinstance(v, VideoFrames)], videos
