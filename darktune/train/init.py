"""Building what a training run starts from: the re-headed network, its initial weights, the optimizer.

Initial weights (`init_model`), reported layer by layer (loaded / new):
  * no weights: every conv layer new (darknet's init, see `darknet_init`).
  * a file holding exactly the floats of the re-headed network: all loaded.
  * a full file made for another class count (found with `infer_num_classes`): loaded into the network with
    that class count, then every conv layer whose tensors have the same shapes is copied; the others (the
    convs before each [yolo]) start fresh.
  * ``keep_classes`` (--keep-classes): a whole model for other classes (COCO's 80) loaded everywhere, and in the
    heads' output convs each anchor's box and objectness rows and the rows of the data's classes it has (by
    name) kept; the other classes' rows start fresh (`keep_class_rows`; init.json's "class_rows").
  * ``upto=N`` (or a file that holds exactly layers 0..N-1 of the network, e.g. ``yolov3-tiny.conv.15``):
    layers 0..N-1 loaded, the rest new. The header's ``seen`` is reported; a run counts its iterations from 0
    and, unless ``continue_schedule`` is set, also starts the learning-rate schedule there (darknet's ``-clear``).

Checks that need the run's length and the network (`check_against_network`: --eval-at, --unfreeze-at, --freeze
against the iterations and layers) and the warning about a burn-in as long as half the run (`burn_in_warning`).

Optimizer: SGD with the cfg's momentum; weight decay (``decay``) on conv weights only, not on biases or batch
norm scales/shifts, as darknet. With the loss divided by the iteration's batch this is exactly darknet's update
(darknet adds ``-decay*batch*w`` to the summed gradient and steps by ``lr/batch``). Parameter groups are built
in layer order from parameters that require grad, so rebuilding after an unfreeze is deterministic.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from darktune.darknet.cfg import CfgWarning, ConvSpec, NetworkSpec, YoloSpec
from darktune.darknet.classes import (
    copy_class_rows, copy_other_layers, match_classes, names_beside, read_names_file,
)
from darktune.errors import DarktuneError
from darktune.darknet.known_cfg import known_bad_mask_warning
from darktune.darknet.model import Darknet
from darktune.darknet.weights import (
    conv_float_counts, expected_floats, infer_num_classes, load_weights, read_weights_file,
)

if TYPE_CHECKING:
    from darktune.darknet.specs import NetParams
    from darktune.train.config import TrainConfig


def darknet_init(model: nn.Module, layers: list[int], generator: torch.Generator) -> None:
    """Darknet's fresh conv layer: weights uniform in +-sqrt(2 / fan_in), biases 0, BN scale 1 and stats 0/1."""
    with torch.no_grad():
        for i in layers:
            block = model.layers[i]
            w = block.conv.weight
            bound = math.sqrt(2.0 / (w.shape[1] * w.shape[2] * w.shape[3]))
            w.copy_((torch.rand(w.shape, generator=generator) * 2 - 1) * bound)
            if block.conv.bias is not None:
                block.conv.bias.zero_()
            if block.bn is not None:
                block.bn.weight.fill_(1.0)
                block.bn.bias.zero_()
                block.bn.running_mean.zero_()
                block.bn.running_var.fill_(1.0)


def conv_layers(spec: NetworkSpec) -> list[int]:
    return [i for i, layer in enumerate(spec.layers) if isinstance(layer, ConvSpec)]


def _prefix_upto(spec: NetworkSpec, n_floats: int) -> int | None:
    """N such that the file holds exactly the conv layers 0..N-1 (N just past the last conv it holds)."""
    total = 0
    for i, n in conv_float_counts(spec):
        total += n
        if total == n_floats:
            return i + 1
        if total > n_floats:
            return None
    return None


def init_model(model: nn.Module, weights: str | Path | None, upto: int | None, seed: int,
               keep_classes: tuple[list[str], list[str]] | None = None) -> dict:
    """Fill `model` (a re-headed `Darknet`) from `weights`; returns the report written to RUN/init.json.
    `keep_classes` = (the data's class names, the weights' class names): see `keep_class_rows`.
    Warns (CfgWarning, as `load_darknet`) when a loaded head's cfg carries a value known to be wrong for the
    weights: yolov3-tiny's published mask 0,1,2 with the COCO weights (`darktune.darknet.known_cfg`)."""
    report = _init_model(model, weights, upto, seed, keep_classes)
    heads = {i - 1 for i in model.spec.yolo_indices}  # the output conv before each [yolo]
    if weights is not None and heads & set(report["loaded_layers"]):
        message = known_bad_mask_warning(model.spec, weights)
        if message:
            warnings.warn(message, CfgWarning, stacklevel=2)
            report["warning"] = message
    return report


