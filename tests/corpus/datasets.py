"""A tiny darknet network and tiny datasets, so that the reliability tests can train and detect in seconds.

`tiny_cfg_text` is a real darknet cfg (two [yolo] heads like yolov3-tiny, at 64x64 with 8-64 filters).
`make_dataset` writes a darknet dataset (images with one bright box each, labels, obj.names, train.txt,
valid.txt, obj.data) under any file names, so the same builder serves hostile names.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ANCHORS = "6,8, 10,14, 16,12, 22,26, 34,30, 48,52"


def tiny_cfg_text(classes: int = 1, size: int = 64, batch: int = 4) -> str:
    """Two-head darknet cfg: 20 layers, stride 32 and 16 heads (2x2 and 4x4 at 64 px)."""
    filters = (classes + 5) * 3

    def conv(f: int, k: int = 3, bn: bool = True, act: str = "leaky") -> str:
        bn_line = "batch_normalize=1\n" if bn else ""
        return f"[convolutional]\n{bn_line}filters={f}\nsize={k}\nstride=1\npad=1\nactivation={act}\n"

    pool = "[maxpool]\nsize=2\nstride=2\n"
    yolo = ("[yolo]\nmask = {mask}\nanchors = " + ANCHORS + f"\nclasses={classes}\nnum=6\njitter=.2\n"
            "ignore_thresh = .7\ntruth_thresh = 1\nrandom=0\n")
    net = (f"[net]\nbatch={batch}\nsubdivisions=1\nwidth={size}\nheight={size}\nchannels=3\nmomentum=0.9\n"
           "decay=0.0005\nangle=0\nsaturation = 1.5\nexposure = 1.5\nhue=.1\nlearning_rate=0.001\nburn_in=2\n"
           "max_batches = 20\npolicy=steps\nsteps=15\nscales=.1\n")
    parts = [net, conv(8), pool, conv(16), pool, conv(32), pool, conv(32), pool, conv(64), pool,  # 0..9
             conv(64), conv(filters, 1, bn=False, act="linear"), yolo.format(mask="3,4,5"),  # 10..12
             "[route]\nlayers = -3\n", conv(16, 1), "[upsample]\nstride=2\n",  # 13..15
             "[route]\nlayers = -1, 8\n", conv(32), conv(filters, 1, bn=False, act="linear"),  # 16..18
             yolo.format(mask="0,1,2")]  # 19
    return "\n".join(parts)


def write_tiny_cfg(path: Path, classes: int = 1, size: int = 64) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tiny_cfg_text(classes, size))
    return path


def box_image(seed: int, h: int = 48, w: int = 64) -> tuple[np.ndarray, str]:
    """(BGR image with one bright box, its darknet label line for class 0)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 60 + seed % 40, np.uint8)
    bw, bh = int(rng.integers(w // 4, w // 2)), int(rng.integers(h // 4, h // 2))
    x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
    img[y:y + bh, x:x + bw] = (230, 240, 250)
    line = f"0 {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
    return img, line


def make_dataset(root: Path, names: list[str], n_valid: int = 2, classes: tuple[str, ...] = ("window",),
                 folder: str = "images") -> Path:
    """A darknet dataset in `root` whose images are named `names` (label beside each, same stem); the last
    `n_valid` go to valid.txt. Returns obj.data. Paths in the lists are absolute."""
    import cv2

    root = Path(root)
    images_dir = root / folder
    images_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, name in enumerate(names):
        img, line = box_image(i)
        path = images_dir / name
        ok, buf = cv2.imencode(".png" if name.lower().endswith(".png") else ".jpg", img)
        assert ok
        path.write_bytes(buf.tobytes())
        path.with_suffix(".txt").write_text(line + "\n")
        paths.append(path)
    train, valid = paths[:len(paths) - n_valid], paths[len(paths) - n_valid:]
    (root / "obj.names").write_text("".join(c + "\n" for c in classes))
    (root / "train.txt").write_text("".join(f"{p}\n" for p in train))
    (root / "valid.txt").write_text("".join(f"{p}\n" for p in valid))
    obj = root / "obj.data"
    obj.write_text(f"classes = {len(classes)}\ntrain = {root / 'train.txt'}\nvalid = {root / 'valid.txt'}\n"
                   f"names = {root / 'obj.names'}\nbackup = {root / 'backup'}\n")
    return obj


def random_weights(cfg: Path, out: Path, seed: int = 0) -> Path:
    """Darknet weights of a randomly initialised model of `cfg` (darknet's init), written to `out`."""
    import torch

    from darktune.darknet.cfg import parse_cfg
    from darktune.darknet.model import Darknet
    from darktune.train.init import conv_layers, darknet_init
    from darktune.darknet.weights import save_weights

    model = Darknet(parse_cfg(cfg))
    darknet_init(model, conv_layers(model.spec), torch.Generator().manual_seed(seed))
    return save_weights(model, out)


def make_tiny(root: Path) -> tuple[Path, Path]:
    """(tiny cfg, obj.data) of a 6-image dataset (4 train, 2 valid) with plain names under `root`."""
    obj = make_dataset(Path(root) / "data", [f"im{i}.jpg" for i in range(6)], n_valid=2)
    return write_tiny_cfg(Path(root) / "tiny.cfg"), obj


def write_image(path, w: int, h: int, value: int = 100):
    """A solid w x h picture in the format its suffix names (parent folders made); returns the path."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, np.full((h, w, 3), value, np.uint8))
    assert ok, path
    path.write_bytes(buf.tobytes())
    return path
