"""Broken, odd and hostile image files, each with what darktune must do with it.

Every case is built in memory from a small synthetic picture (deterministic), so the corpus needs no
downloaded data. `expect` is what the dataset paths (`darktune data check`, the trainer) must do: "ok"
(decoded, at the stored size `shape`) or "reject" (reported with the file named, then skipped).
`detect` is what `darktune detect` must do: the same, or "either" where the format is one OpenCV reads but
darknet datasets do not use (GIF, WebP): decoded or reported, never a crash.

JPEG has no checksum: a flipped bit can leave a stream that still decodes to a picture of the declared size.
Such cases are "either" (decoded at the header's size, or reported); PNG flips are always caught (CRC).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import numpy as np

# (H, W) of the base pictures: small, and not square so that a rotation would show in the shape.
H, W = 40, 64


@dataclass(frozen=True)
class ImageCase:
    name: str  # file name, extension included (the extension may lie about the content)
    data: bytes
    expect: str  # dataset paths: "ok" | "reject"
    detect: str = ""  # darktune detect: "ok" | "reject" | "either" ("" = same as expect)
    shape: tuple[int, int] | None = None  # (H, W) of the stored pixels when expect == "ok"
    note: str = ""

    @property
    def detect_expect(self) -> str:
        return self.detect or self.expect


def picture(h: int = H, w: int = W) -> np.ndarray:
    """A deterministic BGR uint8 picture: gradients plus a bright rectangle off the centre."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)), ((x + y) * 3) % 256], -1)
    img = img.astype(np.uint8)
    img[h // 5: h // 2, w // 8: w // 3] = 255
    return img


def encode(ext: str, img: np.ndarray, params: list[int] | None = None) -> bytes:
    import cv2

    ok, buf = cv2.imencode(ext, img, params or [])
    assert ok, ext
    return buf.tobytes()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(width: int, height: int, color_type: int, bit_depth: int, rows: bytes | None,
              palette: bytes = b"") -> bytes:
    """A PNG written by hand (any header, even one no encoder would write). rows: the raw filtered scanlines
    (None: a tiny IDAT that does not hold the image, as in a decompression-bomb header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = _chunk(b"IHDR", ihdr)
    if palette:
        body += _chunk(b"PLTE", palette)
    body += _chunk(b"IDAT", zlib.compress(rows if rows is not None else b"\x00" * 16))
    return b"\x89PNG\r\n\x1a\n" + body + _chunk(b"IEND", b"")


def zero_png(side: int) -> bytes:
    """A complete, valid greyscale PNG of side x side black pixels, compressed a thousandfold (a real
    decompression bomb: small on disk, side*side bytes once decoded). Streamed, so cheap to build."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    parts = [comp.compress(row) for _ in range(side)] + [comp.flush()]
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """The JPEG with an APP1 EXIF segment holding one IFD entry: Orientation (0x0112) = `orientation`."""
    tiff = b"II*\x00" + struct.pack("<I", 8)
    tiff += struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + app1 + jpeg[2:]


def _set_jpeg_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its SOF0 frame header claiming width x height (the data stays the small image's)."""
    pos = jpeg.find(b"\xff\xc0")
    assert pos > 0
    return jpeg[:pos + 5] + struct.pack(">HH", height, width) + jpeg[pos + 9:]


def _set_bmp_size(bmp: bytes, width: int, height: int) -> bytes:
    return bmp[:18] + struct.pack("<ii", width, height) + bmp[26:]


def _flip(data: bytes, pos: int, bit: int = 0) -> bytes:
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1:]


def _gif_1x1() -> bytes:
    return (b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,"
            b"\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;")


def _good_cases(img: np.ndarray) -> list[ImageCase]:
    import cv2

    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    rgba = np.dstack([img, np.full(img.shape[:2], 128, np.uint8)])
    deep = img.astype(np.uint16) * 257
    gray_rows = b"".join(b"\x00" + bytes(gray[r].tolist()) for r in range(H))
    ga_rows = b"".join(b"\x00" + bytes(np.stack([gray[r], gray[r]], -1).ravel().tolist()) for r in range(H))
    palette = bytes(range(256)) * 3
    return [
        ImageCase("plain.jpg", encode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95]), "ok", shape=(H, W)),
        ImageCase("plain.png", encode(".png", img), "ok", shape=(H, W)),
        ImageCase("plain.bmp", encode(".bmp", img), "ok", shape=(H, W)),
        ImageCase("progressive.jpg", encode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]), "ok", shape=(H, W)),
        ImageCase("one_pixel.png", encode(".png", img[:1, :1]), "ok", shape=(1, 1)),
        ImageCase("gray.png", encode(".png", gray), "ok", shape=(H, W), note="1 channel"),
        ImageCase("gray.jpg", encode(".jpg", gray), "ok", shape=(H, W), note="1 channel"),
        ImageCase("gray_alpha.png", png_bytes(W, H, 4, 8, ga_rows), "ok", shape=(H, W), note="2 channels"),
        ImageCase("palette.png", png_bytes(W, H, 3, 8, gray_rows, palette), "ok", shape=(H, W)),
        ImageCase("rgba.png", encode(".png", rgba), "ok", shape=(H, W), note="alpha dropped"),
        ImageCase("rgb16.png", encode(".png", deep), "ok", shape=(H, W), note="16 bits per channel"),
        ImageCase("gray16.png", encode(".png", gray.astype(np.uint16) * 257), "ok", shape=(H, W)),
        ImageCase("trailing_garbage.jpg", encode(".jpg", img) + b"GARBAGE" * 10, "ok", shape=(H, W)),
        ImageCase("trailing_garbage.png", encode(".png", img) + b"\x00" * 64, "ok", shape=(H, W)),
    ]


