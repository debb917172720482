"""darknet cfg keys that `darktune train` does not honour: refused in one line naming the key, file and line,
never silently ignored (docs/darknet_training.md lists them with darknet's rule).

* ``[net] mixup``, ``blur``, ``gaussian_noise``: darknet's extra augmentations; not implemented. (``cutmix``,
  which darknet itself refuses for detectors, is refused when the cfg is read: `darktune.darknet.cfg`.)
* ``stopbackward=1`` on layer k: darknet stops the backward pass there (layers 0..k get no gradient). darktune
  honours it when the run freezes at least layers 0..k (``--freeze k+1``: bit-identical, BN statistics
  included, which is stronger than darknet's), and refuses it otherwise rather than train layers darknet
  would not.
"""

from __future__ import annotations

from darktune.darknet.specs import NetworkSpec

_NET_KEYS = {"mixup": "mixup (blend of two augmented images)", "blur": "blur (background or whole-image Gaussian blur)",
             "gaussian_noise": "gaussian_noise"}


def refuse_unhonoured(spec: NetworkSpec, frozen: list[int] | set[int]) -> None:
    """Raise DarktuneError for the first cfg key training would otherwise ignore (see the module docstring)."""
    net = spec.net
    for key, what in _NET_KEYS.items():
        if getattr(net, key):
            raise net.loc.error(f"[net] {key}={getattr(net, key):g}: darktune train does not implement darknet's "
                                f"{what}; remove the key (or set it to 0)", key)
    done = set(frozen)
    for k, layer in enumerate(spec.layers):
        if layer.stopbackward and not set(range(k + 1)) <= done:
            raise layer.loc.error(f"stopbackward=1 on layer {k}: darknet trains no layer up to {k}; pass "
                                  f"--freeze {k + 1} (darktune's freeze: layers 0..{k} unchanged, bit for bit) or "
                                  f"remove the key", "stopbackward")
