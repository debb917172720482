"""Freezing: no update at all for frozen layers (weights and BN statistics), no optimizer state, a frozen prefix
without autograd, the proof; and freeze 13 on the COCO weights for 20 iterations, checked in the .weights."""

import json

import numpy as np
import pytest
import torch
from cfgs import small_cfg
from torch import nn

from darktune.darknet.cfg import parse_cfg_text
from darktune.errors import DarktuneError
from darktune.train.freeze import (
    FrozenBatchNorm2d,
    freeze_proof,
    frozen_layers,
    layer_digests,
    parse_layer_list,
    set_frozen,
)
from darktune.darknet.model import Darknet
from darktune.darknet.prefix import forward_frozen_prefix, frozen_prefix_length
from darktune.train.init import build_optimizer, param_groups

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CFG = small_cfg()


def small_model(seed=0):
    torch.manual_seed(seed)
    model = Darknet(parse_cfg_text(CFG))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


def test_frozen_layers_get_no_grad_no_optimizer_state_and_fixed_bn():
    model = small_model()
    assert set_frozen(model, range(3)) == [0, 2]
    assert frozen_layers(model) == [0, 2] and frozen_prefix_length(model) == 4
    assert isinstance(model.layers[0].bn, FrozenBatchNorm2d) and type(model.layers[4].bn) is nn.BatchNorm2d
    model.train()
    assert not model.layers[0].bn.training and model.layers[4].bn.training
    before = layer_digests(model)
    opt = build_optimizer(model, 0.1, 0.9, 0.5)  # huge decay: it must not reach frozen layers
    frozen_params = {id(p) for i in (0, 2) for p in model.layers[i].parameters()}
    assert not frozen_params & {id(p) for g in opt.param_groups for p in g["params"]}
    for _ in range(3):
        loss = sum(h.square().mean() for h in model(torch.rand(2, 3, 64, 64)))
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = layer_digests(model)
    assert [before[i] == after[i] for i in (0, 2, 4, 5, 8)] == [True, True, False, False, False]
    assert all(id(p) not in frozen_params for p in opt.state)
    proof = freeze_proof(before, after, [0, 2])
    assert proof["frozen_unchanged"] and proof["trainable_changed"] == [4, 5, 8]
    tampered = {**after, 0: "0" * 64}
    assert freeze_proof(before, tampered, [0, 2])["frozen_changed"] == [0]


def test_unfreeze_restores_training_batch_norm():
    model = small_model()
    set_frozen(model, [0])
    model.train()
    set_frozen(model, [])
    assert type(model.layers[0].bn) is nn.BatchNorm2d and model.layers[0].bn.training
    mean = model.layers[0].bn.running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert not torch.equal(mean, model.layers[0].bn.running_mean)
    assert all(p.requires_grad for p in model.parameters())


def test_weight_decay_only_on_conv_weights():
    model = small_model()
    decayed, plain = param_groups(model, 5e-4)
    conv_weights = {id(model.layers[i].conv.weight) for i in (0, 2, 4, 5, 8)}
    assert {id(p) for p in decayed["params"]} == conv_weights and decayed["weight_decay"] == 5e-4
    assert plain["weight_decay"] == 0 and not conv_weights & {id(p) for p in plain["params"]}