def _init_model(model: nn.Module, weights: str | Path | None, upto: int | None, seed: int,
                keep_classes: tuple[list[str], list[str]] | None) -> dict:
    spec = model.spec
    convs = conv_layers(spec)
    gen = torch.Generator().manual_seed(seed)
    darknet_init(model, convs, gen)
    report = {"weights": None if weights is None else str(weights), "mode": "scratch", "upto": upto,
              "file_classes": None, "loaded_layers": [], "new_layers": convs}
    if weights is None:
        return report
    wf = read_weights_file(weights)
    report["seen"] = int(wf.header.seen)  # images the file's training had seen (darknet's header)
    n = int(wf.floats.size)
    if keep_classes is not None:
        return keep_class_rows(model, weights, n, keep_classes, report)
    if upto is None and n != expected_floats(spec):
        file_classes = infer_num_classes(spec, n)
        if file_classes is None:
            upto = _prefix_upto(spec, n)
            if upto is None:
                raise DarktuneError(
                    f"weights hold {n:,} floats: not this cfg with any class count ({expected_floats(spec):,} "
                    f"for {spec.num_classes} classes) nor whole leading layers of it; pass --upto N for a "
                    "partial file", path=str(weights))
            report["mode"] = "partial (layer count found from the file size)"
        else:
            source = Darknet(spec.with_classes(file_classes))
            load_weights(source, weights)
            loaded = _copy_matching(source, model, convs)
            report.update(mode="classes adapted", file_classes=file_classes, loaded_layers=loaded,
                          new_layers=[i for i in convs if i not in loaded])
            return report
    if upto is not None:
        if not 0 < upto <= len(spec.layers):
            raise DarktuneError(f"--upto must be in 1..{len(spec.layers)}, got {upto}")
        load_weights(model, weights, upto=upto)
        report.update(mode=report["mode"] if report["mode"] != "scratch" else "partial", upto=upto,
                      loaded_layers=[i for i in convs if i < upto], new_layers=[i for i in convs if i >= upto])
        return report
    load_weights(model, weights)
    report.update(mode="full", file_classes=spec.num_classes, loaded_layers=convs, new_layers=[])
    return report


def keep_class_rows(model: nn.Module, weights: str | Path, n_floats: int,
                    names: tuple[list[str], list[str]], report: dict) -> dict:
    """Every layer of `weights` (a whole model, for any class count) into `model`; in the heads' output convs,
    every anchor's box and objectness rows and the rows of the data's classes that the weights' classes have
    (`darktune.darknet.classes.match_classes`); the rest of those rows keep their fresh initialisation.
    `report["class_rows"]` says, per data class, which row of the weights it starts from (or null: new)."""
    spec = model.spec
    data_names, weights_names = names
    file_classes = spec.num_classes if n_floats == expected_floats(spec) else infer_num_classes(spec, n_floats)
    if file_classes is None:
        raise DarktuneError(f"--keep-classes needs a whole model of this cfg; the weights hold {n_floats:,} floats, "
                            "which fit no class count of it (a partial file such as conv.15?)", path=str(weights))
    if len(weights_names) != file_classes:
        raise DarktuneError(f"--keep-classes: {len(weights_names)} class names for weights of {file_classes} "
                            "classes (give the weights' own names file with --weights-names)")
    match = match_classes(data_names, weights_names)
    if not match.matched:
        raise DarktuneError(f"--keep-classes: none of the data's classes ({', '.join(data_names[:8])}) is among the "
                            f"weights' {file_classes} classes by name; leave --keep-classes out to start them fresh")
    source = Darknet(spec.with_classes(file_classes))
    load_weights(source, weights)
    copy_other_layers(source, model)
    heads = copy_class_rows(source, model, match)
    convs = conv_layers(spec)
    report.update(mode="classes kept", file_classes=file_classes, loaded_layers=convs, new_layers=[],
                  class_rows={"layers": heads, "per_anchor": "box (tx, ty, tw, th) and objectness rows from the "
                              "weights; class rows as below (null: new, darknet's initialisation)",
                              "classes": match.to_dict()})
    return report


