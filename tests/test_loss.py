"""YOLOv3 loss: darknet's assignment (best anchor over all anchors), ignore_thresh, and gradients equal to
darknet's deltas; batch vectorisation; a tiny overfit."""

import math

import pytest
import torch

from darktune.cfg import parse_cfg_text
from darktune.loss import YoloLoss, assign_targets, bbox_iou_variant
from darktune.model import Darknet

ANCHORS = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"


@pytest.fixture(autouse=True)
def one_thread():
    """Small tensors: one thread is faster, and two oversubscribe the 2 cores under pytest -n 2."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_cfg(size=64, mask26="0,1,2", classes=2, bn=False, iou_loss="mse"):
    """Two heads like yolov3-tiny (stride 8 and 4 here), the tiny anchors."""
    bnl = "batch_normalize=1\n" if bn else ""
    return parse_cfg_text(f"""[net]
width={size}
height={size}
[convolutional]
{bnl}filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
{bnl}filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
{bnl}filters=8
size=3
stride=2
pad=1
activation=leaky
[convolutional]
filters={3 * (5 + classes)}
size=1
activation=linear
[yolo]
mask=3,4,5
anchors={ANCHORS}
classes={classes}
num=6
ignore_thresh=.7
iou_loss={iou_loss}
[route]
layers=-4
[convolutional]
filters={3 * (5 + classes)}
size=1
activation=linear
[yolo]
mask={mask26}
anchors={ANCHORS}
classes={classes}
num=6
ignore_thresh=.7
iou_loss={iou_loss}
""")


def heads_of(spec):
    return [spec.layers[i] for i in spec.yolo_indices]


def test_assignment_hand_cases_on_tiny_yolo_anchors():
    spec13, spec26 = heads_of(tiny_cfg(416))
    net = (416, 416)
    t = torch.tensor([[0, 0, 0.5, 0.5, 81 / 416, 82 / 416],  # anchor 3 -> 13x13 head, local 0, cell (6, 6)
                      [1, 1, 0.1, 0.9, 23 / 416, 27 / 416],  # anchor 1 -> 26x26 head, local 1, cell (23, 2)
                      [1, 0, 0.99, 0.01, 300 / 416, 330 / 416]])  # anchor 5 -> 13x13 local 2, cell (0, 12)
    img, a, gj, gi, rows = assign_targets(spec13, t, net, (13, 13))
    got = sorted(zip(rows.tolist(), img.tolist(), a.tolist(), gj.tolist(), gi.tolist()))
    assert got == [(0, 0, 0, 6, 6), (2, 1, 2, 0, 12)]
    img, a, gj, gi, rows = assign_targets(spec26, t, net, (26, 26))
    assert list(zip(rows.tolist(), img.tolist(), a.tolist(), gj.tolist(), gi.tolist())) == [(1, 1, 1, 23, 2)]


def test_best_anchor_outside_every_mask_is_no_positive():
    spec13, spec26 = heads_of(tiny_cfg(416, mask26="1,2,3"))  # the official weights' quirk
    t = torch.tensor([[0, 0, 0.5, 0.5, 10 / 416, 14 / 416], [0, 0, 0.5, 0.5, 81 / 416, 82 / 416]])
    rows13 = assign_targets(spec13, t, (416, 416), (13, 13))[4].tolist()
    rows26 = assign_targets(spec26, t, (416, 416), (26, 26))
    assert rows13 == [1]  # anchor 3 is in both masks: darknet makes it responsible in both heads
    assert rows26[4].tolist() == [1] and rows26[1].tolist() == [2]  # local 2 here; anchor 0's truth: nowhere


def test_later_truth_wins_a_shared_cell_and_anchor():
    spec13, _ = heads_of(tiny_cfg(416))
    t = torch.tensor([[0, 0, 0.50, 0.50, 80 / 416, 80 / 416], [0, 1, 0.51, 0.52, 82 / 416, 84 / 416]])
    assert assign_targets(spec13, t, (416, 416), (13, 13))[4].tolist() == [1]



def test_gradients_are_darknets_deltas():
    spec = tiny_cfg(64)
    y13, y26 = heads_of(spec)
    torch.manual_seed(0)
    raw13 = torch.randn(1, 3 * 7, 8, 8) * 0.5
    raw26 = torch.randn(1, 3 * 7, 16, 16) * 0.5
    truth = torch.tensor([[0, 1, (3 + 0.3) / 8, (5 + 0.6) / 8, 0.25, 0.3]])  # w, h: fractions of the input
    # which anchor wins? w,h in pixels = 16, 19.2 -> anchor 1 (23x27) -> 16x16 head, local 1, cell (11, 6)
    gj, gi = int(truth[0, 3] * 16), int(truth[0, 2] * 16)
    raw13.requires_grad_(True)
    raw26.requires_grad_(True)
    loss_fn = YoloLoss([y13, y26])
    total, parts = loss_fn([raw13, raw26], truth, (64, 64))
    total.backward()
    g = raw26.grad.view(1, 3, 7, 16, 16)
    p = raw26.detach().view(1, 3, 7, 16, 16)
    a = 1
    anchor = torch.tensor([23.0, 27.0]) / 64
    scale = 2 - 0.25 * 0.3
    txt, tyt = truth[0, 2] * 16 - gi, truth[0, 3] * 16 - gj
    tw, th = torch.log(truth[0, 4] / anchor[0]), torch.log(truth[0, 5] / anchor[1])
    n = y26.iou_normalizer
    expected = {0: n * scale * (torch.sigmoid(p[0, a, 0, gj, gi]) - txt),
                1: n * scale * (torch.sigmoid(p[0, a, 1, gj, gi]) - tyt),
                2: n * scale * (p[0, a, 2, gj, gi] - tw), 3: n * scale * (p[0, a, 3, gj, gi] - th),
                4: torch.sigmoid(p[0, a, 4, gj, gi]) - 1,
                5: torch.sigmoid(p[0, a, 5, gj, gi]), 6: torch.sigmoid(p[0, a, 6, gj, gi]) - 1}
    for ch, value in expected.items():
        assert g[0, a, ch, gj, gi].item() == pytest.approx(value.item(), rel=1e-4, abs=1e-6), ch
    # a plain negative: gradient sigmoid(obj); an ignored one: exactly 0
    assert g[0, 2, 4, 0, 0].item() == pytest.approx(torch.sigmoid(p[0, 2, 4, 0, 0]).item(), rel=1e-5)
    assert torch.count_nonzero(raw13.grad[:, 4::7]) == 8 * 8 * 3  # no positives there, every cell a negative
    assert set(parts) == {"box", "obj", "cls", "n_pos"} and parts["n_pos"].item() == 1
    assert not any(v.requires_grad for v in parts.values())
    assert total.item() == pytest.approx(sum(parts[k].item() for k in ("box", "obj", "cls")), rel=1e-6)


def test_ignore_thresh_zeroes_objectness_gradient_of_a_good_other_prediction():
    spec = tiny_cfg(64)
    y13, y26 = heads_of(spec)
    raw26 = torch.zeros(1, 21, 16, 16)
    truth = torch.tensor([[0, 0, (6 + 0.5) / 16, (7 + 0.5) / 16, 23 / 64, 27 / 64]])  # anchor 1, cell (7, 6)
    v = raw26.view(1, 3, 7, 16, 16)
    # anchor 2 (37x58) at cell (7, 7) shaped to the truth: IoU 1 with it -> ignored
    v[0, 2, 0, 7, 7] = -30.0  # x offset ~0: centre at 7/16, half a cell right of the truth
    v[0, 2, 1, 7, 7] = 0.0
    v[0, 2, 2, 7, 7] = math.log(23 / 37)
    v[0, 2, 3, 7, 7] = math.log(27 / 58)
    raw13 = torch.zeros(1, 21, 8, 8, requires_grad=True)
    raw26.requires_grad_(True)
    total, _ = YoloLoss([y13, y26])([raw13, raw26], truth, (64, 64))
    total.backward()
    g = raw26.grad.view(1, 3, 7, 16, 16)
    # decoded centre x of that prediction = (7 + sigmoid(-30)) / 16 = 7/16 vs truth 6.5/16: IoU = 0.8 > 0.7
    assert g[0, 2, 4, 7, 7].item() == 0.0
    assert g[0, 2, 4, 0, 0].item() == pytest.approx(0.5)  # a plain negative
    assert g[0, 1, 4, 7, 6].item() == pytest.approx(-0.5)  # the responsible one


def test_batch_loss_is_the_sum_of_per_image_losses():
    spec = tiny_cfg(64, classes=2)
    torch.manual_seed(1)
    heads = [torch.randn(3, 21, 8, 8), torch.randn(3, 21, 16, 16)]
    t = torch.tensor([[0, 0, 0.3, 0.3, 0.2, 0.3], [0, 1, 0.7, 0.6, 0.5, 0.5], [2, 1, 0.5, 0.5, 0.1, 0.1],
                      [2, 0, 0.52, 0.48, 0.12, 0.1], [2, 0, 0.9, 0.1, 0.05, 0.05]])
    fn = YoloLoss(heads_of(spec))
    total, _ = fn(heads, t, (64, 64))
    per = 0.0
    for i in range(3):
        ti = t[t[:, 0] == i].clone()
        ti[:, 0] = 0
        per += fn([h[i:i + 1] for h in heads], ti, (64, 64))[0].item()
    assert total.item() == pytest.approx(per, rel=1e-5)


def test_empty_targets_and_degenerate_boxes():
    spec = tiny_cfg(64)
    fn = YoloLoss(heads_of(spec))
    heads = [torch.zeros(2, 21, 8, 8, requires_grad=True), torch.zeros(2, 21, 16, 16, requires_grad=True)]
    total, _ = fn(heads, torch.zeros(0, 6), (64, 64))
    assert total.item() == pytest.approx(2 * 3 * (64 + 256) * math.log(2), rel=1e-5)  # every cell a negative
    total2, parts2 = fn(heads, torch.tensor([[0, 0, 0.5, 0.5, 0.0, 0.2]]), (64, 64))
    assert parts2["n_pos"].item() == 0 and total2.item() == pytest.approx(total.item())


def test_iou_variants():
    a = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    for kind in ("iou", "giou", "diou", "ciou"):
        assert bbox_iou_variant(a, a, kind).item() == pytest.approx(1.0, abs=1e-6)
    far = torch.tensor([[0.9, 0.9, 0.1, 0.1]])
    assert bbox_iou_variant(a, far, "iou").item() == 0.0
    assert bbox_iou_variant(a, far, "giou").item() < 0 and bbox_iou_variant(a, far, "diou").item() < 0


@pytest.mark.parametrize("iou_loss", ["mse", "ciou"])
def test_tiny_overfit_loss_decreases(iou_loss):
    spec = tiny_cfg(64, classes=2, bn=True, iou_loss=iou_loss)
    torch.manual_seed(0)
    model = Darknet(spec).train()
    x = torch.rand(2, 3, 64, 64)
    t = torch.tensor([[0, 0, 0.3, 0.3, 0.3, 0.4], [0, 1, 0.7, 0.7, 0.2, 0.2], [1, 1, 0.5, 0.5, 0.6, 0.5]])
    fn = YoloLoss([h.spec for h in model.heads])
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(60):
        loss, _ = fn(model(x), t, (64, 64))
        (loss / 2).backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.2 * losses[0]
