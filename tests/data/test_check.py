"""Dataset checks: every reject reason on a real bad file (made with cv2.imencode, then corrupted), a mixed
folder scan (each bad file named with its reason, 0 crashes, 0 bad files accepted, 0 files modified), decode
to 8-bit RGB, label-line validation (hypothesis: 300+ random label files never raise), the cache (reuse,
invalidation on change, rebuilt when damaged, never inside the dataset) and the CLI exit codes."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from darktune.data.check import cache_path, check_dataset, scan_folder
from darktune.data.formats.yolo import parse_label_bytes, read_label_file
from darktune.data.formats.image import decode_rgb, inspect_image_bytes, read_image_rgb, read_image_size
from darktune.errors import DarktuneError


@pytest.fixture(autouse=True)
def darktune_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("DARKTUNE_HOME", str(home))
    return home


def encode(ext: str, img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(ext, img)
    assert ok
    return buf.tobytes()


def picture(h=48, w=64, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), np.uint8), (5, 5), 2)


def png_with_size(width: int, height: int) -> bytes:
    """A real PNG whose IHDR (CRC fixed) declares another size: a decompression bomb's header."""
    data = bytearray(encode(".png", picture(8, 8)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg_with_size(width: int, height: int) -> bytes:
    data = bytearray(encode(".jpg", picture(8, 8)))
    pos = 2
    while data[pos + 1] not in (0xC0, 0xC1, 0xC2):
        pos += 2 + struct.unpack(">H", data[pos + 2: pos + 4])[0]
    data[pos + 5: pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def flip_png_idat(data: bytes) -> bytes:
    pos = data.index(b"IDAT") + 10
    return data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]


GOOD_LABEL = "0 0.5 0.5 0.2 0.3\n"

# name -> (bytes, label text or None, expected severity, expected reason fragment)
BAD_IMAGES = {
    "zero.jpg": (b"", GOOD_LABEL, "zero-byte"),
    "trunc.jpg": (encode(".jpg", picture())[:-300], GOOD_LABEL, "truncated JPEG"),
    "no_eoi.jpg": (encode(".jpg", picture())[:-2], GOOD_LABEL, "truncated JPEG"),
    "trunc.png": (encode(".png", picture())[:-40], GOOD_LABEL, "truncated PNG"),
    "no_iend.png": (encode(".png", picture())[:-12], GOOD_LABEL, "no IEND"),
    "crc.png": (flip_png_idat(encode(".png", picture())), GOOD_LABEL, "CRC mismatch"),
    "trunc.bmp": (encode(".bmp", picture())[:-500], GOOD_LABEL, "truncated BMP"),
    "garbage.jpg": (bytes(np.random.default_rng(1).integers(0, 256, 500, np.uint8)), GOOD_LABEL, "not a JPEG"),
    "badhead.jpg": (b"\xff\xd8\xff" + b"\x00" * 64, GOOD_LABEL, "corrupt JPEG header"),
    "bomb.png": (png_with_size(20000, 20000), GOOD_LABEL, "too large: 20000x20000 = 400 MP"),
    "bomb.jpg": (jpeg_with_size(65000, 60000), GOOD_LABEL, "decompression-bomb"),
    "anim.gif": (b"GIF89a" + b"\x00" * 40, None, "unsupported format GIF"),
    "label_fields.jpg": (encode(".jpg", picture()), "0 0.5 0.5 0.2\n", "expected 5 fields"),
    "label_commas.jpg": (encode(".jpg", picture()), "0,0.5,0.5,0.2,0.2\n", "commas"),
    "label_float_class.jpg": (encode(".jpg", picture()), "0.0 0.5 0.5 0.2 0.2\n", "not a non-negative integer"),
    "label_neg_class.jpg": (encode(".jpg", picture()), "-1 0.5 0.5 0.2 0.2\n", "not a non-negative integer"),
    "label_class_range.jpg": (encode(".jpg", picture()), "2 0.5 0.5 0.2 0.2\n", "out of range"),
    "label_nan.jpg": (encode(".jpg", picture()), "0 nan 0.5 0.2 0.2\n", "not a finite number"),
    "label_inf.jpg": (encode(".jpg", picture()), "0 0.5 1e999 0.2 0.2\n", "not a finite number"),
    "label_centre.jpg": (encode(".jpg", picture()), "0 1.5 0.5 0.2 0.2\n", "centre"),
    "label_zero_w.jpg": (encode(".jpg", picture()), "0 0.5 0.5 0 0.2\n", "size"),
    "label_big_h.jpg": (encode(".jpg", picture()), "0 0.5 0.5 0.2 1.5\n", "size"),
    "label_outside.jpg": (encode(".jpg", picture()), "0 0.95 0.5 0.2 0.2\n", "outside the image"),
    "label_binary.jpg": (encode(".jpg", picture()), b"0 0.5 \xff\xfe 0.2 0.2\n", "not UTF-8"),
}
WARN_IMAGES = {
    "wrong_ext.jpg": (encode(".png", picture()), GOOD_LABEL, "content is PNG"),
    "bom.jpg": (encode(".jpg", picture()), "\ufeff" + GOOD_LABEL, "byte-order mark"),
    "dup.png": (encode(".png", picture()), GOOD_LABEL + "1 0.2 0.2 0.1 0.1\n" + GOOD_LABEL, "duplicate of line 1"),
}
GOOD_IMAGES = {
    "ok.jpg": (encode(".jpg", picture()), GOOD_LABEL + "\n\n1 0.1 0.1 0.2 0.2\r\n"),
    "ok_edge.png": (encode(".png", picture()), "1 0.1 0.1 0.2 0.2\n0 0.9995 0.5 0.001 0.5\n"),  # within 1e-3
    "nolabel.jpg": (encode(".jpg", picture()), None),
    "empty_label.bmp": (encode(".bmp", picture()), ""),
    "gray.png": (encode(".png", picture()[:, :, 0]), GOOD_LABEL),
    "rgba.png": (encode(".png", np.dstack([picture(), np.full((48, 64), 128, np.uint8)])), GOOD_LABEL),
    "deep.png": (encode(".png", (picture().astype(np.uint16) * 257)), GOOD_LABEL),
    "gray.jpg": (encode(".jpg", picture()[:, :, 0]), GOOD_LABEL),
}


def _write(folder: Path, name: str, data: bytes, label) -> Path:
    path = folder / name
    path.write_bytes(data)
    if label is not None:
        path.with_suffix(".txt").write_bytes(label if isinstance(label, bytes) else label.encode())
    return path


@pytest.fixture
def mixed(tmp_path) -> Path:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "obj.names").write_text("window\ndoor\n")
    for table in (BAD_IMAGES, WARN_IMAGES):
        for name, (data, label, _) in table.items():
            _write(folder, name, data, label)
    for name, (data, label) in GOOD_IMAGES.items():
        _write(folder, name, data, label)
    (folder / "orphan.txt").write_text(GOOD_LABEL)
    (folder / "notes.md").write_text("not an image")
    (folder / "noext").write_bytes(encode(".jpg", picture()))  # an image without extension: found by content
    return folder


def _tree_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_mixed_folder_scan_names_every_bad_file_and_modifies_nothing(mixed):
    before = _tree_hash(mixed)
    report = scan_folder(mixed, progress=False)
    assert _tree_hash(mixed) == before  # 0 files modified, none added (the cache lives in DARKTUNE_HOME)
    good = {p.name for p, _ in report.good}
    errors = {}
    for p in report.problems:
        errors.setdefault((Path(p.path).name, p.severity), []).append(p.reason)
    for name, (_, label, reason) in BAD_IMAGES.items():
        assert name not in good, name  # 0 bad files accepted
        txt = Path(name).with_suffix(".txt").name
        found = errors.get((name, "error"), []) + errors.get((txt, "error"), [])
        assert any(reason in r for r in found), (name, found)
    for name, (_, label, reason) in WARN_IMAGES.items():
        assert name in good, name
        txt = Path(name).with_suffix(".txt").name
        found = errors.get((name, "warning"), []) + errors.get((txt, "warning"), [])
        assert any(reason in r for r in found), (name, found)
    assert good == set(GOOD_IMAGES) | set(WARN_IMAGES) | {"noext"}
    assert report.n_skipped_images == len(BAD_IMAGES)
    assert report.n_images == len(BAD_IMAGES) + len(WARN_IMAGES) + len(GOOD_IMAGES) + 1
    assert report.n_missing_labels == 3  # nolabel.jpg, anim.gif, noext
    assert ("orphan.txt", "warning") in errors and ("notes.md", "error") not in errors
    labels = dict((p.name, lab) for p, lab in report.good)
    assert labels["ok.jpg"].shape == (2, 5) and labels["ok.jpg"].dtype == np.float32
    assert labels["dup.png"].shape == (2, 5) and labels["nolabel.jpg"].shape == (0, 5)
    assert all(p.line == 1 for p in report.problems if "label_" in p.path)


def test_decode_to_8bit_rgb():
    gray = np.full((4, 5), 77, np.uint8)
    assert decode_rgb(encode(".png", gray)).tolist() == np.full((4, 5, 3), 77).tolist()
    bgra = np.zeros((3, 3, 4), np.uint8)
    bgra[:] = (10, 20, 30, 40)
    rgb = decode_rgb(encode(".png", bgra))
    assert rgb.dtype == np.uint8 and rgb.shape == (3, 3, 3) and rgb[0, 0].tolist() == [30, 20, 10]
    deep = np.zeros((2, 2, 3), np.uint16)
    deep[0, 0] = (65535, 257 * 100, 0)
    out = decode_rgb(encode(".png", deep))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 100, 255]
    gray16 = np.full((2, 2), 257 * 200, np.uint16)
    assert decode_rgb(encode(".png", gray16))[1, 1].tolist() == [200, 200, 200]


