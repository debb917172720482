"""The known models' transfer starts and the study's frozen-layer cuts, each in the model's own darknet layer
numbering: what an experiment spec's `model:` means, and what a report compares.

Owns: `ModelStudy` (one known model's transfer starts and study cuts), `MODELS`, `builtin_starts(model)` and
`ALL_BUILTIN_STARTS` (names no stage may take, whatever the model).

The study's starts were made for Tiny YOLOv3 (24 layers): `backbone` = an ImageNet classifier's layers 0..12,
`coco15` = darknet's `partial ... 15` of the COCO weights (the backbone and the 13x13 head's 1x1 and 3x3 convs).
Tiny YOLOv4 (38 layers) has the same parts at other numbers: its CSP backbone is layers 0..26, and darknet's
own transfer start `yolov4-tiny.conv.29` (`partial ... 29`) is layers 0..28, the backbone and the 13x13 head's
1x1 (27) and 3x3 (28) convs: the exact counterpart of conv.15.

The study froze N = 0, 13 or 20 layers of Tiny YOLOv3: none; its backbone (layers 0..12); all but the 26x26
head's last two convs (21, 22). On Tiny YOLOv4 the same cuts are 0, 27 (its backbone, layers 0..26) and 35
(0..34 frozen: 35 and 36 train, as 21 and 22 in v3). See docs/study.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from darktune.darknet.specs import NetworkSpec, section_name

# One letter per layer kind: a network's layer sequence as `layer_kinds` writes it
_KIND_LETTERS = {"convolutional": "c", "maxpool": "m", "route": "r", "upsample": "u", "yolo": "y", "shortcut": "s"}


@dataclass(frozen=True)
class ModelStudy:
    """A known model's starting points (the COCO partial start, the ImageNet backbone's layer count) and the
    study's frozen-layer cuts."""

    name: str  # the zoo name (darktune weights fetch NAME): its cfg and COCO weights
    partial: str  # the name of the COCO partial start (`coco15`, `coco29`)
    partial_layers: int  # that start loads layers 0..partial_layers-1 of the COCO weights
    backbone_layers: int  # an ImageNet backbone's layers (weights.backbone_layers' default)
    study_freeze: tuple[int, int, int]  # the study's N = 0, 13, 20 in this model's layers
    layers: str  # the network's layer kinds, one letter each (`layer_kinds` of its official cfg)

    def __post_init__(self) -> None:
        if not 0 < self.backbone_layers <= self.partial_layers:
            raise ValueError(f"{self.name}: the backbone must lie inside the partial start")
        if self.study_freeze[:2] != (0, self.backbone_layers):
            raise ValueError(f"{self.name}: the study's cuts are none, the backbone, and a deeper one")

    def study_n(self, frozen: int) -> int | None:
        """The study's N (0, 13, 20) for `frozen` layers of this model; None when it is not one of its cuts."""
        return dict(zip(self.study_freeze, (0, 13, 20))).get(frozen)


MODELS: dict[str, ModelStudy] = {
    "yolov3-tiny": ModelStudy("yolov3-tiny", partial="coco15", partial_layers=15, backbone_layers=13,
                              study_freeze=(0, 13, 20), layers="cmcmcmcmcmcmccccyrcurccy"),
    "yolov4-tiny": ModelStudy("yolov4-tiny", partial="coco29", partial_layers=29, backbone_layers=27,
                              study_freeze=(0, 27, 35), layers="cccrccrcrmcrccrcrmcrccrcrmccccyrcurccy"),
}
DEFAULT_MODEL = "yolov3-tiny"


def builtin_starts(model: str) -> tuple[str, ...]:
    """The starting-point names a spec for `model` may use besides its stages and weights files."""
    return ("scratch", "backbone", MODELS[model].partial, "coco")


ALL_BUILTIN_STARTS = tuple(dict.fromkeys(s for m in MODELS for s in builtin_starts(m)))


def layer_kinds(spec: NetworkSpec) -> str:
    """The network's layers as one letter each (c conv, m maxpool, r route, u upsample, y yolo, s shortcut): what
    a cfg builds, whatever its classes, anchors or input size."""
    return "".join(_KIND_LETTERS.get(section_name(layer), "?") for layer in spec.layers)


def built_model(spec: NetworkSpec) -> str | None:
    """The known model whose layers `spec` builds (a cfg edited for its classes, anchors or size still does),
    None for any other network."""
    kinds = layer_kinds(spec)
    return next((name for name, m in MODELS.items() if m.layers == kinds), None)
