"""Sizes that multiply into memory: network sizes, batches and workers past what the machine holds, cfg keys
that ask for gigabytes (multi-scale's random, pooling and convolution windows), and a CPU out of memory. Each
is refused before anything is allocated, in one line of advice naming the flag (or the cfg file and line), by
the estimate of darktune.darknet.memory; an allocator's failure that still happens gets the same one line.
"""

from __future__ import annotations

import pytest
import torch

from corpus import datasets
from corpus.harness import exception_outcome
from reliability_table import tally  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried to "
           "allocate 23622320128 bytes. Error code 12 (Cannot allocate memory)")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cfg, obj.data, weights, an image) of a tiny dataset and a random model."""
    root = tmp_path_factory.mktemp("memory")
    cfg, obj = datasets.make_tiny(root)
    weights = datasets.random_weights(cfg, root / "w.weights")
    return cfg, obj, weights, obj.parent / "images" / "im0.jpg"


def _one_line(main, argv, capsys, *words) -> tuple[str, str]:
    """handled: exit 2 and exactly one 'darktune: error:' line holding every word; else what happened."""
    try:
        rc = main(argv)
    except Exception as exc:  # noqa: BLE001
        return exception_outcome(exc)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("darktune: error:")]
    if rc == 2 and len(err) == 1 and all(w in err[0] for w in words):
        return "handled", ""
    return ("silent" if rc == 0 else "crash"), f"exit {rc}: {err}"


def test_sizes_past_the_machine_are_refused_before_allocating(tiny, tmp_path, monkeypatch, capsys, tally):
    """detect/map/train/export at sizes, batches and worker counts whose tensors exceed what the machine has
    free: one line with both figures and the flags to lower, before the model or a batch is allocated (today:
    `train --batch 100000000` and `export onnx --batch 1000000000` end in an allocator's traceback)."""
    from darktune.cli import main
    from darktune.darknet import memory

    cfg, obj, weights, image = tiny
    t = tally("memory")
    model = ["--cfg", str(cfg), "--weights", str(weights)]
    train = ["train", "--cfg", str(cfg), "--data", str(obj), "--iterations", "1", "--no-progress"]
    real = [  # refused by this machine's real memory: sizes no machine has
        ("train-batch-1e8", train + ["--batch", "100000000", "--out", str(tmp_path / "r1")], ("--batch", "GiB")),
        ("train-batch-size", train + ["--batch", "4096", "--size", "4096", "--out", str(tmp_path / "r2")],
         ("--batch", "--size", "GiB")),
        ("export-batch-1e9", ["export", "onnx", *model, "--batch", "1000000000", "--out", str(tmp_path / "x.onnx")],
         ("--batch", "GiB")),
    ]
    for name, argv, words in real:
        t.case(f"real:{name}", *_one_line(main, argv, capsys, *words))
    monkeypatch.setattr(memory, "available_memory", lambda: 64 << 20)  # a machine with 64 MiB free
    small = [
        ("detect-size-2048", ["detect", str(image), *model, "--size", "2048"], ("--size", "GiB")),
        ("detect-2-workers", ["detect", str(image), str(image), *model, "--size", "1024", "--workers", "2"],
         ("--size", "--workers")),
        ("map-size-2048", ["map", *model, "--data", str(obj), "--size", "2048"], ("--size",)),
        ("train-size-1024", train + ["--batch", "2", "--size", "1024", "--out", str(tmp_path / "r3")],
         ("--batch", "--subdivisions")),
        ("export-size-2048", ["export", "onnx", *model, "--size", "2048", "--out", str(tmp_path / "z.onnx")],
         ("--size",)),
    ]
    for name, argv, words in small:
        t.case(f"64MiB:{name}", *_one_line(main, argv, capsys, *words))
    for p in ("x.onnx", "z.onnx"):
        assert not (tmp_path / p).exists()
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, bad


def test_multi_scale_is_estimated_at_its_largest_size(tiny, tmp_path, monkeypatch, capsys, tally):
    """A cfg whose [yolo] random=2 trains at up to twice --size: the estimate is made there and says so."""
    from darktune.cli import main
    from darktune.darknet import memory
    from darktune.train.inputs import size_range

    cfg, obj, _, _ = tiny
    text = cfg.read_text().replace("random=0", "random=2")
    multi = tmp_path / "multi.cfg"
    multi.write_text(text)
    need_at = {}
    real = memory.estimate_bytes

    def spy(spec, batch, training=False):
        need_at[spec.net.width] = real(spec, batch, training)
        return real(spec, batch, training)

    monkeypatch.setattr(memory, "estimate_bytes", spy)
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)
    argv = ["train", "--cfg", str(multi), "--data", str(obj), "--iterations", "1", "--batch", "2", "--size", "320",
            "--out", str(tmp_path / "run"), "--no-progress"]
    largest = size_range(320, 2.0)[1]
    outcome = _one_line(main, argv, capsys, "multi-scale", str(largest), "--no-multi-scale")
    assert tally("memory").case("multi-scale:random=2", *outcome) == "handled", (outcome, need_at)
    assert largest > 320 and max(need_at) == largest


