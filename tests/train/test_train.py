"""Training runs end to end on a tiny synthetic set: outputs, time to target, the map command, non-finite
losses, SIGKILL + resume continuing exactly, checkpoints that a cut never replaces, deterministic batches."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from cfgs import small_cfg

from darktune.errors import DarktuneError
from darktune.train.config import TrainConfig
from darktune.train.loop import train

TINY = small_cfg({"batch": 4, "subdivisions": 2, "learning_rate": 0.002, "burn_in": 3, "momentum": 0.9,
                  "decay": 0.0005, "policy": "steps", "steps": 8, "scales": .5, "hue": .1, "saturation": 1.5,
                  "exposure": 1.5}, head=16, masks=("1,2", "0,1"), anchors="4,6, 10,14, 23,27", classes=3,
                 yolo_extra="jitter=.2\n")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_set(root: Path) -> tuple[str, str]:
    """(cfg, obj.data) of the tiny network and a 16-image synthetic set (12 train, 4 valid) under `root`."""
    from darktune.data.synth.sets import make_target_set

    data = make_target_set(root / "set", 16, 96, seed=5, val_fraction=0.25)
    (root / "tiny.cfg").write_text(TINY)
    return str(root / "tiny.cfg"), str(data)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("train_data"))


def cfg_of(dataset, out, **kw) -> TrainConfig:
    cfg, data = dataset
    base = {"cfg": cfg, "data": data, "iterations": 6, "out": str(out), "checkpoint_every": 1000}
    return TrainConfig(**{**base, **kw})


def lines(run: Path) -> tuple[list[dict], list[dict]]:
    recs = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if "loss" in r], [r for r in recs if "map" in r]


def test_run_writes_every_output_and_time_to_target(dataset, tmp_path):
    from darktune.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    res = train(cfg_of(dataset, run, eval_at=[3, 6], target_map=0.0, freeze=2), progress=False)
    assert res.status == "finished" and res.iterations_done == 6 and res.final_map is not None
    # the start weights are evaluated too (iteration 0) and already meet a target of 0
    assert res.time_to_target["iteration"] == 0 and res.time_to_target["seconds"] == 0.0
    for name in ("metrics.jsonl", "weights/last.weights", "weights/best.weights", "checkpoint.pt", "chart.png",
                 "summary.json", "init.json", "model.cfg", "freeze_proof.json", "obj.names"):
        assert (run / name).is_file(), name
    train_lines, eval_lines = lines(run)
    assert [r["iteration"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
    assert [r["iteration"] for r in eval_lines] == [0, 3, 6] and eval_lines[0]["protocol"] == "darknet"
    assert res.maps == [(0, eval_lines[0]["map"]), (3, eval_lines[1]["map"]), (6, eval_lines[2]["map"])]
    assert {"loss", "box", "obj", "cls", "lr", "images_per_s", "elapsed_s"} <= set(train_lines[0])
    assert train_lines[0]["lr"] == pytest.approx(0.002 * (1 / 3) ** 4)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["time_to_target"]["iteration"] == 0
    assert summary["init"]["mode"] == "scratch" and summary["batch"] == 4 and summary["subdivisions"] == 2
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck["step"] == 6 and ck["loader"]["sample"] == 24
    assert json.loads((run / "freeze_proof.json").read_text())["frozen_unchanged"] is True


def test_stop_at_target_and_map_command(dataset, tmp_path, capsys):
    from darktune.cli import main

    run = tmp_path / "run"
    res = train(cfg_of(dataset, run, eval_every=2, target_map=0.0, stop_at_target=True), progress=False)
    assert res.status == "stopped_at_target" and res.iterations_done == 0  # the start weights meet 0 mAP
    assert res.time_to_target["iteration"] == 0 and res.time_to_target["seconds"] == 0.0
    assert [i for i, _ in res.maps] == [0]
    assert json.loads((run / "summary.json").read_text())["status"] == "stopped_at_target"
    cfg, data = dataset
    for c in (str(run / "model.cfg"), cfg):  # the run's cfg, or the original one (re-headed automatically)
        assert main(["map", "--cfg", c, "--weights", str(run / "weights" / "last.weights"), "--data", data,
                     "--protocol", "coco101", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["protocol"] == "coco101" and len(out["classes"]) == 1 and 0 <= out["map"] <= 1


def test_nonfinite_loss_is_skipped_counted_and_stops_after_k(dataset, tmp_path, monkeypatch):
    from darktune.train import loss as loss_module

    real = loss_module.YoloLoss.__call__
    calls = {"n": 0, "bad": {3, 4}}

    def flaky(self, heads, targets, hw):
        calls["n"] += 1
        total, parts = real(self, heads, targets, hw)
        it = (calls["n"] + 1) // 2  # 2 subdivisions per iteration
        return (total * float("nan"), parts) if it in calls["bad"] else (total, parts)

    monkeypatch.setattr(loss_module.YoloLoss, "__call__", flaky)
    res = train(cfg_of(dataset, tmp_path / "a"), progress=False)
    assert res.status == "finished" and res.skipped_steps == 2
    bad = [r for r in lines(tmp_path / "a")[0] if r.get("nonfinite")]
    assert [r["iteration"] for r in bad] == [3, 4] and bad[0]["loss"] is None

    calls.update(n=0, bad=set(range(1, 100)))
    res = train(cfg_of(dataset, tmp_path / "b", max_bad_steps=3), progress=False)
    assert res.status == "failed" and res.iterations_done == 3 and "not finite" in res.message
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "failed"
    proof = json.loads((tmp_path / "b" / "freeze_proof.json").read_text())
    assert proof["trainable_changed"] == []  # no update was applied


def _cli(dataset, out, iterations, *extra):
    cfg, data = dataset
    return [sys.executable, "-m", "darktune", "train", "--cfg", cfg, "--data", data, "--out", str(out),
            "--iterations", str(iterations), "--checkpoint-every", "3", "--no-progress", "--eval-every", "6",
            "--size", "96", *extra]


# the device input path with multi-scale (seed 5: iterations 1-10 at 128 px, 11-12 at 96), on the CPU here
GPU_AUGMENT = ("--gpu-augment", "--multi-scale", "--seed", "5")


@pytest.mark.slow
@pytest.mark.parametrize("extra", [(), GPU_AUGMENT], ids=["cpu_loader", "gpu_augment_multiscale"])
def test_sigkill_then_resume_continues_exactly(dataset, tmp_path, extra):
    full, cut = tmp_path / "full", tmp_path / "cut"
    subprocess.run(_cli(dataset, full, 12, *extra), env=ENV, check=True, capture_output=True)
    proc = subprocess.Popen(_cli(dataset, cut, 400, *extra), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        done = (cut / "metrics.jsonl").exists() and len(lines(cut)[0]) >= 8
        if done or proc.poll() is not None:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    killed_at = len(lines(cut)[0])
    assert killed_at < 400
    r = subprocess.run(_cli(dataset, cut, 12, "--resume", *extra), env=ENV, capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr
    a, b = lines(full)[0], lines(cut)[0]
    assert [x["iteration"] for x in b] == list(range(1, 13))
    for x, y in zip(a, b):
        assert (x["iteration"], x["lr"], x["size"], x["input"]) == (y["iteration"], y["lr"], y["size"], y["input"])
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-6), x["iteration"]
    assert [m["map"] for m in lines(full)[1]] == pytest.approx([m["map"] for m in lines(cut)[1]], abs=1e-6)
    assert json.loads((cut / "summary.json").read_text())["status"] == "finished"
    if extra:
        # darknet's multi-scale: the largest size (roundl(1.4*96/32 + 1)*32 = 160) for the first 10 iterations and
        # for blocks starting after iterations - 100 (here all of a 12-iteration run)
        assert [x["size"] for x in b] == [160] * 12 and {x["input"] for x in b} == {"gpu_augment"}


def test_a_cut_checkpoint_never_replaces_the_good_one(dataset, tmp_path, monkeypatch):
    from darktune.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    train(cfg_of(dataset, run, iterations=3, checkpoint_every=1), progress=False)
    good = (run / "checkpoint.pt").read_bytes()
    for cut in (0, 1, 64, len(good) // 3, len(good) // 2, len(good) - 100, len(good) - 1):
        damaged = tmp_path / f"cut{cut}.pt"
        damaged.write_bytes(good[:cut])
        with pytest.raises(DarktuneError):
            load_checkpoint(damaged)
    # a crash while writing (here: fsync fails) leaves the previous checkpoint in place, and no temp file
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(DarktuneError):
        train(cfg_of(dataset, run, iterations=5, checkpoint_every=1, resume=True), progress=False)
    assert (run / "checkpoint.pt").read_bytes() == good
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    monkeypatch.undo()
    res = train(cfg_of(dataset, run, iterations=5, resume=True), progress=False)
    assert res.status == "finished" and res.iterations_done == 5


def test_start_weights_evaluated_once_and_resume_removes_stale_temps(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    train(cfg_of(dataset, run, iterations=2, eval_at=[2], checkpoint_every=1), progress=False)
    assert (run / "obj.names").read_text() == "window\n"
    stale = [run / ".checkpoint.pt.k1ll3d.tmp", run / "weights" / ".last.weights.x9.tmp"]
    keep = run / ".checkpoint.pt.user-file"
    for path in [*stale, keep]:
        path.write_bytes(b"half a write")
    capsys.readouterr()
    res = train(cfg_of(dataset, run, iterations=3, eval_at=[2], resume=True), progress=False)
    assert [r["iteration"] for r in lines(run)[1]] == [0, 2, 3] and [i for i, _ in res.maps] == [0, 2, 3]
    assert not any(p.exists() for p in stale) and keep.exists()
    assert "removed 2 stale temp files" in capsys.readouterr().err
    train(cfg_of(dataset, tmp_path / "plain", iterations=1), progress=False)  # final mAP only
    assert [r["iteration"] for r in lines(tmp_path / "plain")[1]] == [1]


def test_resume_refuses_other_settings(dataset, tmp_path):
    run = tmp_path / "run"
    train(cfg_of(dataset, run, iterations=2), progress=False)
    with pytest.raises(DarktuneError, match="batch"):
        train(cfg_of(dataset, run, iterations=4, batch=8, resume=True), progress=False)
    with pytest.raises(DarktuneError, match="no checkpoint"):
        train(cfg_of(dataset, tmp_path / "empty", resume=True), progress=False)


def test_cli_train_never_silently_replaces_a_run(dataset, tmp_path, capsys):
    """`darktune train --out RUN` over a finished or interrupted run is refused (RUN named, --resume and
    --overwrite suggested, nothing touched); --overwrite starts afresh; an empty folder is fine; --resume with
    --overwrite is a contradiction."""
    from darktune.cli import main

    cfg, data = dataset
    run, empty = tmp_path / "run", tmp_path / "empty"
    argv = ["train", "--cfg", cfg, "--data", data, "--iterations", "2", "--size", "96", "--no-progress"]
    empty.mkdir()
    assert main([*argv, "--out", str(empty)]) == 0 and (empty / "checkpoint.pt").is_file()
    assert main([*argv, "--out", str(run), "--eval-at", "2"]) == 0
    assert (run / "weights" / "best.weights").is_file()
    capsys.readouterr()

    def snapshot():
        return {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}

    before = snapshot()
    (run / "checkpoint.pt").unlink()  # an interrupted run's folder (metrics, weights) counts too
    del before[run / "checkpoint.pt"]
    for extra in ([], ["--iterations", "3"]):
        assert main([*argv, *extra, "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"darktune: error: {run}: already holds" in err, err
        assert "--resume" in err and "--overwrite" in err and "--out" in err and "Traceback" not in err
        assert snapshot() == before
    assert main([*argv, "--out", str(run), "--resume", "--overwrite"]) == 2
    assert "give one of them" in capsys.readouterr().err and snapshot() == before
    assert main([*argv, "--out", str(run), "--overwrite", "--seed", "1"]) == 0
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert [r["iteration"] for r in lines(run)[0]] == [1, 2] and (run / "checkpoint.pt").is_file()
    assert (run / "weights" / "last.weights").read_bytes() != before[run / "weights" / "last.weights"]
    no_valid = tmp_path / "train_only.data"  # a run that evaluates nothing must not keep the old best.weights
    no_valid.write_text("".join(line + "\n" for line in Path(data).read_text().splitlines()
                                if not line.startswith("valid")))
    assert (run / "weights" / "best.weights").is_file()
    assert main([*argv, "--data", str(no_valid), "--out", str(run), "--overwrite"]) == 0
    assert not (run / "weights" / "best.weights").exists() and (run / "weights" / "last.weights").is_file()


def test_unfreeze_at_rebuilds_the_optimizer(dataset, tmp_path):
    from darktune.train.checkpoint import load_checkpoint

    run = tmp_path / "run"
    res = train(cfg_of(dataset, run, iterations=4, freeze=3, unfreeze_at=2), progress=False)
    assert res.status == "finished"
    proof = json.loads((run / "freeze_proof.json").read_text())
    assert proof["unfrozen_at"] == 2 and proof["layers"]["0"]["changed"] and proof["layers"]["2"]["changed"]
    ck = load_checkpoint(run / "checkpoint.pt")
    n_params = sum(len(g["params"]) for g in ck["optimizer"]["param_groups"])
    assert n_params == sum(1 for _ in torch.nn.Module.parameters(_model(dataset)))


def test_freeze_proof_covers_the_frozen_phase_of_an_unfreeze_also_across_a_resume(dataset, tmp_path, monkeypatch):
    """--unfreeze-at K: the proof lists the layers frozen for 1..K, shows each unchanged from the start to K
    (digests taken at K) and changed after; a resume from a checkpoint at K keeps those digests."""
    from darktune.train import steps as train_steps

    full = tmp_path / "full"
    train(cfg_of(dataset, full, iterations=4, freeze=3, unfreeze_at=2), progress=False)
    proof = json.loads((full / "freeze_proof.json").read_text())
    assert proof["frozen_layers"] == [0, 2] and proof["frozen_unchanged"] is True and proof["frozen_changed"] == []
    assert proof["unfrozen_at"] == 2 and proof["unfrozen_changed"] == [0, 2] and proof["unfrozen_unchanged"] == []
    assert proof["trainable_changed"] == [4, 5, 8]
    for i in ("0", "2"):
        layer = proof["layers"][i]
        assert layer["frozen"] and layer["at_unfreeze"] == layer["before"] != layer["after"]
        assert layer["unchanged_while_frozen"] is True and layer["changed_after_unfreeze"] is True
    assert proof["layers"]["4"]["at_unfreeze"] != proof["layers"]["4"]["before"]  # trained in 1..2

    real = train_steps.train_step

    def dies_at_3(run, iteration):
        if iteration == 3:
            raise RuntimeError("killed")
        return real(run, iteration)

    cut = tmp_path / "cut"
    monkeypatch.setattr(train_steps, "train_step", dies_at_3)
    with pytest.raises(RuntimeError):  # the last checkpoint is the one at K = 2, before the unfreeze
        train(cfg_of(dataset, cut, iterations=4, freeze=3, unfreeze_at=2, checkpoint_every=2), progress=False)
    monkeypatch.undo()
    train(cfg_of(dataset, cut, iterations=4, freeze=3, unfreeze_at=2, checkpoint_every=2, resume=True),
          progress=False)
    again = json.loads((cut / "freeze_proof.json").read_text())
    assert again["frozen_unchanged"] is True and again["unfrozen_at"] == 2
    assert {i: v["at_unfreeze"] for i, v in again["layers"].items()} == {
        i: v["at_unfreeze"] for i, v in proof["layers"].items()}
    stopped = tmp_path / "stopped"  # a run that ends before K: frozen the whole run, no unfreeze fields
    train(cfg_of(dataset, stopped, iterations=2, freeze=3), progress=False)
    short = json.loads((stopped / "freeze_proof.json").read_text())
    assert short["unfrozen_at"] is None and "at_unfreeze" not in short["layers"]["0"]
    assert short["frozen_layers"] == [0, 2] and short["frozen_unchanged"] is True


def test_no_progress_prints_evaluations_and_the_unfreeze_and_train_log_survives_a_resume(dataset, tmp_path,
                                                                                        capsys):
    from darktune.cli import main

    cfg, data = dataset
    run = tmp_path / "run"
    argv = ["train", "--cfg", cfg, "--data", data, "--out", str(run), "--size", "96", "--no-progress",
            "--freeze", "3", "--unfreeze-at", "2", "--eval-at", "2", "--checkpoint-every", "1"]
    assert main([*argv, "--iterations", "3"]) == 0
    err = capsys.readouterr().err
    assert "iteration 2: mAP " in err and "iteration 2: all layers unfrozen (--unfreeze-at 2)" in err
    first = (run / "train.log").read_text().splitlines()
    assert first[0].startswith("init: scratch") and "iteration 2: mAP " in "\n".join(first)
    assert main([*argv, "--iterations", "4", "--resume"]) == 0
    log = (run / "train.log").read_text().splitlines()
    assert log[:len(first)] == first and log[len(first)].startswith("resumed from")
    assert main([*argv, "--iterations", "3", "--overwrite"]) == 0  # a fresh run starts a fresh log
    assert (run / "train.log").read_text().count("init: ") == 1


def test_train_log_is_not_doubled_when_stderr_already_goes_there(dataset, tmp_path):
    """`darktune experiment` sends a run's stderr to RUN/train.log: the trainer then writes no second copy."""
    import contextlib

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "train.log", "a", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        train(cfg_of(dataset, run, iterations=2, eval_at=[2]), progress=False)
    text = (run / "train.log").read_text()
    assert text.count("init: ") == 1 and text.count("iteration 2: mAP") == 1


