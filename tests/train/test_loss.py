"""YOLOv3 loss: darknet's assignment (best anchor over all anchors), ignore_thresh, iou_thresh, truth_thresh,
and gradients equal to darknet's deltas; batch vectorisation; values equal to the previous implementation and to
a per-truth loop reference; no host sync (the loss runs on the meta device); a tiny overfit."""

import math

import pytest
import torch

from darktune.darknet.cfg import parse_cfg_text
from darktune.train.loss import YoloLoss, assign_targets, bbox_iou_variant
from darktune.darknet.model import Darknet

ANCHORS = "10,14, 23,27, 37,58, 81,82, 135,169, 344,319"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(size=64, mask26="0,1,2", classes=2, bn=False, iou_loss="mse", extra=""):
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
{extra}
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
{extra}
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


def test_truths_sharing_a_cell_and_anchor_are_both_positives():
    spec13, _ = heads_of(tiny_cfg(416))
    t = torch.tensor([[0, 0, 0.50, 0.50, 80 / 416, 80 / 416], [0, 1, 0.51, 0.52, 82 / 416, 84 / 416]])
    assert assign_targets(spec13, t, (416, 416), (13, 13))[4].tolist() == [0, 1]


def test_a_shared_slot_adds_the_box_deltas_and_unites_the_classes():
    """AlexeyAB darknet (yolo_layer.c): delta_yolo_box accumulates (+=) the deltas of every truth of a slot,
    delta_yolo_class leaves the earlier truth's class at 1 - p (the target becomes multi-hot)."""
    spec13, spec26 = heads_of(tiny_cfg(416))
    t = torch.tensor([[0, 0, 0.50, 0.50, 80 / 416, 80 / 416], [0, 1, 0.51, 0.52, 82 / 416, 84 / 416]])
    grads = []
    for rows in (t, t[:1], t[1:]):
        raw13 = torch.zeros(1, 3 * 7, 13, 13, requires_grad=True)
        raw26 = torch.zeros(1, 3 * 7, 26, 26)
        YoloLoss([spec13, spec26])([raw13, raw26], rows, (416, 416))[0].backward()
        grads.append(raw13.grad.view(3, 7, 13, 13)[:, :, 6, 6])
    both, first, second = grads
    a = int(both[:, 4].argmin())  # the anchor with an objectness target of 1
    assert torch.allclose(both[a, :4], first[a, :4] + second[a, :4], atol=1e-6)
    assert both[a, 5].item() == pytest.approx(-0.5) and both[a, 6].item() == pytest.approx(-0.5)  # both classes


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
    # AlexeyAB: the same overlap is not ignored when no class of the prediction scores above 0.25
    raw26 = raw26.detach().clone()
    raw26.view(1, 3, 7, 16, 16)[0, 2, 5:, 7, 7] = -2.0  # sigmoid 0.12
    raw26.requires_grad_(True)
    YoloLoss([y13, y26])([raw13, raw26], truth, (64, 64))[0].backward()
    assert raw26.grad.view(1, 3, 7, 16, 16)[0, 2, 4, 7, 7].item() == pytest.approx(0.5)
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


# ---------------------------------------------------------------- equality with the previous implementation

def random_case(seed, iou_loss="mse", mask26="0,1,2", classes=2, n_img=4, n_truth=12, extra=""):
    g = torch.Generator().manual_seed(seed)
    spec = tiny_cfg(64, mask26=mask26, classes=classes, iou_loss=iou_loss, extra=extra)
    heads = [torch.randn(n_img, 3 * (5 + classes), 8, 8, generator=g),
             torch.randn(n_img, 3 * (5 + classes), 16, 16, generator=g)]
    t = torch.cat([torch.randint(0, n_img, (n_truth, 1), generator=g).float(),
                   torch.randint(0, classes, (n_truth, 1), generator=g).float(),
                   torch.rand(n_truth, 2, generator=g),
                   torch.rand(n_truth, 2, generator=g) * 0.6 + 0.02], 1)
    return spec, heads, t