def test_read_image_rgb_and_size(tmp_path):
    p = tmp_path / "a.jpg"
    p.write_bytes(encode(".jpg", picture(30, 40)))
    assert read_image_rgb(p).shape == (30, 40, 3) and read_image_size(p) == (40, 30)
    (tmp_path / "t.jpg").write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DarktuneError, match="t.jpg: truncated JPEG"):
        read_image_rgb(tmp_path / "t.jpg")
    (tmp_path / "b.png").write_bytes(png_with_size(50000, 50000))
    with pytest.raises(DarktuneError, match="too large"):
        read_image_rgb(tmp_path / "b.png")
    with pytest.raises(DarktuneError, match="not found"):
        read_image_size(tmp_path / "missing.jpg")


def test_bomb_guard_does_not_decode(monkeypatch):
    calls = []
    monkeypatch.setattr(cv2, "imdecode", lambda *a: calls.append(1))
    _, found, _ = inspect_image_bytes(Path("b.png"), png_with_size(12000, 9000))
    assert calls == [] and "too large" in found[0][1]


# ----------------------------------------------------------------------------------------- obj.data


def make_obj_data(root: Path, names: dict[str, tuple[bytes, str | None]], valid: list[str] = ()) -> Path:
    images = root / "images"
    images.mkdir(parents=True)
    for name, (data, label) in names.items():
        _write(images, name, data, label)
    (root / "obj.names").write_text("window\ndoor\n")
    train = [n for n in names if n not in valid]
    (root / "train.txt").write_text("".join(f"images/{n}\n" for n in train) + "images/missing.jpg\n")
    (root / "valid.txt").write_text("".join(f"images/{n}\n" for n in valid))
    (root / "obj.data").write_text("classes=2\ntrain=train.txt\nvalid=valid.txt\nnames=obj.names\n")
    return root / "obj.data"