def _model(dataset):
    from darktune.darknet.cfg import parse_cfg
    from darktune.darknet.model import Darknet

    return Darknet(parse_cfg(dataset[0]).with_classes(1))


def test_partial_weights_load_upto_and_report(dataset, tmp_path):
    from darktune.darknet.weights import partial, save_weights

    model = _model(dataset)
    full = tmp_path / "full.weights"
    save_weights(model, full)
    from darktune.darknet.cfg import parse_cfg, write_cfg

    cfg1 = write_cfg(parse_cfg(dataset[0]).with_classes(1), tmp_path / "one.cfg")
    part, _ = partial(cfg1, full, tmp_path / "conv.3", 3)
    res = train(cfg_of(dataset, tmp_path / "run", iterations=1, weights=str(part)), progress=False)
    init = json.loads((res.run_dir / "init.json").read_text())
    assert init["loaded_layers"] == [0, 2] and init["new_layers"] == [4, 5, 8] and init["upto"] == 3
    res = train(cfg_of(dataset, tmp_path / "run2", iterations=1, weights=str(part), upto=3), progress=False)
    assert json.loads((res.run_dir / "init.json").read_text())["mode"] == "partial"
    with pytest.raises(DarktuneError, match="floats"):
        bad = tmp_path / "bad.weights"
        bad.write_bytes(full.read_bytes()[:-4 * 7])
        train(cfg_of(dataset, tmp_path / "run3", iterations=1, weights=str(bad)), progress=False)