def overlap_case(seed, extra=""):
    """Small logits (predicted boxes ~ the anchors at the cell centres) and anchor-sized truths at cell centres:
    many predictions overlap a truth well (ignore_thresh, truth_thresh)."""
    g = torch.Generator().manual_seed(seed)
    spec = tiny_cfg(64, classes=2, extra=extra)
    heads = [torch.randn(2, 21, 8, 8, generator=g) * 0.1, torch.randn(2, 21, 16, 16, generator=g) * 0.1]
    anchors = torch.tensor([[10, 14], [23, 27], [37, 58], [81, 82]]) / 64
    k = torch.randint(0, 4, (10,), generator=g)
    cells = torch.randint(2, 14, (10, 2), generator=g).float()
    t = torch.cat([torch.randint(0, 2, (10, 1), generator=g).float(),
                   torch.randint(0, 2, (10, 1), generator=g).float(),
                   (cells + 0.5 + 0.1 * torch.randn(10, 2, generator=g)) / 16,
                   anchors[k] * (1 + 0.1 * torch.rand(10, 2, generator=g))], 1)
    return spec, heads, t


# (total loss, sum of |gradient|) of the implementation before the sync-free rewrite (commit c2ae513), same cases;
# the gradient sums of the ciou/giou cases (1, 3) are those of darknet's IoU delta (train/box_delta.py), which
# replaced autograd through the decode (the values are unchanged)
GOLDEN = [
    (lambda: random_case(0), 3156.662353515625, 1972.1854553222656),
    (lambda: random_case(1, "ciou"), 3073.111572265625, 1939.9927368164062),
    (lambda: random_case(2, "mse", "1,2,3"), 3110.37109375, 1936.4447021484375),
    (lambda: random_case(3, "giou", "0,1,2", 3), 3142.95849609375, 1992.2792053222656),
    (lambda: random_case(4, "mse", "0,1,2", 1, 2, 30), 1689.89892578125, 1093.181640625),
    (lambda: overlap_case(5), 1311.1553955078125, 947.6946105957031),
]


@pytest.mark.parametrize("case", range(len(GOLDEN)))
def test_values_and_gradients_equal_the_previous_implementation(case):
    make, total_old, grad_old = GOLDEN[case]
    spec, heads, t = make()
    for h in heads:
        h.requires_grad_(True)
    total, _ = YoloLoss(heads_of(spec))(heads, t, (64, 64))
    total.backward()
    assert total.item() == pytest.approx(total_old, rel=1e-6)
    assert sum(float(h.grad.abs().sum()) for h in heads) == pytest.approx(grad_old, rel=1e-5)


# ---------------------------------------------------------------- a per-truth loop reference (darknet's order)

def _iou_cxcywh(a, b):
    ix = max(0.0, min(a[0] + a[2] / 2, b[0] + b[2] / 2) - max(a[0] - a[2] / 2, b[0] - b[2] / 2))
    iy = max(0.0, min(a[1] + a[3] / 2, b[1] + b[3] / 2) - max(a[1] - a[3] / 2, b[1] - b[3] / 2))
    inter = ix * iy
    return inter / max(a[2] * a[3] + b[2] * b[3] - inter, 1e-12)


def _softplus(x):
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _bce(x, y):
    return _softplus(x) - y * x


def _xy(x, target):
    q = min(max(target, 1e-6), 1 - 1e-6)
    lq = math.log(q) - math.log1p(-q)
    return _bce(x, target) - _bce(lq, target)


