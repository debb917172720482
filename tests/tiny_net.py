"""A small random 1-class darknet network at 64 px whose scores spread over (0, 1): fast tests of detection
paths (sliced detection, whole-image mAP) that need boxes but not a trained model."""

from __future__ import annotations

from pathlib import Path

import torch

CFG = "[net]\nwidth=64\nheight=64\nchannels=3\n" + "".join(
    f"[convolutional]\nbatch_normalize=1\nfilters={f}\nsize=3\nstride=1\npad=1\nactivation=leaky\n"
    "[maxpool]\nsize=2\nstride=2\n" for f in (8, 16, 16)) + (
    "[convolutional]\nfilters=18\nsize=1\nstride=1\npad=1\nactivation=linear\n"
    "[yolo]\nmask=0,1,2\nanchors=4,4, 8,8, 16,16\nclasses=1\nnum=3\n")


def tiny_net(folder: Path, seed: int = 0):
    """(cfg path, weights path, model) of the network with seeded random weights, written into `folder`."""
    from darktune.darknet.load import load_darknet
    from darktune.darknet.weights import save_weights

    cfg = folder / "tiny.cfg"
    cfg.write_text(CFG)
    torch.manual_seed(seed)
    model, _ = load_darknet(cfg)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # objectness and class logits near 0: scores spread over (0, 1), many above 0.3
        head.bias[[4, 10, 16]] = 0.5
        head.bias[[5, 11, 17]] = 1.0
    weights = save_weights(model, folder / "tiny.weights")
    model, _ = load_darknet(cfg, weights)
    return cfg, weights, model