def test_batches_are_a_pure_function_of_seed_and_iteration(dataset):
    from darktune.data.augment import AugmentConfig
    from darktune.data.check import check_dataset
    from darktune.train.inputs import TrainBatches, subset

    items = check_dataset(dataset[1], "train", progress=False).good
    aug = AugmentConfig(jitter=0.2, hue=0.1, saturation=1.5, exposure=1.5, flip=True)
    one = TrainBatches(items, (64, 64), aug, batch=4, subdivisions=2, seed=1)
    again = TrainBatches(items, (64, 64), aug, batch=4, subdivisions=2, seed=1, workers=1)
    ranks = [TrainBatches(items, (64, 64), aug, batch=4, subdivisions=2, seed=1, rank=r, world=2) for r in (0, 1)]
    for it in (7, 0, 3):  # any order: a restart at any iteration sees the same batch
        for sub in (0, 1):
            x, t = one.get(it, sub)
            y, u = again.get(it, sub)
            assert torch.equal(x, y) and torch.equal(t, u)
            parts = [rb.get(it, sub) for rb in ranks]
            assert torch.equal(torch.cat([p[0] for p in parts]), x)
    again.close()
    assert subset(items, 5, 0) == [i for i in subset(items, 8, 0) if i in subset(items, 5, 0)]
    assert len(subset(items, 5, 0)) == 5 and subset(items, 5, 0) == subset(items, 5, 0)