def _exif_cases(img: np.ndarray) -> list[ImageCase]:
    """EXIF orientation: darknet (stb_image) ignores it and so does darktune everywhere, so labels drawn on
    the stored pixels stay aligned; `shape` is the stored (not rotated) one."""
    jpeg = encode(".jpg", img)
    return [ImageCase(f"exif_orientation_{o}.jpg", with_exif_orientation(jpeg, o), "ok", shape=(H, W),
                      note=f"EXIF orientation {o}; stored pixels used") for o in (1, 3, 6, 8)]


def _truncated_cases(img: np.ndarray) -> list[ImageCase]:
    import cv2

    cases = []
    for ext, data in ((".jpg", encode(".jpg", img)),
                      ("-progressive.jpg", encode(".jpg", img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])),
                      (".png", encode(".png", img)), (".bmp", encode(".bmp", img))):
        n = len(data)
        cuts = sorted({2, 10, 33, n // 4, n // 2, 3 * n // 4, n - 12, n - 2, n - 1})
        if ext == "-progressive.jpg":
            cuts = [n // 3, n - 2]
        if ext == ".bmp":
            cuts = [10, 40, n // 2, n - 1]
        cases += [ImageCase(f"truncated_{cut}of{n}{ext}", data[:cut], "reject", note=f"cut at byte {cut}")
                  for cut in cuts]
    return cases


def _flipped_cases(img: np.ndarray) -> list[ImageCase]:
    jpeg, png = encode(".jpg", img), encode(".png", img)
    sof = jpeg.find(b"\xff\xc0")
    sos = jpeg.find(b"\xff\xda")
    cases = [
        ImageCase("flip_jpeg_soi.jpg", _flip(jpeg, 1), "reject", detect="reject", note="SOI marker broken"),
        ImageCase("flip_jpeg_sof_height.jpg", _flip(jpeg, sof + 6, 0), "either", detect="either",
                  note="frame height changed by one bit"),
        ImageCase("flip_jpeg_sof_marker.jpg", _flip(jpeg, sof + 1, 7), "either", detect="either"),
        ImageCase("flip_jpeg_entropy_a.jpg", _flip(jpeg, sos + 40, 3), "either", detect="either"),
        ImageCase("flip_jpeg_entropy_b.jpg", _flip(jpeg, (sos + len(jpeg)) // 2, 5), "either", detect="either"),
        ImageCase("flip_jpeg_eoi.jpg", _flip(jpeg, len(jpeg) - 1, 0), "reject", note="end-of-image marker broken"),
    ]
    for pos, what in ((0, "signature"), (18, "IHDR width"), (40, "IDAT"), (len(png) // 2, "IDAT"),
                      (len(png) - 6, "IEND CRC")):
        cases.append(ImageCase(f"flip_png_{pos}.png", _flip(png, pos, 2), "reject", note=f"bit flipped in {what}"))
    return cases


def _bomb_cases(img: np.ndarray) -> list[ImageCase]:
    jpeg, bmp = encode(".jpg", img), encode(".bmp", img)
    return [
        ImageCase("bomb_100000x100000.png", png_bytes(100_000, 100_000, 2, 8, None), "reject",
                  note="header claims 10 gigapixels"),
        ImageCase("bomb_12000x12000.png", png_bytes(12_000, 12_000, 2, 8, None), "reject",
                  note="header claims 144 MP (over the 100 MP guard, under OpenCV's own limit)"),
        ImageCase("bomb_zeros_10500.png", zero_png(10_500), "reject",
                  note="complete valid PNG, 110 MP of zeros in ~110 kB"),
        ImageCase("bomb_65535x65535.jpg", _set_jpeg_size(jpeg, 65535, 65535), "reject"),
        ImageCase("bomb_50000x50000.bmp", _set_bmp_size(bmp, 50_000, 50_000), "reject"),
        ImageCase("zero_width.png", png_bytes(0, 10, 2, 8, None), "reject", note="0 x 10 image"),
    ]


def _misnamed_cases(img: np.ndarray) -> list[ImageCase]:
    return [
        ImageCase("empty.jpg", b"", "reject", note="zero bytes"),
        ImageCase("empty.png", b"", "reject", note="zero bytes"),
        ImageCase("png_named.jpg", encode(".png", img), "ok", shape=(H, W), note="content decides; warning"),
        ImageCase("jpeg_named.png", encode(".jpg", img), "ok", shape=(H, W), note="content decides; warning"),
        ImageCase("jpeg_named.bmp", encode(".jpg", img), "ok", shape=(H, W)),
        ImageCase("text_named.jpg", b"class cx cy w h\n0 0.5 0.5 0.1 0.1\n", "reject"),
        ImageCase("html_named.jpg", b"<html><body>404 Not Found</body></html>\n", "reject",
                  note="a scraper's error page"),
        ImageCase("gif_named.jpg", _gif_1x1(), "reject", detect="either", note="GIF: not a darknet format"),
        ImageCase("webp_named.jpg", encode(".webp", img), "reject", detect="either", note="WebP"),
        ImageCase("nul_bytes.png", b"\x00" * 4096, "reject"),
    ]


def image_cases() -> list[ImageCase]:
    """Every image case (names are unique)."""
    img = picture()
    cases = (_good_cases(img) + _exif_cases(img) + _truncated_cases(img) + _flipped_cases(img)
             + _bomb_cases(img) + _misnamed_cases(img))
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "duplicate image case names"
    return cases