def test_check_dataset_api_and_strict(tmp_path):
    obj = make_obj_data(tmp_path / "ds", {"a.jpg": (encode(".jpg", picture()), GOOD_LABEL),
                                          "b.jpg": (encode(".jpg", picture())[:-10], GOOD_LABEL),
                                          "c.jpg": (encode(".jpg", picture()), "0 0.5 0.5 0.1 0.1\n")},
                        valid=["c.jpg"])
    report = check_dataset(obj, "train", progress=False)
    assert [p.name for p, _ in report.good] == ["a.jpg"]
    np.testing.assert_allclose(report.good[0][1], [[0, 0.5, 0.5, 0.2, 0.3]])
    assert report.n_skipped_images == 2 and report.n_images == 3
    assert {Path(p.path).name for p in report.problems} == {"b.jpg", "missing.jpg"}
    assert check_dataset(obj, "valid", progress=False).n_boxes == 1
    with pytest.raises(DarktuneError, match="b.jpg: error: truncated JPEG"):
        check_dataset(obj, "train", strict=True, progress=False)
    with pytest.raises(DarktuneError):
        check_dataset(obj, "test")
    json.dumps(report.to_dict())


def test_cache_reuse_invalidation_and_damage(tmp_path, darktune_home):
    obj = make_obj_data(tmp_path / "ds", {f"{i}.jpg": (encode(".jpg", picture(seed=i)), GOOD_LABEL) for i in range(4)})
    first = check_dataset(obj, progress=False)
    assert first.n_cache_hits == 0 and len(first.good) == 4
    files = list((darktune_home / "cache" / "checks").glob("*.json"))
    assert len(files) == 1 and not list((tmp_path / "ds").rglob("*.json"))
    second = check_dataset(obj, progress=False)  # files are "racy" (just written): re-hashed, still reused
    assert second.n_cache_hits == 4
    # same size, new content: must be re-checked
    label = tmp_path / "ds" / "images" / "1.txt"
    label.write_text("5 0.5 0.5 0.2 0.3\n")
    third = check_dataset(obj, progress=False)
    assert third.n_cache_hits == 3 and any("out of range" in p.reason for p in third.problems)
    assert len(third.good) == 3
    # an old entry (not racy) with matching stats is reused without reading
    os.utime(label, ns=(1_000_000_000, 1_000_000_000))
    check_dataset(obj, progress=False)
    assert check_dataset(obj, progress=False).n_cache_hits == 4
    # damaged cache: rebuilt silently and counted, same result
    files[0].write_text("{not json")
    fourth = check_dataset(obj, progress=False)
    assert fourth.n_cache_rebuilt == 1 and fourth.n_cache_hits == 0
    assert [p for p, _ in fourth.good] == [p for p, _ in third.good]
    doc = json.loads(files[0].read_text())
    doc["entries"][next(iter(doc["entries"]))]["result"] = "garbage"
    doc["entries"][next(iter(doc["entries"]))]["checked_ns"] = 0
    files[0].write_text(json.dumps(doc))
    fifth = check_dataset(obj, progress=False)
    assert fifth.n_cache_rebuilt == 1 and len(fifth.good) == 3
    assert check_dataset(obj, cache=False, progress=False).n_cache_hits == 0