def test_obj_prior_sets_new_heads_objectness_bias_only(dataset, tmp_path):
    import math

    from darktune.darknet.weights import load_weights

    res = train(cfg_of(dataset, tmp_path / "run", iterations=1, lr=0.0, obj_prior=0.01), progress=False)
    init = json.loads((res.run_dir / "init.json").read_text())
    model = _model(dataset)
    load_weights(model, res.run_dir / "weights" / "last.weights")  # lr 0: the written weights are the start
    heads = [i - 1 for i in model.head_indices]
    assert init["obj_prior_layers"] == heads
    for i in heads:
        bias = model.layers[i].conv.bias.view(-1, 5 + model.spec.num_classes)
        assert torch.allclose(bias[:, 4], torch.full((bias.shape[0],), math.log(0.01 / 0.99)))
        assert torch.count_nonzero(bias[:, :4]) == 0 and torch.count_nonzero(bias[:, 5:]) == 0  # darknet's 0
    with pytest.raises(DarktuneError, match="obj-prior"):
        cfg_of(dataset, tmp_path / "bad", obj_prior=1.0)
    for given, expected in ((None, math.log(0.01 / 0.99)), (0.5, 0.0)):  # the default; darknet's bias 0
        res = train(cfg_of(dataset, tmp_path / f"run_{given}", iterations=1, lr=0.0, obj_prior=given),
                    progress=False)
        assert json.loads((res.run_dir / "init.json").read_text())["obj_prior"] == (given or 0.01)
        load_weights(model, res.run_dir / "weights" / "last.weights")
        for i in heads:
            bias = model.layers[i].conv.bias.view(-1, 5 + model.spec.num_classes)
            assert torch.allclose(bias[:, 4], torch.full((bias.shape[0],), expected))


