"""Frame sources for detection (image files, video files, camera indices) and an annotated-video writer.

`open_source("3")` is camera 3, `open_source("clip.mp4")` a video file, `open_source("a.jpg")` one image.
Opening checks that the source gives a first frame, so an unreadable source fails at once with a
`DarktuneError` naming it. Frames are BGR uint8, as OpenCV reads them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from darktune.errors import DarktuneError
from darktune.data.formats.image import read_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jp2"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts",
                  ".3gp", ".ogv", ".gif"}


@dataclass
class FrameSource:
    """One source: `kind` is 'image', 'video' or 'camera'; iterate for BGR frames."""

    name: str
    kind: str
    fps: float = 0.0  # the source's own rate (videos, cameras); 0 when unknown
    frame_count: int | None = None  # None for cameras and videos that do not say
    _capture: cv2.VideoCapture | None = field(default=None, repr=False)
    _first: np.ndarray | None = field(default=None, repr=False)

    def __iter__(self) -> Iterator[np.ndarray]:
        first, self._first = self._first, None
        if first is None:
            return
        yield first
        while self._capture is not None:
            ok, frame = self._capture.read()
            if not ok or frame is None:
                break
            yield frame
        self.close()

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def is_camera(source: str) -> bool:
    return source.strip().isdigit()


def expand_source(source: str) -> list[str]:
    """The sources one command-line argument stands for: a folder -> its image and video files (by suffix,
    sorted, not recursive); a glob pattern that is not itself a file ('imgs/*.jpg', quoted so the shell left
    it; ** spans folders) -> the files it matches, sorted; anything else -> itself (`open_source` judges it).
    A folder or pattern that gives no file is a DarktuneError naming it."""
    import glob

    path = Path(source)
    if is_camera(source) or path.is_file():
        return [source]
    if path.is_dir():
        found = sorted(str(p) for p in path.iterdir()
                       if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and p.is_file())
        if not found:
            raise DarktuneError("folder holds no image or video file (by suffix: "
                                f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})", path=source)
        return found
    if any(c in source for c in "*?["):
        found = sorted(p for p in glob.glob(source, recursive=True) if Path(p).is_file())
        if not found:
            raise DarktuneError("no file matches this pattern", path=source)
        return found
    return [source]


def open_source(source: str) -> FrameSource:
    """Open an image, a video or a camera (a non-negative integer); DarktuneError if it gives no frame."""
    if is_camera(source):
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # our error says it once, plainly
        try:
            return _open_capture(cv2.VideoCapture(int(source)), f"camera {int(source)}", "camera")
        finally:
            cv2.utils.logging.setLogLevel(level)
    path = Path(source)
    if not path.exists():
        raise DarktuneError("no such file", path=source)
    if path.is_dir():
        raise DarktuneError("is a folder, not an image or video file", path=source)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix not in VIDEO_SUFFIXES:
        try:
            return _open_image(path)
        except DarktuneError:
            if suffix in IMAGE_SUFFIXES:
                raise
    return _open_capture(cv2.VideoCapture(str(path)), source, "video")


def _open_image(path: Path) -> FrameSource:
    return FrameSource(str(path), "image", frame_count=1, _first=read_image(path))


def _open_capture(capture: cv2.VideoCapture, name: str, kind: str) -> FrameSource:
    if not capture.isOpened():
        capture.release()
        what = "cannot open camera" if kind == "camera" else "not a readable image or video"
        raise DarktuneError(what, path=name)
    ok, frame = capture.read()
    if not ok or frame is None:
        capture.release()
        raise DarktuneError("gives no frame" if kind == "camera" else "video has no readable frame", path=name)
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "video" else 0
    return FrameSource(name, kind, fps if 0 < fps < 1000 else 0.0, count if count > 0 else None, capture, frame)


class VideoSink:
    """Writes BGR frames to an mp4 (mp4v) video. The file appears under its name only when `close` succeeds
    (written to a temporary file in the same folder, then renamed), so a crash never leaves half a video."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=self.path.suffix or ".mp4",
                                   dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        self.size = size  # (width, height)
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps or 25.0, size)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise DarktuneError("OpenCV cannot write an mp4v video here", path=str(self.path))
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:
            frame = cv2.resize(frame, self.size)
        self.writer.write(frame)
        self.frames += 1

    def close(self) -> Path:
        self.writer.release()
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp, 0o666 & ~umask)  # mkstemp made it private; give it a normal file's mode
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)