def test_cache_key_is_outside_the_dataset(tmp_path, darktune_home):
    assert cache_path("x").is_relative_to(darktune_home)


# ------------------------------------------------------------------------------------------- labels

TOKENS = st.sampled_from(["0", "1", "2", "-1", "0.5", "0.25", "1.0", "0", "1e-3", "nan", "inf", "-0.5", "1e999",
                          "0x10", "1_0", "١", "abc", ",", "0,5", "", " ", "\t", "\ufeff", "\x00", "5e-324"])


@st.composite
def label_text(draw):
    plausible = st.tuples(st.integers(0, 3), st.floats(0, 1), st.floats(0, 1), st.floats(0, 0.6),
                          st.floats(0, 0.6)).map(lambda t: f"{t[0]} {t[1]:.6f} {t[2]:.6f} {t[3]:.6f} {t[4]:.6f}")
    lines = draw(st.lists(st.one_of(
        plausible, plausible,
        st.lists(TOKENS, min_size=0, max_size=7).map(" ".join),
        st.tuples(st.integers(0, 3), *[st.one_of(st.floats(-0.2, 1.2), st.floats())] * 4).map(
            lambda t: " ".join(str(v) for v in t)),
        st.text(max_size=30)), max_size=12))
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    data = text.encode("utf-8", "surrogatepass") if draw(st.booleans()) else text.encode("utf-8", "replace")
    if draw(st.booleans()):
        data = draw(st.binary(max_size=40)) + data
    return data


