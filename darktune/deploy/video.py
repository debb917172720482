"""Frame sources for detection (image files, video files, camera indices) and an annotated-video writer.

`open_source("3")` is camera 3, `open_source("clip.mp4")` a video file, `open_source("a.jpg")` one image.
Opening checks that the source gives a first frame, so an unreadable source fails at once with a
`DarktuneError` naming it. Frames are BGR uint8, as OpenCV reads them.

One rule for every source: a file source must be a regular file (a FIFO would block the decoder forever, a
device would be read without end), checked with `stat` before anything opens it; a frame may hold at most
`MAX_PIXELS` (the decompression-bomb guard of image files), checked on the header's frame size before the
first decode and on every decoded frame; and a video that ends before the frame count its header gives says
so (`FrameSource.shortfall`), so a truncated or damaged file is never taken for a short one.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from darktune.errors import DarktuneError
from darktune.data.formats.image import MAX_PIXELS, read_image

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
    frames_read: int = 0  # frames given so far
    ended: bool = False  # the source itself ran out (not stopped by the caller)

    def __iter__(self) -> Iterator[np.ndarray]:
        first, self._first = self._first, None
        if first is None:
            return
        self.frames_read = 1
        yield first
        while self._capture is not None:
            ok, frame = self._capture.read()
            if not ok or frame is None:
                self.ended = True
                break
            check_frame_size(frame.shape[1], frame.shape[0], self.name, f"frame {self.frames_read + 1}")
            self.frames_read += 1
            yield frame
        self.close()

    @property
    def shortfall(self) -> int:
        """Frames the header promised that the video did not give (0 unless it ran out early)."""
        if self.kind != "video" or not self.ended or self.frame_count is None:
            return 0
        return max(0, self.frame_count - self.frames_read)

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
        # a FIFO, device or folder named like a media file is kept: `open_source` refuses it, counted
        found = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
        if not found:
            raise DarktuneError("folder holds no image or video file (by suffix: "
                                f"{', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))})", path=source)
        return found
    if any(c in source for c in "*?["):
        found = sorted(p for p in glob.glob(source, recursive=True) if not Path(p).is_dir())
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
    check_regular(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES or suffix not in VIDEO_SUFFIXES:
        try:
            return _open_image(path)
        except DarktuneError:
            if suffix in IMAGE_SUFFIXES:
                raise
    return _open_capture(cv2.VideoCapture(str(path)), source, "video")


def check_regular(path: Path) -> None:
    """DarktuneError naming `path` unless it is (a link to) a regular file: a FIFO given as a video would block
    the decoder forever and a device be read without end, so neither is ever opened."""
    try:
        mode = os.stat(path).st_mode  # stat opens nothing: a FIFO does not block here
    except FileNotFoundError:
        raise DarktuneError("no such file", path=str(path)) from None
    except (OSError, ValueError) as exc:
        raise DarktuneError(f"cannot read: {getattr(exc, 'strerror', None) or exc}", path=str(path)) from None
    if stat.S_ISDIR(mode):
        raise DarktuneError("is a folder, not an image or video file", path=str(path))
    if not stat.S_ISREG(mode):
        raise DarktuneError("is not a regular file (a device, pipe or socket): not opened", path=str(path))


def check_frame_size(width: int, height: int, name: str, what: str = "frames") -> None:
    """The decompression-bomb guard of image files, for video and camera frames."""
    if width * height > MAX_PIXELS:
        raise DarktuneError(f"{what}: {width} x {height} pixels, over the {MAX_PIXELS // 1_000_000} MP limit of an "
                            "image (not decoded)", path=name)


def _open_image(path: Path) -> FrameSource:
    return FrameSource(str(path), "image", frame_count=1, _first=read_image(path))


def _open_capture(capture: cv2.VideoCapture, name: str, kind: str) -> FrameSource:
    if not capture.isOpened():
        capture.release()
        what = "cannot open camera" if kind == "camera" else "not a readable image or video"
        raise DarktuneError(what, path=name)
    try:  # the header's frame size, before any frame is decoded
        check_frame_size(int(capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
                         int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), name)
        ok, frame = capture.read()
        if not ok or frame is None:
            raise DarktuneError("gives no frame" if kind == "camera" else "video has no readable frame", path=name)
        check_frame_size(frame.shape[1], frame.shape[0], name)
    except DarktuneError:
        capture.release()
        raise
    fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if kind == "video" else 0
    return FrameSource(name, kind, fps if 0 < fps < 1000 else 0.0, count if count > 0 else None, capture, frame)


class VideoSink:
    """Writes BGR frames to an mp4 (mp4v) video. The file appears under its name only when `close` succeeds
    (written to a temporary file in the same folder, then renamed), so a crash never leaves half a video."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.stem[:40]}.", suffix=self.path.suffix[:16] or ".mp4",
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