def weights_class_names(weights: str | Path, names_file: str | Path | None) -> list[str]:
    """The class names of `weights` for --keep-classes: `names_file` (--weights-names), else the names file
    beside the weights (`darktune.darknet.classes.names_beside`: the zoo's coco.names)."""
    found = names_file or names_beside(weights)
    if found is None:
        raise DarktuneError("--keep-classes needs the names of the weights' classes: no .names file beside the "
                            "weights; give --weights-names FILE (e.g. coco.names)", path=str(weights))
    return read_names_file(found)


# New heads' objectness probability at the start (`set_objectness_prior`; --obj-prior): 0.01 rather than darknet's
# 0.5 (bias 0). At 0.5 every one of the thousands of cells of a head is a confident false positive: the
# objectness loss of the first iterations is ~100x the rest, and after a short burn-in it swings at full lr. On
# real images (deepforest tree crowns, 200 iterations, multi-scale, burn-in 20) darktune learnt nothing at 0.5
# and reached darknet's AP50 several times sooner at 0.01 (docs/darknet_training.md, "mAP curves beside
# darknet's"); the same bias as RetinaNet's focal-loss prior and YOLOv5's objectness init.
DEFAULT_OBJ_PRIOR = 0.01


def set_objectness_prior(model: nn.Module, layers: list[int], prior: float) -> list[int]:
    """Objectness bias of every anchor of the yolo heads' input convs among `layers` (new ones) := logit(prior),
    so a fresh head starts by predicting about `prior` objects per cell and anchor instead of 0.5 (darknet: bias
    0). Returns the layers changed."""
    logit = math.log(prior / (1.0 - prior))
    spec, changed = model.spec, []
    with torch.no_grad():
        for i in layers:
            nxt = spec.layers[i + 1] if i + 1 < len(spec.layers) else None
            conv = getattr(model.layers[i], "conv", None)
            if not isinstance(nxt, YoloSpec) or conv is None or conv.bias is None:
                continue
            per_anchor = 5 + nxt.classes
            conv.bias.view(-1, per_anchor)[:, 4] = logit
            changed.append(i)
    return changed


def _copy_matching(source: nn.Module, target: nn.Module, convs: list[int]) -> list[int]:
    loaded = []
    with torch.no_grad():
        for i in convs:
            src, dst = source.layers[i].state_dict(), target.layers[i].state_dict()
            if src.keys() == dst.keys() and all(src[k].shape == dst[k].shape for k in src):
                target.layers[i].load_state_dict(src)
                loaded.append(i)
    return loaded


def param_groups(model: nn.Module, decay: float) -> list[dict]:
    """[conv weights with weight decay, biases and BN parameters without], trainable only, in layer order."""
    decayed, plain = [], []
    for layer in model.layers:
        conv = getattr(layer, "conv", None)
        for name, p in layer.named_parameters():
            if not p.requires_grad:
                continue
            (decayed if conv is not None and p is conv.weight else plain).append(p)
    return [{"params": decayed, "weight_decay": decay}, {"params": plain, "weight_decay": 0.0}]


