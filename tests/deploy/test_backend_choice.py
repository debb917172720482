"""`--backend auto` (darktune.deploy.backend_choice): the probe's cache per machine and model shape, its recovery from a
damaged cache file, DARKTUNE_BACKEND, and what `detect --json` says about the runtime that ran."""

from __future__ import annotations

import json

import pytest

from darktune.deploy import backend_choice
from darktune.cli import main


@pytest.fixture
def auto(monkeypatch, tmp_path):
    """auto with a private cache, torch and OpenCV only (no export), and a probe that returns fixed medians
    (opencv fastest) and counts its calls."""
    monkeypatch.delenv("DARKTUNE_BACKEND", raising=False)
    monkeypatch.setenv("DARKTUNE_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(backend_choice, "installed", lambda: (["torch", "opencv"], {"onnxruntime": "test"}))
    calls = []

    def probe(backends, batch):
        calls.append([b.name for b in backends])
        return {"torch": 30.0, "opencv": 20.0}

    monkeypatch.setattr(backend_choice, "probe", probe)
    return calls


def test_probe_once_then_cached(coco, auto, tmp_path):
    backend, choice = backend_choice.choose(coco.cfg, coco.weights)
    assert (backend.name, choice.backend) == ("opencv", "opencv") and auto == [["torch", "opencv"]]
    assert "fastest of 2 probed on this machine (probed now): opencv 20.0 ms, torch 30.0 ms" in choice.reason
    backend, choice = backend_choice.choose(coco.cfg, coco.weights)
    assert backend.name == "opencv" and len(auto) == 1 and "cached in" in choice.reason
    backend_choice.choose(coco.cfg, coco.weights, size=320)  # another model shape: probed again
    assert len(auto) == 2
    entries = json.loads((tmp_path / "home" / backend_choice.CACHE_NAME).read_text())["entries"]
    assert len(entries) == 2


@pytest.mark.parametrize("damage", [b"", b"{not json", b'{"version": 1, "entries": []}', b"\xff\xfe",
                                    b'{"version": 1, "entries": {"k": {"medians_ms": {"torch": "x"}}}}'])
def test_damaged_cache_is_ignored_and_rewritten(coco, auto, tmp_path, damage):
    cache = tmp_path / "home" / backend_choice.CACHE_NAME
    cache.parent.mkdir(parents=True)
    cache.write_bytes(damage)
    backend, choice = backend_choice.choose(coco.cfg, coco.weights)
    assert backend.name == "opencv" and len(auto) == 1
    assert json.loads(cache.read_text())["version"] == backend_choice.CACHE_VERSION


def test_cached_winner_not_installed_any_more_is_skipped(coco, auto, monkeypatch):
    backend_choice.choose(coco.cfg, coco.weights)
    monkeypatch.setattr(backend_choice, "installed", lambda: (["torch"], {"opencv": "gone"}))
    backend, choice = backend_choice.choose(coco.cfg, coco.weights)
    assert backend.name == "torch" and len(auto) == 1 and "opencv skipped: gone" in choice.reason


def test_env_names_the_backend_without_a_probe(coco, auto, monkeypatch):
    monkeypatch.setenv("DARKTUNE_BACKEND", "torch")
    backend, choice = backend_choice.choose(coco.cfg, coco.weights)
    assert backend.name == "torch" and choice.reason == "DARKTUNE_BACKEND=torch" and auto == []
    monkeypatch.setenv("DARKTUNE_BACKEND", "tensorrt")
    with pytest.raises(backend_choice.DarktuneError, match="DARKTUNE_BACKEND=tensorrt"):
        backend_choice.choose(coco.cfg, coco.weights)


def test_detect_json_says_which_runtime_ran_and_why(coco, auto, photo_path, capsys):
    assert main(["detect", str(photo_path), "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)[0]
    assert record["backend"] == "opencv" and record["backend_reason"].startswith("fastest of 2 probed")
    assert "darktune: note: backend opencv: fastest of 2" in captured.err
    assert "tie" in {d["name"] for d in record["detections"]}
    assert main(["detect", str(photo_path), "--cfg", str(coco.cfg), "--weights", str(coco.weights), "--json",
                 "--backend", "torch"]) == 0
    record = json.loads(capsys.readouterr().out)[0]
    assert (record["backend"], record["backend_reason"]) == ("torch", "--backend torch") and len(auto) == 1


def test_real_probe_times_each_runtime(coco, monkeypatch, tmp_path):
    """The probe itself (no stub): every runtime given gets a median, in ms."""
    backends = [backend_choice.build(n, coco.cfg, coco.weights, size=160, device="cpu", batch=1, threads=1)
                for n in ("torch", "opencv")]
    monkeypatch.setattr(backend_choice, "PROBE_ITERS", 2)
    monkeypatch.setattr(backend_choice, "PROBE_WARMUP", 1)
    medians = backend_choice.probe(backends, 1)
    assert set(medians) == {"torch", "opencv"} and all(v > 0 for v in medians.values())


def test_first_run_says_what_it_does_while_it_does_it(coco, auto, monkeypatch):
    """A new model shape: a note before the probe, one before the ONNX export (minutes under load on a busy
    machine otherwise pass in silence), one before the timing; a second run: no note."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(backend_choice, "installed", lambda: (["torch", "onnxruntime"], {}))
    monkeypatch.setattr(backend_choice, "probe", lambda backends, batch: {"torch": 30.0, "onnxruntime": 20.0})
    notes = []
    backend, _ = backend_choice.choose(coco.cfg, coco.weights, size=64, note=notes.append)
    assert backend.name == "onnxruntime" and len(notes) == 3
    assert notes[0].startswith("first run of this model shape on this machine: timing torch, onnxruntime")
    assert notes[1].startswith("exporting this model to ONNX for onnxruntime (once per weights file")
    assert notes[2] == f"timing torch, onnxruntime: {backend_choice.PROBE_ITERS} calls each, taking turns"
    notes.clear()
    backend_choice.choose(coco.cfg, coco.weights, size=64, note=notes.append)
    assert notes == []