def reference_loss(specs, heads, t, net):
    """Loops as AlexeyAB darknet's yolo_layer.c: per prediction (ignore, truth_thresh), then per truth in order
    (best anchor, iou_thresh extras). The box terms of every truth written to a slot add up (divided by the
    slot's number of classes when iou_thresh < 1), the class target of a slot is the union of its truths'
    classes, a prediction is ignored only when it also scores some class > 0.25. mse box term, scale_x_y 1.
    Returns (loss, number of truth_thresh positives, number of iou_thresh extras)."""
    total, n_tt, n_extra = 0.0, 0, 0
    rows = [r for r in t.tolist() if r[4] > 0 and r[5] > 0]
    for spec, raw in zip(specs, heads):
        b, _, h, w = raw.shape
        na, nc = len(spec.mask), spec.classes
        p = raw.detach().double().view(b, na, 5 + nc, h, w).tolist()
        anchors = [(spec.anchors[2 * i] / net, spec.anchors[2 * i + 1] / net) for i in range(spec.num)]
        for bi in range(b):
            truths = [r[1:] for r in rows if int(r[0]) == bi]
            slots, weight = {}, {}
            for a in range(na):
                aw, ah = anchors[spec.mask[a]]
                for j in range(h):
                    for i in range(w):
                        v = [p[bi][a][c][j][i] for c in range(5 + nc)]
                        box = ((i + 1 / (1 + math.exp(-v[0]))) / w, (j + 1 / (1 + math.exp(-v[1]))) / h,
                               math.exp(v[2]) * aw, math.exp(v[3]) * ah)
                        ious = [_iou_cxcywh(box, tr[1:]) for tr in truths]
                        best = max(ious, default=0.0)
                        class_match = any(1 / (1 + math.exp(-v[5 + c])) > 0.25 for c in range(nc))
                        weight[a, j, i] = 0.0 if best > spec.ignore_thresh and class_match else 1.0
                        if best > spec.truth_thresh:
                            slots[a, j, i] = [(truths[ious.index(best)], spec.mask[a])]
                            n_tt += 1
            for tr in truths:
                i, j = min(int(tr[1] * w), w - 1), min(int(tr[2] * h), h - 1)
                ious = [_iou_cxcywh((0, 0, tr[3], tr[4]), (0, 0, aw, ah)) for aw, ah in anchors]
                best_n = ious.index(max(ious))
                for a, n in enumerate(spec.mask):
                    if n == best_n or (spec.iou_thresh < 1 and ious[n] > spec.iou_thresh):
                        slots.setdefault((a, j, i), []).append((tr, n))
                        n_extra += n != best_n
            for (a, j, i), wgt in weight.items():
                obj = p[bi][a][4][j][i]
                if (a, j, i) not in slots:
                    total += spec.obj_normalizer * wgt * _bce(obj, 0.0)
                    continue
                v = [p[bi][a][c][j][i] for c in range(5 + nc)]
                classes = {int(tr[0]) for tr, _ in slots[a, j, i]}
                box = 0.0
                for tr, n in slots[a, j, i]:
                    tx, ty = tr[1] * w - i, tr[2] * h - j
                    tw, th = math.log(tr[3] / anchors[n][0]), math.log(tr[4] / anchors[n][1])
                    box += (2 - tr[3] * tr[4]) * (_xy(v[0], tx) + _xy(v[1], ty) + 0.5 * (v[2] - tw) ** 2
                                                  + 0.5 * (v[3] - th) ** 2)
                if spec.iou_thresh < 1:
                    box /= len(classes)
                cls = sum(_bce(v[5 + c], float(c in classes)) for c in range(nc))
                total += spec.iou_normalizer * box + spec.obj_normalizer * _bce(obj, 1.0) + cls
    return total, n_tt, n_extra


@pytest.mark.parametrize("extra,make", [
    ("", lambda e: random_case(7, n_img=2, n_truth=8, extra=e)),
    ("iou_thresh=0.25", lambda e: random_case(8, n_img=2, n_truth=8, extra=e)),
    ("truth_thresh=0.6", lambda e: overlap_case(9, extra=e)),
    ("iou_thresh=0.3\ntruth_thresh=0.55", lambda e: overlap_case(10, extra=e)),
])
def test_loss_equals_a_loop_reference(extra, make):
    spec, heads, t = make(extra)
    total, _ = YoloLoss(heads_of(spec))(heads, t, (64, 64))
    ref, n_tt, n_extra = reference_loss(heads_of(spec), heads, t, 64)
    assert total.item() == pytest.approx(ref, rel=1e-5)
    if "truth_thresh" in extra:
        assert n_tt > 0  # the case exercises the option
    if "iou_thresh" in extra:
        assert n_extra > 0


# ---------------------------------------------------------------- iou_thresh and truth_thresh, by hand