CFG_KEYS = [  # (name, section text to find, replacement): cfg keys whose values ask for gigabytes
    ("random=1000", "random=0", "random=1000"),
    ("random=-1", "random=0", "random=-1"),
    ("random=nan-like", "random=0", "random=1e30"),
    ("maxpool-size=4001", "[maxpool]\nsize=2", "[maxpool]\nsize=4001"),
    ("maxpool-stride=1000", "[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=2\nstride=1000"),
    ("maxpool-padding=100000", "[maxpool]\nsize=2\nstride=2", "[maxpool]\nsize=2\nstride=2\npadding=100000"),
    ("conv-size=4001", "size=3\nstride=1", "size=4001\nstride=1"),
    ("conv-dilation=5000", "size=3\nstride=1", "size=3\nstride=1\ndilation=5000"),
    ("conv-padding=100000", "size=3\nstride=1\npad=1", "size=3\nstride=1\npadding=100000"),
    ("upsample-stride=4096", "[upsample]\nstride=2", "[upsample]\nstride=4096"),
]


def test_cfg_keys_that_ask_for_gigabytes_are_refused_at_parse(tmp_path, tally):
    """random=1000 (multi-scale up to 1000x the size), a maxpool of size 4001 (a padded copy 4000 pixels
    wider), and their kind: refused when the cfg is read, naming the file and the key's line (today: parsed,
    then 23 to 33 GB asked of the allocator)."""
    from darktune.darknet.cfg import parse_cfg
    from darktune.errors import DarktuneError

    t = tally("memory")
    base = datasets.tiny_cfg_text()
    for name, old, new in CFG_KEYS:
        assert old in base, old
        text = base.replace(old, new, 1)
        path = tmp_path / f"{name}.cfg"
        path.write_text(text)
        changed = next(i for i, line in enumerate(new.split("\n")) if line not in old.split("\n"))
        key_line = text[:text.index(new)].count("\n") + 1 + changed
        try:
            parse_cfg(path)
            t.case(f"cfg:{name}", "silent", "parsed")
        except DarktuneError as exc:
            ok = f"{path}:{key_line}:" in str(exc)
            t.case(f"cfg:{name}", "handled" if ok else "crash", "" if ok else str(exc))
        except Exception as exc:  # noqa: BLE001
            t.case(f"cfg:{name}", *exception_outcome(exc, str(path)))
    bad = {k: v for k, v in t.cases.items() if v[0] != "handled"}
    assert not bad, bad


def _cpu_oom(*a, **k):
    raise RuntimeError(CPU_OOM)


def _numpy_oom(*a, **k):
    raise MemoryError("Unable to allocate 11.2 TiB for an array with shape (1000000000, 3, 64, 64) and data type "
                      "uint8")


@pytest.mark.parametrize("where", ["train-step", "train-batches", "map", "detect", "export"])
def test_cpu_out_of_memory_gives_the_advice_cuda_gets(where, tiny, tmp_path, monkeypatch, tally, capsys):
    """The CPU allocator's RuntimeError (and numpy's MemoryError) in train, map, detect and export: one line
    'out of memory' with the flags to lower, as CUDA's out of memory gets (today: a traceback)."""
    from darktune.cli import main
    from darktune.deploy import onnx as deploy_onnx
    from darktune.eval import evaluate
    from darktune.train import device_inputs
    from darktune.train import steps as train_steps

    cfg, obj, weights, image = tiny
    train = ["train", "--cfg", str(cfg), "--data", str(obj), "--out", str(tmp_path / "run"), "--iterations", "2",
             "--batch", "2", "--no-progress"]
    if where == "train-step":
        monkeypatch.setattr(train_steps, "train_step", _cpu_oom)
        argv, advice = train, ("--batch", "--subdivisions")
    elif where == "train-batches":
        monkeypatch.setattr(device_inputs, "TrainBatches", _numpy_oom)
        argv, advice = train, ("--batch",)
    elif where == "map":
        monkeypatch.setattr(evaluate, "evaluate_model", _cpu_oom)
        argv, advice = ["map", "--cfg", str(cfg), "--weights", str(weights), "--data", str(obj)], ("--batch",)
    elif where == "detect":
        monkeypatch.setattr(torch.nn.Module, "__call__", _cpu_oom)
        argv, advice = ["detect", "--cfg", str(cfg), "--weights", str(weights), str(image)], ("--size",)
    else:
        monkeypatch.setattr(deploy_onnx, "_torch_export", _cpu_oom)
        argv, advice = (["export", "onnx", "--cfg", str(cfg), "--weights", str(weights), "--out",
                         str(tmp_path / "m.onnx")], ("--batch", "--size"))
    outcome = _one_line(main, argv, capsys, "out of memory", *advice)
    assert tally("memory").case(f"cpu-oom:{where}", *outcome) == "handled", outcome
