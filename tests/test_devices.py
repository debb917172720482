"""`darktune.devices`: one check of --device for every command; a wrong device is one line naming the option and
the value (valid forms, CUDA missing from this torch build, no such GPU), never a torch traceback."""

from __future__ import annotations

import pytest
import torch

from darktune.devices import parse_device, resolve_device
from darktune.errors import DarktuneError


def _fake_cuda(monkeypatch, built: bool = True, count: int = 1) -> None:
    """Pretend torch has CUDA with `count` GPUs (only what resolve_device asks)."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: built and count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count if built else 0)


def test_valid_forms():
    assert resolve_device("cpu") == torch.device("cpu")
    assert parse_device("cuda") == torch.device("cuda") and parse_device("cuda:3") == torch.device("cuda", 3)
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("text", ["gpu", "tpu", "mps", "foo", "CPU", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "",
                                  " cpu"])
def test_other_names_are_refused_with_the_valid_forms(text):
    with pytest.raises(DarktuneError) as info:
        resolve_device(text, "--devices")
    message = str(info.value)
    assert message.startswith(f"--devices {text!r} is not a device") and "cpu, cuda or cuda:N" in message


def test_cuda_without_cuda(monkeypatch):
    _fake_cuda(monkeypatch, built=False)
    with pytest.raises(DarktuneError, match=r"^--device cuda: this torch build \(.*\) has no CUDA support"):
        resolve_device("cuda")
    assert parse_device("cuda:1") == torch.device("cuda", 1)  # the form alone is fine (ONNX Runtime, OpenCV)
    _fake_cuda(monkeypatch, built=True, count=0)
    with pytest.raises(DarktuneError, match="^--device cuda:0: torch sees no CUDA device"):
        resolve_device("cuda:0")


def test_no_such_gpu_names_the_index(monkeypatch):
    _fake_cuda(monkeypatch, count=2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(DarktuneError, match=r"^--device cuda:7: no such GPU; torch sees 2 CUDA devices "
                                            r"\(cuda:0 to cuda:1\)$"):
        resolve_device("cuda:7")


def _commands(coco, photo: str, data: str, out: str) -> dict[str, list[str]]:
    """Every command that takes --device, with otherwise good arguments (data and out need not exist: the
    device is checked first)."""
    model = ["--cfg", str(coco.cfg), "--weights", str(coco.weights)]
    return {
        "train": ["train", "--cfg", str(coco.cfg), "--data", data, "--out", out, "--iterations", "1"],
        "map": ["map", *model, "--data", data],
        "detect": ["detect", *model, photo],
        "detect-onnxruntime": ["detect", *model, "--backend", "onnxruntime", photo],
        "bench-train": ["bench", "train", "--iterations", "1", "--repeats", "1", "--sizes", "64"],
        "bench-infer": ["bench", "infer", *model, "--backend", "torch", "--iters", "1", "--warmup", "0"],
    }


@pytest.mark.parametrize("command", ["train", "map", "detect", "detect-onnxruntime", "bench-train",
                                     "bench-infer"])
@pytest.mark.parametrize("device", ["gpu", "tpu", "mps", "foo", "cuda:7"])
def test_every_command_refuses_a_wrong_device_in_one_line(command, device, coco, photo_path, tmp_path, capsys,
                                                          monkeypatch):
    from darktune.cli import main

    if device == "cuda:7":  # a machine with one GPU
        if command == "detect-onnxruntime":
            pytest.skip("ONNX Runtime's CUDA provider: not torch's to count")
        _fake_cuda(monkeypatch, count=1)
    argv = _commands(coco, str(photo_path), str(tmp_path / "obj.data"), str(tmp_path / "run"))[command]
    rc = main([*argv, "--device", device])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert err.count("\n") == 1 and err.startswith("darktune: error: --device"), err
    assert device in err and ("cuda:0" in err if device == "cuda:7" else "cpu, cuda or cuda:N" in err), err
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(torch.backends.cuda.is_built(), reason="a CUDA build of torch")
@pytest.mark.parametrize("command", ["train", "map", "detect", "bench-train", "bench-infer"])
def test_cuda_on_a_cpu_only_torch_says_so(command, coco, photo_path, tmp_path, capsys):
    from darktune.cli import main

    argv = _commands(coco, str(photo_path), str(tmp_path / "obj.data"), str(tmp_path / "run"))[command]
    rc = main([*argv, "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "--device cuda: this torch build" in err, err


def test_the_training_library_checks_the_device_too(tmp_path):
    """`darktune experiment` and `bench train` call train() directly: the same one-line error."""
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    with pytest.raises(DarktuneError, match="^--device 'gpu' is not a device"):
        train(TrainConfig(cfg="x.cfg", data="x.data", out=str(tmp_path / "run"), device="gpu"), progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, option", [
    (["reproduce", "--profile", "smoke", "--device", "gpu"], "--device 'gpu'"),
    (["reproduce", "--profile", "smoke", "--device", "cuda:7"], "--device cuda:7"),
    (["experiment", "SPEC", "--device", "gpu"], "--device 'gpu'"),
    (["experiment", "SPEC", "--device", "cuda:7"], "--device cuda:7"),
])
def test_grids_refuse_a_device_before_writing_anything(argv, option, tmp_path, capsys, monkeypatch):
    """Before, `reproduce --device cuda` on a machine without one generated the data sets and then failed every
    run, and `experiment --devices cuda:0` (now --device) wrote an empty report."""
    from darktune.cli import main

    _fake_cuda(monkeypatch, count=1)
    (tmp_path / "obj.data").write_text("classes = 1\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"grid:\n  data: {tmp_path / 'obj.data'}\n  starts: [scratch]\n  iterations: 2\n")
    argv = [str(spec) if a == "SPEC" else a for a in argv]
    rc = main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and option in err, err
    assert not (tmp_path / "out").exists()