def test_iou_thresh_adds_every_anchor_above_the_threshold():
    spec13, spec26 = heads_of(tiny_cfg(416, extra="iou_thresh=0.213"))
    # 30x36 px: IoU with 23x27 (best) 0.575, with 37x58 0.503, with 10x14 0.130, with 81x82 0.163
    t = torch.tensor([[0, 0, 0.5, 0.5, 30 / 416, 36 / 416]])
    _, a, gj, gi, _ = assign_targets(spec26, t, (416, 416), (26, 26))
    assert a.tolist() == [1, 2] and gj.tolist() == [13, 13] and gi.tolist() == [13, 13]
    assert assign_targets(spec13, t, (416, 416), (13, 13))[4].numel() == 0  # 81x82 is under the threshold
    spec13, spec26 = heads_of(tiny_cfg(416, extra="iou_thresh=0.1"))
    _, a, _, _, _ = assign_targets(spec26, t, (416, 416), (26, 26))
    _, a13, _, _, _ = assign_targets(spec13, t, (416, 416), (13, 13))
    assert a.tolist() == [0, 1, 2] and a13.tolist() == [0]  # extras also in a head without the best anchor


def test_iou_thresh_extra_slot_gets_darknets_deltas_for_its_anchor():
    spec = tiny_cfg(64, extra="iou_thresh=0.4")
    y13, y26 = heads_of(spec)
    torch.manual_seed(3)
    raw13 = (torch.randn(1, 21, 8, 8) * 0.5).requires_grad_(True)
    raw26 = (torch.randn(1, 21, 16, 16) * 0.5).requires_grad_(True)
    truth = torch.tensor([[0, 1, (5 + 0.4) / 16, (9 + 0.7) / 16, 30 / 64, 36 / 64]])  # best 23x27, extra 37x58
    total, parts = YoloLoss([y13, y26])([raw13, raw26], truth, (64, 64))
    total.backward()
    assert parts["n_pos"].item() == 2
    g = raw26.grad.view(1, 3, 7, 16, 16)[0, 2, :, 9, 5]
    p = raw26.detach().view(1, 3, 7, 16, 16)[0, 2, :, 9, 5]
    scale = 2 - (30 / 64) * (36 / 64)
    n = y26.iou_normalizer
    assert g[0].item() == pytest.approx(n * scale * (torch.sigmoid(p[0]).item() - 0.4), rel=1e-4)
    assert g[2].item() == pytest.approx(n * scale * (p[2].item() - math.log(30 / 37)), rel=1e-4)
    assert g[3].item() == pytest.approx(n * scale * (p[3].item() - math.log(36 / 58)), rel=1e-4)
    assert g[4].item() == pytest.approx(torch.sigmoid(p[4]).item() - 1, rel=1e-4)
    assert g[6].item() == pytest.approx(torch.sigmoid(p[6]).item() - 1, rel=1e-4)


def test_truth_thresh_makes_a_well_placed_prediction_a_positive():
    spec = tiny_cfg(64, extra="truth_thresh=0.75")
    y13, y26 = heads_of(spec)
    raw13 = torch.zeros(1, 21, 8, 8, requires_grad=True)
    raw26 = torch.zeros(1, 21, 16, 16)
    truth = torch.tensor([[0, 1, (6 + 0.5) / 16, (7 + 0.5) / 16, 23 / 64, 27 / 64]])  # anchor 1, cell (7, 6)
    v = raw26.view(1, 3, 7, 16, 16)
    v[0, 2, 0, 7, 7] = -30.0  # anchor 2 at cell (7, 7) shaped like the truth, half a cell right: IoU 0.8
    v[0, 2, 2, 7, 7] = math.log(23 / 37)
    v[0, 2, 3, 7, 7] = math.log(27 / 58)
    raw26.requires_grad_(True)
    total, parts = YoloLoss([y13, y26])([raw13, raw26], truth, (64, 64))
    total.backward()
    g = raw26.grad.view(1, 3, 7, 16, 16)
    assert parts["n_pos"].item() == 1  # truth_thresh positives are not counted as assigned
    assert g[0, 2, 4, 7, 7].item() == pytest.approx(torch.sigmoid(torch.tensor(0.0)).item() - 1)  # obj -> 1
    assert g[0, 2, 5, 7, 7].item() == pytest.approx(0.5) and g[0, 2, 6, 7, 7].item() == pytest.approx(-0.5)
    # box towards the truth from its own cell: tx = 6.5 - 7 = -0.5 (outside the cell), tw = log(23/37)
    scale = 2 - (23 / 64) * (27 / 64)
    n = y26.iou_normalizer
    assert g[0, 2, 0, 7, 7].item() == pytest.approx(n * scale * (torch.sigmoid(torch.tensor(-30.0)).item() + 0.5))
    assert g[0, 2, 2, 7, 7].item() == pytest.approx(0.0, abs=1e-6)
    assert g[0, 1, 4, 7, 6].item() == pytest.approx(-0.5)  # the assigned one, unchanged
    raw26.grad = None
    YoloLoss(heads_of(tiny_cfg(64)))([raw13, raw26], truth, (64, 64))[0].backward()
    assert raw26.grad.view(1, 3, 7, 16, 16)[0, 2, :, 7, 7].abs().sum().item() == 0.0  # without: just ignored


