"""Video frames for Video-LLaVA: the frames its evaluation samples, decoded with decord (a harness dependency).

Video-LLaVA's video processor (LanguageBind, `video_decode_backend="decord"`) reads `num_frames` = 8 frames at
`np.linspace(0, n_frames - 1, 8, dtype=int)`: the first and the last frame and six evenly spaced between them,
rounded down. `frame_indices` is that rule; `read_frames` decodes those frames as RGB arrays. An unreadable or empty
file raises VideoError with one line naming the file, which the harness records as that document's failure.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def frame_indices(n_frames: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """Video-LLaVA's uniform sampling: linspace over [0, n_frames - 1], rounded down (repeats in short videos)."""
    if n_frames < 1:
        raise VideoError(f"a video needs at least one frame, got {n_frames}")
    return np.linspace(0, n_frames - 1, num_frames, dtype=int).tolist()


def probe(path: str | Path) -> int:
    """The frame count of a video file (opens the container, decodes nothing); VideoError if it cannot be opened."""
    import decord

    try:
        n_frames = len(decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1))
    except (decord.DECORDError, RuntimeError, OSError) as err:
        raise VideoError(f"video {path}: cannot open ({_last_line(err)})") from None
    if n_frames < 1:
        raise VideoError(f"video {path}: no frames")
    return n_frames


def _last_line(err: BaseException) -> str:
    """decord's messages end with the useful line (after the C++ location)."""
    text = str(err).strip()
    return text.splitlines()[-1] if text else type(err).__name__


def read_frames(path: str | Path, num_frames: int = NUM_FRAMES) -> VideoFrames:
    """Decode the `num_frames` uniformly sampled frames of a video file; VideoError if it cannot be read."""
    import decord

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        indices = frame_indices(len(reader), num_frames)
        frames = reader.get_batch(indices).asnumpy()
    except (decord.DECORDError, RuntimeError, OSError) as err:
        raise VideoError(f"video {path}: cannot decode ({_last_line(err)})") from None
    if frames.ndim != 4 or frames.shape[0] != num_frames or frames.shape[-1] != 3:
        raise VideoError(f"video {path}: decoded frames of shape {frames.shape}, expected ({num_frames}, H, W, 3)")
    return VideoFrames(str(path), frames, tuple(indices), len(reader))


def accepts_videos(processor: object) -> bool:
    """Whether a processor expands a video placeholder into frames (VideoLlavaProcessor: `<video>`, `videos=`)."""
    return getattr(processor, "video_processor", None) is not None and bool(getattr(processor, "video_token", None))


def split_visuals(visuals: list) -> tuple[list, list[np.ndarray]]:
    """(images, videos' frame arrays) of one request's or one batch's visuals, each in order."""
    videos = [v.frames for v in visuals if isinstance(v, VideoFrames)]
    return [v for v in visuals if not isinstance(v, VideoFrames)], videos
