"""Image files: format from content, size from the header, completeness, decoding to 8-bit RGB, and
`read_image` (BGR, after those checks) through which inference, training and evaluation read images.

Darknet reads JPEG, PNG and BMP; so do we. The size is read from the header before anything is decoded, so a
decompression bomb (a small file that declares a huge image) is refused cheaply. cv2 silently grey-fills a
truncated JPEG, so completeness is checked on the bytes: JPEG needs an EOI marker after its last SOS marker
(0xFF inside entropy-coded data is always stuffed, so markers found there are real), PNG needs every chunk's
CRC to match and an IEND chunk, BMP needs its whole pixel array. Decoding ignores EXIF orientation, as
darknet's stb_image does, so labels stay aligned with the stored pixels; an orientation other than 1 is a
warning (a viewer shows the picture turned, and labels drawn in such a viewer would not fit).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darktune.files import open_regular
from darktune.errors import DarktuneError

MAX_PIXELS = 100_000_000
MAX_IMAGE_BYTES = 1 << 30  # read_image refuses larger files before reading them
IMAGE_EXTENSIONS = {".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg", ".png": "png", ".bmp": "bmp"}
SUPPORTED = ("jpeg", "png", "bmp")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG SOF markers carry the frame size: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def sniff_format(head: bytes) -> str | None:
    """Format name from the first bytes, or None when not recognised."""
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(_PNG_SIGNATURE):
        return "png"
    if head.startswith(b"BM") and len(head) >= 26:
        return "bmp"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "tiff"
    return None


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            break
        (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
        if length < 2:
            raise ValueError(f"bad segment length at byte {pos}")
        if marker in _JPEG_SOF:
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5: pos + 9])
            return width, height
        pos += 2 + length
    raise ValueError("no frame header (SOF) before the image data")


def _png_size(data: bytes) -> tuple[int, int]:
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ValueError("first chunk is not IHDR")
    return struct.unpack(">II", data[16:24])


def _bmp_size(data: bytes) -> tuple[int, int]:
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    if header_size < 40 or len(data) < 30:
        raise ValueError(f"unknown DIB header size {header_size}")
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)


def image_info(data: bytes) -> ImageInfo:
    """Format and size from the header. Raises ValueError(reason) for unknown formats or bad headers."""
    fmt = sniff_format(data[:32])
    if fmt not in SUPPORTED:
        raise ValueError("not a JPEG, PNG or BMP image" if fmt is None else f"unsupported format {fmt.upper()}")
    try:
        width, height = {"jpeg": _jpeg_size, "png": _png_size, "bmp": _bmp_size}[fmt](data)
    except struct.error:
        raise ValueError(f"{fmt.upper()} header cut short") from None
    except ValueError as exc:
        raise ValueError(f"corrupt {fmt.upper()} header: {exc}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{fmt.upper()} header declares an empty image ({width}x{height})")
    return ImageInfo(fmt, width, height)


def _jpeg_incomplete(data: bytes) -> str | None:
    last_sos = data.rfind(b"\xff\xda")
    if last_sos < 0:
        return "JPEG has no image data (no SOS marker)"
    if data.rfind(b"\xff\xd9") < last_sos:
        return "truncated JPEG (no end-of-image marker after the image data)"
    return None


def _png_incomplete(data: bytes) -> str | None:
    pos, seen_idat = 8, False
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos: pos + 4])
        ctype = data[pos + 4: pos + 8]
        end = pos + 12 + length
        if end > len(data):
            return f"truncated PNG (chunk {ctype!r} at byte {pos} cut short)"
        (crc,) = struct.unpack(">I", data[end - 4: end])
        if zlib.crc32(data[pos + 4: end - 4]) != crc:
            return f"corrupt PNG (CRC mismatch in chunk {ctype!r} at byte {pos})"
        if ctype == b"IEND":
            return None if seen_idat else "PNG has no image data (no IDAT chunk)"
        seen_idat |= ctype == b"IDAT"
        pos = end
    return "truncated PNG (no IEND chunk)"


def _bmp_incomplete(data: bytes, info: ImageInfo) -> str | None:
    offset = struct.unpack("<I", data[10:14])[0]
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:
        bpp, compression = struct.unpack("<H", data[24:26])[0], 0
    else:
        bpp, compression = struct.unpack("<HI", data[28:34])
    if compression in (0, 3, 6):  # uncompressed (BI_RGB, BI_BITFIELDS, BI_ALPHABITFIELDS)
        row = ((bpp * info.width + 31) // 32) * 4
        if len(data) < offset + row * info.height:
            return f"truncated BMP ({len(data)} bytes, pixel data needs {offset + row * info.height})"
    return None


def _tiff_orientation(tiff: bytes) -> int | None:
    """The Orientation tag (0x0112) of IFD0 of an EXIF/TIFF block, or None."""
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd: ifd + 2])
    for k in range(min(count, 1000)):
        entry = tiff[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
        if len(entry) < 12:
            break
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112 and kind == 3:  # SHORT, stored in the first 2 bytes of the value field
            return struct.unpack(order + "H", entry[8:10])[0]
    return None


def _exif_block(data: bytes, fmt: str) -> bytes | None:
    """The EXIF (TIFF) block of a JPEG (APP1 "Exif") or PNG (eXIf chunk), or None."""
    if fmt == "jpeg":
        pos = 2
        while pos + 4 <= len(data) and data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            (length,) = struct.unpack(">H", data[pos + 2: pos + 4])
            if data[pos + 1] == 0xE1 and data[pos + 4: pos + 10] == b"Exif\x00\x00":
                return data[pos + 10: pos + 2 + length]
            pos += 2 + max(length, 2)
    elif fmt == "png":
        pos = 8
        while pos + 8 <= len(data):
            length, ctype = struct.unpack(">I4s", data[pos: pos + 8])
            if ctype in (b"eXIf", b"IDAT", b"IEND"):
                return data[pos + 8: pos + 8 + length] if ctype == b"eXIf" else None
            pos += 12 + length
    return None


def exif_orientation(data: bytes, fmt: str) -> int | None:
    """EXIF orientation of a JPEG or PNG (1 = as stored, 3/6/8 = rotated on display), or None when absent."""
    try:
        block = _exif_block(data, fmt)
        return _tiff_orientation(block) if block else None
    except struct.error:
        return None


def completeness_problem(data: bytes, info: ImageInfo) -> str | None:
    """Why the bytes are not a complete image (truncated, bad CRC), or None."""
    try:
        if info.format == "jpeg":
            return _jpeg_incomplete(data)
        if info.format == "png":
            return _png_incomplete(data)
        return _bmp_incomplete(data, info)
    except struct.error:
        return f"{info.format.upper()} structure cut short"


def decode_rgb(data: bytes) -> np.ndarray | None:
    """Decode to (H, W, 3) uint8 RGB: grey and grey+alpha expanded, alpha dropped, 16-bit scaled to 8-bit.
    None when cv2 cannot decode."""
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)  # 65535 -> 255, rounded
    elif img.dtype != np.uint8:
        return None
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))
    channels = img.shape[2]
    if channels == 1 or channels == 2:
        return np.ascontiguousarray(np.repeat(img[:, :, :1], 3, axis=2))
    return np.ascontiguousarray(img[:, :, 2::-1])  # BGR(A) -> RGB


def inspect_image_bytes(path: Path, data: bytes, max_pixels: int = MAX_PIXELS,
                        decode: bool = True) -> tuple[ImageInfo | None, list[tuple[str, str]], np.ndarray | None]:
    """Full check of one image's bytes -> (info or None, [(severity, reason)], decoded RGB or None).
    A result with no "error" is usable."""
    if not data:
        return None, [("error", "zero-byte file")], None
    try:
        info = image_info(data)
    except ValueError as exc:
        return None, [("error", str(exc))], None
    found = []
    expected = IMAGE_EXTENSIONS.get(path.suffix.lower())
    if expected != info.format:
        found.append(("warning", f"extension {path.suffix or '(none)'!r} but the content is {info.format.upper()}"))
    orientation = exif_orientation(data, info.format)
    if orientation not in (None, 1):
        found.append(("warning", (f"EXIF orientation {orientation}: labels refer to the stored pixels; EXIF "
                                 "orientation is ignored (as darknet does)")))
    megapixels = info.width * info.height / 1e6
    if info.width * info.height > max_pixels:
        found.append(("error", (f"image too large: {info.width}x{info.height} = {megapixels:.0f} MP > "
                               f"{max_pixels / 1e6:.0f} MP (decompression-bomb guard; not decoded)")))
        return info, found, None
    incomplete = completeness_problem(data, info)
    if incomplete:
        return info, found + [("error", incomplete)], None
    if not decode:
        return info, found, None
    rgb = decode_rgb(data)
    if rgb is None:
        return info, found + [("error", f"{info.format.upper()} data cannot be decoded")], None
    if rgb.shape[:2] != (info.height, info.width):
        return info, found + [("error", (f"decoded size {rgb.shape[1]}x{rgb.shape[0]} differs from the header "
                                        f"{info.width}x{info.height}"))], None
    return info, found, rgb


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DarktuneError("image not found", path=str(path)) from None
    except OSError as exc:
        raise DarktuneError(f"cannot read image: {exc.strerror or exc}", path=str(path)) from None


def read_image_rgb(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Load an image as (H, W, 3) uint8 RGB after the same checks as `darktune data check`;
    DarktuneError naming the file and the reason otherwise."""
    path = Path(path)
    _, found, rgb = inspect_image_bytes(path, _read_bytes(path), max_pixels)
    errors = [reason for severity, reason in found if severity == "error"]
    if errors or rgb is None:
        raise DarktuneError(errors[0] if errors else "cannot be decoded", path=str(path))
    return rgb