class DarknetSGD:
    """SGD with momentum and per-group weight decay: the update of ``torch.optim.SGD`` (dampening 0, no
    nesterov) and of darknet. A small class of our own because constructing any ``torch.optim.Optimizer``
    imports torch._dynamo (about 3 s of start-up on a 2-core CPU). Same state_dict layout as torch's."""

    _step_supports_amp_scaling = False

    def __init__(self, groups: list[dict], lr: float, momentum: float):
        self.param_groups = [{"lr": lr, "momentum": momentum, "weight_decay": 0.0, **g} for g in groups]
        self.state: dict = {}

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if group["weight_decay"]:  # in place: the gradients are dropped after the step anyway
                torch._foreach_add_(grads, params, alpha=group["weight_decay"])
            bufs = []
            for p, g in zip(params, grads):
                st = self.state.setdefault(p, {})
                if "momentum_buffer" not in st:  # first step: the buffer is the gradient (as torch)
                    st["momentum_buffer"] = g.detach().clone()
                    bufs.append(None)
                else:
                    bufs.append(st["momentum_buffer"])
            old = [b for b in bufs if b is not None]
            if old:
                torch._foreach_mul_(old, group["momentum"])
                torch._foreach_add_(old, [g for g, b in zip(grads, bufs) if b is not None])
            torch._foreach_add_(params, [self.state[p]["momentum_buffer"] for p in params], alpha=-group["lr"])

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def state_dict(self) -> dict:
        index, groups = {}, []
        for group in self.param_groups:
            ids = []
            for p in group["params"]:
                index[p] = len(index)
                ids.append(index[p])
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[p]: {"momentum_buffer": st["momentum_buffer"]} for p, st in self.state.items()
                 if p in index and "momentum_buffer" in st}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, sd: dict) -> None:
        if [len(g["params"]) for g in sd["param_groups"]] != [len(g["params"]) for g in self.param_groups]:
            raise DarktuneError("optimizer state does not match the trainable parameters (frozen layers differ?)")
        params = [p for g in self.param_groups for p in g["params"]]
        for group, saved in zip(self.param_groups, sd["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
        self.state = {}
        for i, st in sd["state"].items():
            p = params[int(i)]
            if tuple(st["momentum_buffer"].shape) != tuple(p.shape):
                raise DarktuneError("optimizer state does not match the parameters' shapes")
            self.state[p] = {"momentum_buffer": st["momentum_buffer"].to(p.device, p.dtype).clone()}


def build_optimizer(model: nn.Module, lr: float, momentum: float, decay: float,
                    previous: DarknetSGD | None = None) -> DarknetSGD:
    """SGD over the trainable parameters; momentum buffers of parameters already trained carry over."""
    groups = [g for g in param_groups(model, decay) if g["params"]]
    if not groups:
        raise DarktuneError("nothing to train: every layer with weights is frozen")
    opt = DarknetSGD(groups, lr, momentum)
    if previous is not None:
        for p, st in previous.state.items():
            if p.requires_grad and "momentum_buffer" in st:
                opt.state[p] = {"momentum_buffer": st["momentum_buffer"].clone()}
    return opt


def check_against_network(config: TrainConfig, iterations: int, n_layers: int) -> None:
    """The options that only make sense once the run's length and the network's layer count are known."""
    late = [k for k in config.eval_at if k > iterations]
    if late:
        raise DarktuneError(f"--eval-at {','.join(map(str, late))}: past the run's last iteration ({iterations} "
                            "iterations); give evaluation points in 1.." + str(iterations))
    if config.unfreeze_at is not None and config.unfreeze_at >= iterations:
        raise DarktuneError(f"--unfreeze-at {config.unfreeze_at} is not before the run's last iteration ({iterations} "
                            f"iterations): the layers would never train unfrozen; give K < {iterations}")
    if config.freeze > n_layers:
        raise DarktuneError(f"--freeze {config.freeze}: the network has layers 0..{n_layers - 1} (--freeze N "
                            f"freezes layers 0..N-1, so N is at most {n_layers})")
    missing = [i for i in config.freeze_layers or [] if i >= n_layers]
    if missing:
        contiguous = len(missing) > 1 and missing == list(range(missing[0], missing[-1] + 1))
        shown = f"{missing[0]}-{missing[-1]}" if contiguous else ",".join(map(str, missing))
        raise DarktuneError(f"--freeze-layers: the network has layers 0..{n_layers - 1}, so {shown} cannot be frozen")


def burn_in_warning(net: NetParams, iterations: int, offset: int, from_flag: bool) -> str | None:
    """The line a run prints once at a fresh start when its burn-in (`net.burn_in`, after any --burn-in) is half
    the run or more: darknet's cfgs say 1000, made for runs of thousands of iterations, and the lr stays near 0
    for most of a short one. None when the burn-in is short, absent, or already behind (`offset`:
    --continue-schedule)."""
    burn_in = net.burn_in
    if burn_in <= 0 or offset >= burn_in or burn_in < iterations / 2:
        return None
    source = "--burn-in" if from_flag else "the cfg's [net] burn_in"
    return (f"warning: burn_in {burn_in} ({source}) is at least half of the run's {iterations} iterations: the "
            f"learning rate ramps up as lr * (i / {burn_in})^{net.power:g}, so it stays near 0 for most of the run; "
            f"pass a smaller --burn-in (e.g. --burn-in {max(1, iterations // 10)})")
