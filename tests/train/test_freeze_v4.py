"""Freezing and transfer on Tiny YOLOv4, in its own layer numbering: "freeze N" leaves layers 0..N-1 bit-for-bit
unchanged (batch norm statistics included) for its natural cuts, 29 (darknet's yolov4-tiny.conv.29: the
backbone plus the first head's 1x1 and 3x3 convs) and 17 (after the second CSP block and its max pooling);
the frozen-prefix caches (evaluation's PrefixCache, training's FeatureCache) give the same numbers through
the route-group layers (groups=2 group_id=1) and the mixed route 34 (trainable upsample + frozen layer 23).

Layers of yolov4-tiny: 0-1 conv s2, 2 conv, 3 route groups, 4-5 conv, 6 route, 7 conv 1x1, 8 route, 9 max,
10 conv, 11 route groups, 12-13 conv, 14 route, 15 conv, 16 route, 17 max, 18 conv, 19 route groups, 20-21
conv, 22 route, 23 conv, 24 route, 25 max, 26 conv 512, 27 conv 256 1x1, 28 conv 512, 29 conv 255, 30 yolo,
31 route 27, 32 conv 128, 33 upsample, 34 route 33,23, 35 conv 256, 36 conv 255, 37 yolo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from darktune.cli import main
from darktune.darknet.cfg import parse_cfg
from darktune.darknet.model import Darknet
from darktune.darknet.weights import conv_float_counts, load_weights
from darktune.eval.evaluate import PrefixCache, load_eval_set, predict
from darktune.train.freeze import set_frozen

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CONVS_BEFORE = {29: [0, 1, 2, 4, 5, 7, 10, 12, 13, 15, 18, 20, 21, 23, 26, 27, 28],
                17: [0, 1, 2, 4, 5, 7, 10, 12, 13, 15]}


def _layer_bytes(spec, data: bytes, header: int = 20) -> dict[int, bytes]:
    out, offset = {}, header
    for i, n in conv_float_counts(spec):
        out[i] = data[offset:offset + 4 * n]
        offset += 4 * n
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from darktune.data.synth.sets import make_target_set

    return make_target_set(tmp_path_factory.mktemp("v4data") / "set", 10, 64, seed=7, val_fraction=0.2)


@pytest.mark.parametrize("freeze", [29, 17])
def test_freeze_keeps_the_v4_prefix_bit_identical(coco_v4, data, tmp_path, capsys, freeze):
    """`darktune train --upto 29 --freeze N` from the fetched COCO weights (1 class): every frozen conv's bytes
    (biases, BN scales, means, variances, weights) equal the official file's; the trainable convs moved; the
    run's freeze proof says the same."""
    out = tmp_path / f"run{freeze}"
    argv = ["train", "--cfg", str(coco_v4.cfg), "--data", str(data), "--weights", str(coco_v4.weights),
            "--upto", "29", "--freeze", str(freeze), "--iterations", "3", "--batch", "2", "--size", "64",
            "--lr", "0.002", "--burn-in", "0", "--out", str(out), "--checkpoint-every", "1000"]
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    coco = parse_cfg(coco_v4.cfg)
    orig = _layer_bytes(coco, coco_v4.weights.read_bytes())
    new = _layer_bytes(coco.with_classes(1), (out / "weights" / "last.weights").read_bytes())
    for i in CONVS_BEFORE[freeze]:
        assert new[i] == orig[i], f"frozen layer {i} changed"
    trainable = [i for i in orig if i >= freeze and i not in (29, 36)]  # 29, 36: new 1-class heads
    assert trainable and all(new[i] != orig[i] for i in trainable)
    proof = json.loads((out / "freeze_proof.json").read_text())
    assert proof["frozen_unchanged"] is True and proof["frozen_layers"] == CONVS_BEFORE[freeze]
    init = json.loads((out / "init.json").read_text())
    assert init["upto"] == 29 and 29 in init["new_layers"] and 36 in init["new_layers"]


@pytest.fixture(scope="module")
def v4_model(coco_v4):
    net = Darknet(parse_cfg(coco_v4.cfg).with_size(128))
    load_weights(net, coco_v4.weights)
    return net


@pytest.mark.parametrize("freeze", [29, 17])
def test_eval_prefix_cache_is_bit_identical_through_route_groups(v4_model, data, freeze):
    eval_set = load_eval_set(data, (128, 128), "train")
    set_frozen(v4_model, range(freeze))
    try:
        plain = predict(v4_model, eval_set, batch_size=4)
        cache = PrefixCache()
        first = predict(v4_model, eval_set, batch_size=4, prefix_cache=cache)
        again = predict(v4_model, eval_set, batch_size=4, prefix_cache=cache)
    finally:
        set_frozen(v4_model, [])
    assert cache.builds == 1 and sum(len(d) for d in plain) > 0
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(plain, first, again))


@pytest.mark.parametrize("freeze", [29, 17])
def test_feature_cache_trains_v4_bit_identically(coco_v4, data, tmp_path, freeze):
    """Training with the frozen layers' outputs cached per image writes the same weights, byte for byte, as
    training that computes them every step (route groups inside the prefix, the mixed route 34 after it)."""
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    def run(out, **kw):
        res = train(TrainConfig(cfg=str(coco_v4.cfg), data=str(data), weights=str(coco_v4.weights), upto=29,
                                freeze=freeze, iterations=6, batch=4, size=64, lr=0.002, burn_in=0, eval_at=[6],
                                out=str(out), checkpoint_every=1000, augment=False, **kw), progress=False)
        assert res.status == "finished"
        return (out / "weights" / "last.weights").read_bytes(), json.loads((out / "summary.json").read_text())

    cached, s1 = run(tmp_path / "on")
    plain, s2 = run(tmp_path / "off", feature_cache=False)
    assert cached == plain and s1["final_map"] == s2["final_map"]
    assert s1["feature_cache"]["off"] is None and s1["feature_cache"]["hits"] > 0
    assert s2["feature_cache"] is None


def test_frozen_prefix_forward_and_grads_through_the_mixed_route(v4_model):
    """Freeze 29: forward through the frozen prefix equals the full forward, and the trainable convs get the
    same gradients (route 34 reads trainable 33 and frozen 23: conv 35 runs as a sum of per-slice convs, the
    split-conv path of darknet.prefix, equal up to float32 summation order)."""
    from darktune.darknet.prefix import forward_frozen_prefix, frozen_prefix_length

    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    set_frozen(v4_model, range(29))
    try:
        v4_model.train()
        assert frozen_prefix_length(v4_model) == 29
        ref = v4_model(x)
        sum(h.square().sum() for h in ref).backward()
        grads = {n: p.grad.clone() for n, p in v4_model.named_parameters() if p.grad is not None}
        v4_model.zero_grad(set_to_none=True)
        fast = forward_frozen_prefix(v4_model, x, 29)
        sum(h.square().sum() for h in fast).backward()
        assert torch.equal(ref[0], fast[0])  # the 13x13 head: the same ops
        assert torch.allclose(ref[1], fast[1], rtol=1e-5, atol=1e-5)  # conv 35 as a sum of two slice convs
        assert sorted(grads) == sorted(n for n, p in v4_model.named_parameters() if p.grad is not None)
        assert all(n.split(".")[1] in ("29", "32", "35", "36") for n in grads)
        for n, p in v4_model.named_parameters():
            if p.grad is not None:
                assert (p.grad - grads[n]).abs().max() <= 1e-4 * grads[n].abs().max(), n
    finally:
        v4_model.eval()
        set_frozen(v4_model, [])
        v4_model.zero_grad(set_to_none=True)