# ---------------------------------------------------------------- no host syncs, capacity, invalid rows

@pytest.mark.parametrize("extra", ["", "iou_thresh=0.3\ntruth_thresh=0.6"])
@pytest.mark.parametrize("iou_loss", ["mse", "ciou"])
def test_no_host_sync_the_loss_runs_on_the_meta_device(extra, iou_loss):
    """Meta tensors have no data: .item(), int(tensor), nonzero, unique or boolean-mask indexing raise there,
    so a forward+backward on meta proves the loss never waits for a CUDA device."""
    spec = tiny_cfg(64, iou_loss=iou_loss, extra=extra)
    heads = [torch.empty(2, 21, 8, 8, device="meta", requires_grad=True),
             torch.empty(2, 21, 16, 16, device="meta", requires_grad=True)]
    fn = YoloLoss(heads_of(spec))
    for n in (0, 5):
        total, parts = fn(heads, torch.empty(n, 6, device="meta"), (64, 64))
        total.backward()
        assert heads[1].grad.shape == heads[1].shape and set(parts) == {"box", "obj", "cls", "n_pos"}


def test_capacity_rules_and_overflow():
    spec = tiny_cfg(64)
    fn = YoloLoss(heads_of(spec))
    t = torch.tensor([[0, 0, 0.5, 0.5, 0.1, 0.1]] * 5 + [[1, 0, 0.5, 0.5, 0.1, 0.1]] * 2)
    assert fn.capacity(t, 2) == 8  # 5 truths in image 0, rounded up to a power of two
    assert fn.capacity(torch.zeros(0, 6), 2) == 1
    assert YoloLoss(heads_of(spec), max_truths=3).capacity(t, 2) == 3
    assert fn.capacity(torch.empty(7, 6, device="meta"), 2) == 8  # device targets: from the row count
    assert fn.capacity(torch.empty(1000, 6, device="meta"), 2) == spec.layers[spec.yolo_indices[0]].max
    # a capacity under the count drops the last truths of an image from ignore only
    _, heads, t = overlap_case(5)
    full = YoloLoss(heads_of(spec))(heads, t, (64, 64))[0].item()
    assert YoloLoss(heads_of(spec), max_truths=16)(heads, t, (64, 64))[0].item() == pytest.approx(full, rel=1e-6)
    one = YoloLoss(heads_of(spec), max_truths=1)(heads, t, (64, 64))
    assert one[0].item() > full and one[1]["n_pos"].item() == 10


def test_invalid_rows_are_masked_not_crashing():
    spec, heads, t = random_case(11, n_img=2, n_truth=6)
    fn = YoloLoss(heads_of(spec))
    clean = fn(heads, t, (64, 64))[0].item()
    junk = torch.tensor([[0, 0, float("nan"), 0.5, 0.1, 0.1], [1, 5, 0.5, 0.5, 0.1, 0.1],  # NaN; class 5 of 2
                         [7, 0, 0.5, 0.5, 0.1, 0.1], [0, 0, 0.5, 0.5, 0.0, 0.1],  # image 7 of 2; w = 0
                         [1, 0, 0.5, 0.5, float("inf"), 0.1]])
    mixed = torch.cat((junk[:2], t[:3], junk[2:], t[3:]))
    assert fn(heads, mixed, (64, 64))[0].item() == pytest.approx(clean, rel=1e-6)
