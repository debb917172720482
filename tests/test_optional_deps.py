"""A missing optional dependency (pyproject's [export] extra: onnx, onnxruntime, onnxscript) gives one line naming
the extra to install and exit status 2, never a traceback. Each module is hidden from a CLI subprocess by a
sitecustomize that sets sys.modules[name] = None (import then fails as if it were not installed)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXPORT_EXTRA = ("onnx", "onnxruntime", "onnxscript")


def run_without(modules: tuple[str, ...], args: list[str], tmp_path: Path, **env_changes: str | None
                ) -> subprocess.CompletedProcess:
    shim = tmp_path / "shim"
    shim.mkdir(exist_ok=True)
    (shim / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")])}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-m", "darktune", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=600)


def assert_one_line(result: subprocess.CompletedProcess, module: str) -> None:
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("darktune: error:")]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(errors) == 1 and errors == lines[-1:], result.stderr
    assert f"'{module}'" in errors[0] and "pip install 'darktune[export]'" in errors[0], errors[0]


def _model(coco) -> list[str]:
    return ["--cfg", str(coco.cfg), "--weights", str(coco.weights)]


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_export_onnx_without_the_extra_says_what_to_install(coco, tmp_path, module):
    out = tmp_path / "model.onnx"
    result = run_without((module,), ["export", "onnx", *_model(coco), "--out", str(out)], tmp_path)
    assert_one_line(result, module)
    assert not out.exists()


def test_export_onnx_needs_no_onnxscript(coco, tmp_path):
    """The TorchScript-based exporter darktune uses does not import onnxscript: the export runs without it."""
    out = tmp_path / "model.onnx"
    result = run_without(("onnxscript",), ["export", "onnx", *_model(coco), "--out", str(out)], tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert out.is_file()


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_detect_onnxruntime_without_the_extra_says_what_to_install(coco, photo_path, tmp_path, module):
    # a fresh home: with an ONNX export cached by another test, onnx itself is rightly not needed
    result = run_without((module,), ["detect", str(photo_path), *_model(coco), "--backend", "onnxruntime"],
                         tmp_path, DARKTUNE_HOME=str(tmp_path / "home"))
    assert_one_line(result, module)


def test_detect_given_onnx_model_without_onnxruntime(coco, photo_path, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not read")
    result = run_without(("onnxruntime",), ["detect", str(photo_path), "--onnx", str(fake)], tmp_path)
    assert_one_line(result, "onnxruntime")


def test_bench_infer_onnxruntime_without_the_extra(coco, tmp_path):
    result = run_without(EXPORT_EXTRA, ["bench", "infer", *_model(coco), "--backend", "onnxruntime",
                                        "--iters", "1", "--warmup", "0"], tmp_path)
    assert_one_line(result, "onnx")


def test_detect_auto_skips_runtimes_not_installed(coco, photo_path, tmp_path):
    """--backend auto (the default) times only what is installed and says what it skipped."""
    import json

    result = run_without(EXPORT_EXTRA, ["detect", str(photo_path), *_model(coco), "--json"], tmp_path,
                         DARKTUNE_BACKEND=None, DARKTUNE_HOME=str(tmp_path / "home"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    record = json.loads(result.stdout)[0]
    assert record["backend"] in ("torch", "opencv")
    assert "onnxruntime skipped: onnxruntime not installed" in record["backend_reason"]
