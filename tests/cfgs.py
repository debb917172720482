"""cfg texts for tests, built from the published architectures (yolov3, yolov4-tiny) and the cached yolov3-tiny."""

from __future__ import annotations

NET = """[net]
batch=64
subdivisions=16
width={size}
height={size}
channels=3
momentum=0.9
decay=0.0005
angle=0
saturation = 1.5
exposure = 1.5
hue=.1
learning_rate={lr}
burn_in=1000
max_batches = {max_batches}
policy=steps
steps={steps}
scales=.1,.1
"""


def conv(filters: int, size: int, stride: int = 1, bn: bool = True, act: str = "leaky") -> str:
    bn_line = "batch_normalize=1\n" if bn else ""
    return f"[convolutional]\n{bn_line}filters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={act}\n"


def yolo(mask: str, anchors: str, classes: int, extra: str = "") -> str:
    n = anchors.count(",") // 2 + 1
    return (f"[yolo]\nmask = {mask}\nanchors = {anchors}\nclasses={classes}\nnum={n}\njitter=.3\n"
            f"ignore_thresh = .7\ntruth_thresh = 1\nrandom=1\n{extra}")


def yolov3_cfg(classes: int = 80) -> str:
    anchors = "10,13,  16,30,  33,23,  30,61,  62,45,  59,119,  116,90,  156,198,  373,326"
    out = [NET.format(size=608, lr=0.001, max_batches=500200, steps="400000,450000"), conv(32, 3), conv(64, 3, 2)]

    def res(n, c):
        for _ in range(n):
            out.extend([conv(c // 2, 1), conv(c, 3), "[shortcut]\nfrom=-3\nactivation=linear\n"])

    res(1, 64)
    for c, n in ((128, 2), (256, 8), (512, 8), (1024, 4)):
        out.append(conv(c, 3, 2))
        res(n, c)
    f = 3 * (classes + 5)
    for i, (c, mask, route) in enumerate(((512, "6,7,8", 61), (256, "3,4,5", 36), (128, "0,1,2", None))):
        out.extend([conv(c, 1), conv(2 * c, 3), conv(c, 1), conv(2 * c, 3), conv(c, 1), conv(2 * c, 3),
                    conv(f, 1, bn=False, act="linear"), yolo(mask, anchors, classes)])
        if route is not None:
            out.extend(["[route]\nlayers = -4\n", conv(c // 2, 1), "[upsample]\nstride=2\n",
                        f"[route]\nlayers = -1, {route}\n"])
    return "\n".join(out)


def yolov4_tiny_cfg(classes: int = 80) -> str:
    anchors = "10,14,  23,27,  37,58,  81,82,  135,169,  344,319"
    extra = ("scale_x_y = 1.05\ncls_normalizer=1.0\niou_normalizer=0.07\niou_loss=ciou\nresize=1.5\n"
             "nms_kind=greedynms\nbeta_nms=0.6\n")
    out = [NET.format(size=416, lr=0.00261, max_batches=2000200, steps="1600000,1800000"),
           conv(32, 3, 2), conv(64, 3, 2)]
    for c in (64, 128, 256):
        if c != 64:
            out.append(conv(c, 3))
        else:
            out.append(conv(64, 3))
        out.extend(["[route]\nlayers=-1\ngroups=2\ngroup_id=1\n", conv(c // 2, 3), conv(c // 2, 3),
                    "[route]\nlayers = -1,-2\n", conv(c, 1), "[route]\nlayers = -6,-1\n",
                    "[maxpool]\nsize=2\nstride=2\n"])
    f = 3 * (classes + 5)
    out.extend([conv(512, 3), conv(256, 1), conv(512, 3), conv(f, 1, bn=False, act="linear"),
                yolo("3,4,5", anchors, classes, extra), "[route]\nlayers = -4\n", conv(128, 1),
                "[upsample]\nstride=2\n", "[route]\nlayers = -1, 23\n", conv(256, 3),
                conv(f, 1, bn=False, act="linear"), yolo("1,2,3", anchors, classes, extra)])
    return "\n".join(out)


def small_cfg(net: dict | None = None, bn: bool = True, pools: bool = True, head: int = 18,
              masks: tuple[str, str] = ("0,1,2", "0,1,2"), anchors: str = "10,14, 23,27, 37,58", classes: int = 1,
              yolo_extra: str = "") -> str:
    """A two-head darknet cfg small enough to train in a second: three 3x3 convs of 8, 16, 16 filters
    (stride 1 with a maxpool after the first two, or stride 2 each without pools), a 1x1 linear head of
    `head` filters + [yolo], then a route back and another 1x1 head + [yolo]. [net] gets width=height=64
    and the keys of `net`."""
    keys = {"width": 64, "height": 64, **(net or {})}
    pool = "[maxpool]\nsize=2\nstride=2\n"
    stride = 1 if pools else 2

    def small_conv(filters: int, s: int) -> str:
        bn_line = "batch_normalize=1\n" if bn else ""
        return f"[convolutional]\n{bn_line}filters={filters}\nsize=3\nstride={s}\npad=1\nactivation=leaky\n"

    def head_and_yolo(mask: str) -> str:
        n = anchors.count(",") // 2 + 1
        return (f"[convolutional]\nsize=1\nfilters={head}\nactivation=linear\n"
                f"[yolo]\nmask={mask}\nanchors={anchors}\nclasses={classes}\nnum={n}\n{yolo_extra}")

    body = [small_conv(8, stride), pool if pools else "", small_conv(16, stride), pool if pools else "",
            small_conv(16, 2), head_and_yolo(masks[0]), "[route]\nlayers=-4\n", head_and_yolo(masks[1])]
    return "[net]\n" + "".join(f"{k}={v}\n" for k, v in keys.items()) + "".join(body)