def test_continue_schedule_goes_on_from_the_weights_seen_counter(dataset, tmp_path):
    """Darknet without -clear: a run from a full .weights file continues its learning-rate schedule at
    iteration seen / batch (no second burn-in) and writes the lineage's seen; by default it starts over."""
    from darktune.darknet.weights import read_weights_file

    first = tmp_path / "first"
    train(cfg_of(dataset, first, iterations=10, batch=4, burn_in=8, lr=0.001), progress=False)
    last = first / "weights" / "last.weights"
    assert read_weights_file(last).header.seen == 40  # 10 iterations x 4 images

    def lrs(out, **kw):
        train(cfg_of(dataset, out, iterations=3, batch=4, burn_in=8, lr=0.001, weights=str(last), **kw),
              progress=False)
        steps, _ = lines(out)
        return [r["lr"] for r in steps], json.loads((out / "summary.json").read_text())

    again, s_again = lrs(tmp_path / "again")
    cont, s_cont = lrs(tmp_path / "cont", continue_schedule=True)
    assert again == pytest.approx([0.001 * (i / 8) ** 4 for i in (1, 2, 3)])  # burn-in from the start
    # iterations 11..13 of the schedule: burn-in over, and the cfg's step at 8 (scale .5) already taken
    assert cont == pytest.approx([0.0005] * 3) and s_cont["schedule_offset"] == 10 and s_again["schedule_offset"] == 0
    assert read_weights_file(tmp_path / "cont" / "weights" / "last.weights").header.seen == (10 + 3) * 4
    assert read_weights_file(tmp_path / "again" / "weights" / "last.weights").header.seen == 3 * 4
    init = json.loads((tmp_path / "cont" / "init.json").read_text())
    assert init["seen"] == 40 and init["schedule_offset"] == 10
    with pytest.raises(DarktuneError, match="--continue-schedule needs --weights"):
        cfg_of(dataset, tmp_path / "x", continue_schedule=True)