def test_frozen_prefix_forward_equals_full_forward_and_gives_the_same_grads():
    x = torch.rand(2, 3, 64, 64)
    ref, fast = small_model(), small_model()
    for m in (ref, fast):
        set_frozen(m, range(3))
        m.train()
    out_ref = ref(x)
    out_fast = forward_frozen_prefix(fast, x, frozen_prefix_length(fast))
    for a, b in zip(out_ref, out_fast):
        assert torch.equal(a, b)
    sum(h.square().sum() for h in out_ref).backward()
    sum(h.square().sum() for h in out_fast).backward()
    for (name, a), b in zip(ref.named_parameters(), fast.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert torch.allclose(a.grad, b.grad, rtol=1e-5, atol=1e-7), name


def test_layer_lists():
    assert parse_layer_list("0-2,5, 7", 10) == [0, 1, 2, 5, 7]
    for bad in ("3-1", "a", "0-10", "-1", "", " , "):
        with pytest.raises(DarktuneError):
            parse_layer_list(bad, 10)
    with pytest.raises(DarktuneError, match=r"'5-2' is a reversed range \(write 2-5\)"):
        parse_layer_list("0,5-2", 10)
    with pytest.raises(DarktuneError, match="no layers in it"):
        parse_layer_list("", 10)
    with pytest.raises(DarktuneError, match="cannot freeze"):
        set_frozen(small_model(), [42])


def test_proof_of_an_unfreeze_checks_the_frozen_phase_up_to_the_unfreeze():
    before = {0: "a", 2: "b", 4: "c"}
    at_k = {0: "a", 2: "b", 4: "c2"}  # layer 4 trained during 1..K; 0 and 2 were frozen
    after = {0: "a3", 2: "b", 4: "c3"}  # after K, 0 trained and 2 happened not to move
    proof = freeze_proof(before, after, [0, 2], at_k)
    assert proof["frozen_layers"] == [0, 2] and proof["frozen_unchanged"] is True and proof["frozen_changed"] == []
    assert proof["unfrozen_changed"] == [0] and proof["unfrozen_unchanged"] == [2]
    assert proof["trainable_changed"] == [4] and proof["layers"]["4"]["at_unfreeze"] == "c2"
    assert proof["layers"]["0"] == {"before": "a", "after": "a3", "changed": True, "frozen": True,
                                    "at_unfreeze": "a", "unchanged_while_frozen": True,
                                    "changed_after_unfreeze": True}
    tampered = freeze_proof(before, after, [0, 2], {**at_k, 2: "b?"})  # a frozen layer moved before K
    assert tampered["frozen_unchanged"] is False and tampered["frozen_changed"] == [2]
    assert tampered["layers"]["2"]["unchanged_while_frozen"] is False
    plain = freeze_proof(before, after, [0, 2])  # no unfreeze: frozen to the end, so layer 0 moving is a failure
    assert plain["frozen_changed"] == [0] and "unfrozen_changed" not in plain


def _layer_bytes(spec, data: bytes, header: int) -> dict[int, bytes]:
    from darktune.darknet.weights import conv_float_counts

    out, offset = {}, header
    for i, n in conv_float_counts(spec):
        out[i] = data[offset:offset + 4 * n]
        offset += 4 * n
    return out


@pytest.mark.slow
def test_freeze_13_on_coco_weights_for_20_iterations(tmp_path):
    from darktune.darknet import zoo
    from darktune.darknet.cfg import parse_cfg
    from darktune.data.synth.sets import make_target_set
    from darktune.train.config import TrainConfig
    from darktune.train.loop import train

    try:
        fetched = zoo.fetch("yolov3-tiny")
    except DarktuneError as exc:
        pytest.skip(f"COCO weights not available: {exc}")
    data = make_target_set(tmp_path / "data", 12, 128, seed=3)
    result = train(TrainConfig(cfg=str(fetched.cfg), data=str(data), weights=str(fetched.weights), freeze=13,
                               iterations=20, batch=2, size=64, lr=0.002, burn_in=0, out=str(tmp_path / "run"),
                               checkpoint_every=1000), progress=False)
    assert result.status == "finished" and result.iterations_done == 20
    coco = parse_cfg(fetched.cfg)
    mine = coco.with_classes(1)
    orig = _layer_bytes(coco, fetched.weights.read_bytes(), 20)
    new = _layer_bytes(mine, (tmp_path / "run" / "weights" / "last.weights").read_bytes(), 20)
    for i in (0, 2, 4, 6, 8, 10, 12):
        assert new[i] == orig[i], f"frozen layer {i} changed"  # BN bias, scale, mean, variance, weights
    for i in (13, 14, 18, 21):
        assert new[i] != orig[i], f"trainable layer {i} did not change"
    proof = json.loads((tmp_path / "run" / "freeze_proof.json").read_text())
    assert proof["frozen_unchanged"] is True and proof["frozen_layers"] == [0, 2, 4, 6, 8, 10, 12]
    assert proof["trainable_changed"] == [13, 14, 15, 18, 21, 22] and not proof["trainable_unchanged"]
    init = json.loads((tmp_path / "run" / "init.json").read_text())
    assert init["mode"] == "classes adapted" and init["file_classes"] == 80 and init["new_layers"] == [15, 22]
    assert np.isfinite(result.train_seconds)


def test_darknet_sgd_is_torch_sgd_and_round_trips_its_state():
    from darktune.train.init import DarknetSGD

    a, b = small_model(), small_model()
    set_frozen(a, [0])
    set_frozen(b, [0])
    mine = build_optimizer(a, 0.05, 0.9, 0.01)
    ref = torch.optim.SGD([dict(g) for g in param_groups(b, 0.01) if g["params"]], lr=0.05, momentum=0.9)
    x = torch.rand(2, 3, 64, 64)
    for _ in range(3):
        for m, opt in ((a, mine), (b, ref)):
            sum(h.square().mean() for h in m(x)).backward()
            opt.step()
            opt.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-7)
    sd = mine.state_dict()
    again = DarknetSGD([dict(g) for g in param_groups(a, 0.01) if g["params"]], 0.0, 0.0)
    again.load_state_dict(sd)
    assert again.param_groups[0]["lr"] == 0.05 and len(again.state) == len(mine.state)
    assert len(ref.state_dict()["state"]) == len(sd["state"])


def test_batch_norm_folding_gives_the_same_outputs():
    from darktune.darknet.prefix import fold_bn

    model = small_model().eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        out = forward_frozen_prefix(model, x, len(model.layers), fold_bn(model, range(len(model.layers))))
    for a, b in zip(ref, out):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