_HEADER_READS = (4096, 1 << 16)  # most headers fit the first; a large EXIF block can push a JPEG's SOF back


def read_image_header(path: str | Path, at_least: int = 0) -> tuple[ImageInfo, bytes]:
    """Format and size from the header, reading no more of the file than that takes (4 KiB, then 64 KiB, then
    the whole file; `at_least` bytes when more are wanted, e.g. for the EXIF block); returns the info and the
    bytes read. Regular files only (a FIFO named *.jpg must not block). DarktuneError naming the file when it
    is missing, special or not a readable JPEG, PNG or BMP."""
    path = Path(path)
    with open_regular(path, "image", MAX_IMAGE_BYTES) as f:
        data, reason = b"", ""
        try:
            for size in (*(max(n, at_least) for n in _HEADER_READS), -1):
                more = f.read(size - len(data)) if size > 0 else f.read()
                data += more
                try:
                    return image_info(data), data
                except ValueError as exc:
                    reason = str(exc)
                if size < 0 or len(data) < size:  # the whole file is read
                    break
        except OSError as exc:
            raise DarktuneError(f"cannot read image: {exc.strerror or exc}", path=str(path)) from None
    raise DarktuneError(reason, path=str(path))


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the header only; DarktuneError when the file is not a readable image."""
    info, _ = read_image_header(path)
    return info.width, info.height


def declared_size_problem(path: str | Path, width: int, height: int) -> str | None:
    """Why an annotation's declared image size (width x height) does not fit the image file, or None. Only
    the header is read. A size that is the stored one turned by 90 degrees in a file with EXIF orientation
    5-8 is named as such: the annotation was made on the picture as a viewer shows it, while darknet (and
    darktune) read the stored pixels. DarktuneError naming the image when it cannot be read."""
    info, _ = read_image_header(path)
    if (info.width, info.height) == (width, height):
        return None
    found = f"declared size {width}x{height} differs from the image file {path}, which is {info.width}x{info.height}"
    if (info.height, info.width) == (width, height):
        orientation = exif_orientation(read_image_header(path, 1 << 17)[1], info.format)
        if orientation in (5, 6, 7, 8):
            return (f"{found} turned by EXIF orientation {orientation}: the annotation was made on the picture "
                    "as a viewer shows it (rotated), but labels must refer to the stored pixels (darknet "
                    "ignores EXIF orientation); re-save the image with the rotation applied to its pixels, and "
                    "the annotation fits it")
    return f"{found} (its boxes would be scaled by the wrong size)"


def known_size(record) -> tuple[int, int]:
    """(width, height) of an ImageRecord: its own fields when set, else read from the image header."""
    if record.width and record.height:
        return int(record.width), int(record.height)
    return read_image_size(record.path)


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 image of the stored pixels, for inference, training and evaluation; a clear error for a
    missing, special, damaged or oversized file.

    JPEG, PNG and BMP get the checks of `darktune data check` (decompression-bomb guard on the header size,
    truncation, PNG CRCs), so everything reads exactly what the check accepted. EXIF orientation is ignored,
    as darknet's stb_image ignores it: label coordinates refer to the stored pixels. Other formats OpenCV
    reads (GIF, WebP, TIFF, ...) are decoded as they are."""
    import cv2

    path = Path(path)
    if not path.is_file():  # a device or FIFO named *.jpg would be read forever
        raise DarktuneError("image not found" if not path.exists() else "not a regular file", path=str(path))
    try:
        if path.stat().st_size > MAX_IMAGE_BYTES:
            raise DarktuneError(f"file larger than {MAX_IMAGE_BYTES} bytes (not read)", path=str(path))
        data = path.read_bytes()
    except OSError as exc:
        raise DarktuneError(f"cannot read image: {exc.strerror or exc}", path=str(path)) from None
    if not data:
        raise DarktuneError("zero-byte file", path=str(path))
    if sniff_format(data[:32]) in SUPPORTED:
        _, found, _ = inspect_image_bytes(path, data, decode=False)
        errors = [reason for severity, reason in found if severity == "error"]
        if errors:
            raise DarktuneError(errors[0], path=str(path))
    try:  # OpenCV raises (rather than returning None) past its own pixel limit
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    except cv2.error:
        image = None
    if image is None:
        raise DarktuneError("not a decodable image", path=str(path))
    return image