@settings(max_examples=350, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=label_text())
def test_random_label_files_never_raise(tmp_path, data):
    path = tmp_path / "l.txt"
    path.write_bytes(data)
    rows, problems = read_label_file(path, 3)
    rows2, problems2 = parse_label_bytes(data, path, 3)
    assert np.array_equal(rows, rows2) and problems == problems2
    assert rows.dtype == np.float32 and rows.shape[1] == 5
    n_lines = data.count(b"\n") + 1
    for cls, cx, cy, w, h in rows.astype(float):
        assert cls == int(cls) and 0 <= cls < 3
        assert 0 <= cx <= 1 and 0 <= cy <= 1 and 0 < w <= 1 and 0 < h <= 1
        assert cx - w / 2 >= -1.001e-3 and cx + w / 2 <= 1 + 1.001e-3
    for p in problems:
        assert p.severity in ("error", "warning") and p.reason
        assert p.line is None or 1 <= p.line <= n_lines


def test_label_line_reasons_have_line_numbers(tmp_path):
    path = tmp_path / "l.txt"
    path.write_text("0 0.5 0.5 0.2 0.2\n\n1 0.5 0.5 0.2\n0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    rows, problems = read_label_file(path, 2)
    assert rows.shape == (1, 5)
    assert [(p.line, p.severity) for p in problems] == [(3, "error"), (4, "warning"), (5, "error")]
    rows, problems = read_label_file(tmp_path / "missing.txt", 2)
    assert rows.shape == (0, 5) and "not found" in problems[0].reason


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_check_exit_codes_and_json(tmp_path, capsys):
    from darktune.cli import main

    good = make_obj_data(tmp_path / "good", {"a.jpg": (encode(".jpg", picture()), GOOD_LABEL)})
    (tmp_path / "good" / "train.txt").write_text("images/a.jpg\n")
    assert main(["data", "check", str(good)]) == 0
    bad = make_obj_data(tmp_path / "bad", {"a.jpg": (encode(".jpg", picture())[:-5], GOOD_LABEL),
                                           "b.jpg": (encode(".png", picture()), GOOD_LABEL)}, valid=["b.jpg"])
    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "bad"), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [d["split"] for d in doc] == ["train", "valid"]
    reasons = [p["reason"] for d in doc for p in d["problems"]]
    assert any("truncated JPEG" in r for r in reasons) and any("content is PNG" in r for r in reasons)
    assert main(["data", "check", str(bad), "--strict"]) == 2
    assert "strict" in capsys.readouterr().err
    (tmp_path / "good" / "valid.txt").write_text("images/a.jpg\n")
    capsys.readouterr()
    assert main(["data", "check", str(good), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert any("both train and valid" in p["reason"] for p in doc[0]["problems"])


def test_cli_check_report_goes_to_stdout_together(tmp_path, capsys):
    """Both split summaries (the train one reporting errors, too) and the problem lines are on stdout, so
    `darktune data check DIR > report.txt` keeps them; --json prints only JSON there."""
    from darktune.cli import main

    bad = make_obj_data(tmp_path / "bad", {"a.jpg": (encode(".jpg", picture())[:-5], GOOD_LABEL),
                                           "b.jpg": (encode(".jpg", picture()), GOOD_LABEL)}, valid=["b.jpg"])
    capsys.readouterr()
    assert main(["data", "check", str(bad), "--no-cache"]) == 1
    out, err = capsys.readouterr()
    summaries = [line for line in out.splitlines() if "[train]" in line or "[valid]" in line]
    assert len(summaries) == 2 and "[train]" in summaries[0] and "[valid]" in summaries[1]
    assert "2 errors" in summaries[0] and "1 image, 1 good" in summaries[1]  # missing.jpg and a.jpg; plurals
    assert "truncated JPEG" in out and "[train]" not in err and "[valid]" not in err
    assert main(["data", "check", str(bad), "--json"]) == 1
    out, _ = capsys.readouterr()
    assert [d["split"] for d in json.loads(out)] == ["train", "valid"]


def test_one_class_is_said_in_the_singular(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    _write(folder, "a.jpg", encode(".jpg", picture()), "1 0.5 0.5 0.2 0.2\n")
    report = scan_folder(folder, 1, progress=False)
    assert any("(dataset has 1 class: 0..0)" in p.reason for p in report.problems)
    assert "1 image, 0 good" in report.summary() and "0 boxes, 1 error, 0 warnings" in report.summary()


def _with_exif_orientation(jpeg: bytes, orientation: int, big_endian: bool = False) -> bytes:
    o = ">" if big_endian else "<"
    tiff = (b"MM\x00*" if big_endian else b"II*\x00") + struct.pack(o + "IH", 8, 2)
    tiff += struct.pack(o + "HHII", 0x010F, 2, 4, 0)  # Make, before Orientation
    tiff += struct.pack(o + "HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def test_exif_orientation_is_a_warning_and_the_image_is_kept(tmp_path):
    from darktune.data.formats.image import exif_orientation

    jpeg = encode(".jpg", picture())
    for o, big in ((1, False), (6, False), (3, True), (8, True)):
        data = _with_exif_orientation(jpeg, o, big)
        assert exif_orientation(data, "jpeg") == o
        (tmp_path / f"o{o}.jpg").write_bytes(data)
        (tmp_path / f"o{o}.txt").write_text(GOOD_LABEL)
    assert exif_orientation(jpeg, "jpeg") is None and exif_orientation(b"\xff\xd8\xff\xe1\x00", "jpeg") is None
    report = scan_folder(tmp_path, n_classes=2, cache=False, progress=False)
    assert len(report.good) == 4 and report.n_errors == 0
    warned = {Path(p.path).name: p.reason for p in report.problems if p.severity == "warning"}
    assert sorted(warned) == ["o3.jpg", "o6.jpg", "o8.jpg"]
    assert "EXIF orientation is ignored" in warned["o6.jpg"] and "stored pixels" in warned["o6.jpg"]


@pytest.mark.parametrize("kind", ["fifo", "zero", "folder"])
def test_label_file_that_is_not_a_regular_file_is_reported_and_never_read(tmp_path, kind):
    """A FIFO (would block), /dev/zero (endless) or a folder named like the label: a warning naming it, the
    image kept without labels; import refuses it (or skips the image with --skip-bad)."""
    from darktune.data.formats.yolo import read_yolo

    (tmp_path / "a.jpg").write_bytes(encode(".jpg", picture()))
    label = tmp_path / "a.txt"
    {"fifo": lambda: os.mkfifo(label), "zero": lambda: label.symlink_to("/dev/zero"),
     "folder": label.mkdir}[kind]()
    (tmp_path / "obj.names").write_text("window\ndoor\n")
    report = scan_folder(tmp_path, cache=False, progress=False)
    assert len(report.good) == 1 and report.n_errors == 0 and report.n_missing_labels == 0
    assert [(p.path, p.severity) for p in report.problems] == [(str(label), "warning")]
    assert "not a regular file" in report.problems[0].reason
    with pytest.raises(DarktuneError, match="a.txt: label file is not a regular file"):
        read_yolo(tmp_path)
    ds = read_yolo(tmp_path, skip_bad=True)
    assert not ds.images and len(ds.skipped) == 1


def test_image_that_is_not_a_regular_file_is_an_error(tmp_path):
    from darktune.data.check import check_images

    os.mkfifo(tmp_path / "a.jpg")  # as listed in a train.txt: a folder scan lists regular files only
    report = check_images([tmp_path / "a.jpg"], 1, source="list", progress=False)
    assert not report.good and [p.reason for p in report.problems] == ["image is not a regular file (not read)"]


def test_huge_class_id_and_long_number_tokens_are_errors_not_crashes():
    rows, problems = parse_label_bytes(("9" * 5000 + " 0.5 0.5 0.2 0.2\n").encode(), "l.txt", None)
    assert len(rows) == 0 and problems[0].line == 1 and "5000 digits" in problems[0].reason
    rows, problems = parse_label_bytes(b"0000000001 0.5 0.5 0.2 0.2\n", "l.txt", 2)  # leading zeros are fine
    assert np.allclose(rows, [[1, 0.5, 0.5, 0.2, 0.2]])
    rows, problems = parse_label_bytes(("0 0." + "5" * 5000 + " 0.5 0.2 0.2\n").encode(), "l.txt", 2)
    assert len(rows) == 0 and "characters long" in problems[0].reason


# ------------------------------------------------------------------------------- missing files, named


def test_missing_image_is_counted_as_missing_not_as_without_label_file(tmp_path):
    """QA3: images/missing.jpg (listed, not on disk) was counted as "without label file" too."""
    obj = make_obj_data(tmp_path / "ds", {"a.jpg": (encode(".jpg", picture()), GOOD_LABEL),
                                          "b.jpg": (encode(".jpg", picture()), None)})
    report = check_dataset(obj, progress=False)
    assert (report.n_images, len(report.good), report.n_skipped_images) == (3, 2, 1)
    assert report.n_missing_images == 1 and report.missing_images == [tmp_path / "ds" / "images" / "missing.jpg"]
    assert report.n_missing_labels == 1 and [p.name for p in report.unlabelled_images] == ["b.jpg"]
    assert "3 images, 2 good, 1 skipped (1 not found), 1 without label file," in report.summary()
    doc = report.to_dict()
    assert doc["n_missing_images"] == 1 and doc["missing_images"] == [str(tmp_path / "ds" / "images" / "missing.jpg")]
    assert doc["images_without_label_file"] == [str(tmp_path / "ds" / "images" / "b.jpg")]
    cached = check_dataset(obj, progress=False)  # the same from the cache
    assert cached.n_cache_hits == 2 and cached.summary() == report.summary().replace("0 reused", "2 reused")


def test_cli_check_names_images_without_label_file(tmp_path, capsys):
    """They were only counted; now named (20 in the text, all in --json)."""
    from darktune.cli import main

    jpg = encode(".jpg", picture())
    names = {f"n{i:02}.jpg": (jpg, None) for i in range(25)} | {"a.jpg": (jpg, GOOD_LABEL)}
    obj = make_obj_data(tmp_path / "ds", names)
    assert main(["data", "check", str(obj)]) == 1  # missing.jpg
    out = capsys.readouterr().out
    named = [line for line in out.splitlines() if line.endswith(": no label file (used as an image without objects)")]
    assert len(named) == 20 and named[0] == f"{tmp_path / 'ds' / 'images' / 'n00.jpg'}: no label file (used as an " \
                                            "image without objects)"
    assert "... and 5 more images without a label file (all of them in --json)" in out
    assert "25 without label file" in out and "1 skipped (1 not found)" in out
    assert main(["data", "check", str(obj), "--json"]) == 1
    (train,) = json.loads(capsys.readouterr().out)
    assert len(train["images_without_label_file"]) == 25 and train["n_missing_labels"] == 25
    assert train["missing_images"] == [str(tmp_path / "ds" / "images" / "missing.jpg")]


def test_cache_limit_is_documented_next_to_no_cache(tmp_path, capsys):
    """The stat fast path trusts size + mtime: a same-size edit with the old mtime put back is not seen until
    --no-cache (documented, not changed: hashing every file each run would cost what the cache saves)."""
    from darktune.cli import main

    with pytest.raises(SystemExit):
        main(["data", "check", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--no-cache" in help_text and "size and mtime" in help_text and "touch -r" in help_text
    obj = make_obj_data(tmp_path / "ds", {"a.jpg": (encode(".jpg", picture()), GOOD_LABEL)})
    label = tmp_path / "ds" / "images" / "a.txt"
    for f in (label, label.with_suffix(".jpg")):  # old files: not "racy", the stat fast path applies
        os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert check_dataset(obj, progress=False).n_errors == 1  # missing.jpg
    label.write_text(GOOD_LABEL.replace("0 ", "9 ", 1))  # same size, class 9 out of range
    os.utime(label, ns=(1_000_000_000, 1_000_000_000))
    assert check_dataset(obj, progress=False).n_errors == 1  # stale, as documented
    assert check_dataset(obj, cache=False, progress=False).n_errors == 2
