"""Training throughput benchmark (`darktune bench train`, benchmarks/bench_train.py).

For each network size, in the same process and interleaved (so background load hits every case alike):
  * bare: Darknet (yolov3-tiny, 1 class) on random tensors: forward, a sum-of-squares loss, backward, SGD step
    (same memory format and optimizer as training; frozen layers only have requires_grad off);
  * train: `darktune.train.config.train` on a synthetic target set at that size (augmentation, YOLO loss, non-finite
    guard, logging) with the CPU loader: images/s over the iterations after the first `WARMUP` (the first
    one decodes the images);
  * train_gpu_aug: the same with ``gpu_augment=True`` (uint8 cache + whole-batch augmentation on the device,
    `darktune.train.device_inputs`), at freeze 0;
  * inputs_cpu_loader / inputs_gpu_aug: the two input paths alone (augmented batches, no model), so their
    own cost shows beside the step's.
Multi-scale is off in every case (fixed size). Each case is measured `repeats` times; the report gives
medians and the ratios train/bare (goal >= 0.9), train_gpu_aug/train and train_gpu_aug/bare, and train
freeze N / train freeze 0 (goal >= 2.5; ``freeze=0`` leaves the freeze cases out).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from darktune.darknet import zoo
from darktune.darknet.cfg import parse_cfg
from darktune.darknet.model import Darknet
from darktune.data.check import check_dataset
from darktune.data.synth.sets import make_target_set
from darktune.devices import resolve_device
from darktune.train.config import TrainConfig
from darktune.train.loop import train
from darktune.train.device_inputs import DeviceBatches
from darktune.train.freeze import set_frozen
from darktune.train.init import build_optimizer
from darktune.train.inputs import TrainBatches
from darktune.train.loop import augment_config

WARMUP = 2


def _bare(spec, batch: int, freeze: int, iterations: int, channels_last: bool, amp: bool, device: str) -> float:
    torch.manual_seed(0)
    model = Darknet(spec)
    set_frozen(model, range(freeze))
    model.to(device).train()
    x = torch.rand(batch, 3, spec.net.height, spec.net.width, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = build_optimizer(model, 1e-4, 0.9, 5e-4)
    times = []
    for i in range(WARMUP + iterations):
        t = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            heads = model(x)
        sum(h.float().square().mean() for h in heads).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    return batch * len(times) / sum(times)


def _train(cfg: str, data: str, out: Path, size: int, batch: int, freeze: int, iterations: int,
           channels_last: bool, amp: bool, device: str, gpu_augment: bool = False) -> float:

    train(TrainConfig(cfg=cfg, data=data, freeze=freeze, iterations=WARMUP + iterations, batch=batch, size=size,
                      out=str(out), device=device, checkpoint_every=10 ** 9, channels_last=channels_last,
                      amp=amp, compile=False, gpu_augment=gpu_augment, multi_scale=False), progress=False)
    recs = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    t = {r["iteration"]: r["train_s"] for r in recs if "loss" in r}
    last = max(t)
    return batch * (last - WARMUP) / (t[last] - t[WARMUP])


def _inputs_only(cfg: str, data: str, cache: Path, size: int, batch: int, iterations: int, gpu_augment: bool,
                 device: str) -> float:
    """images/s of the input path alone (no model): the CPU loader's or the device path's `inputs`."""
    spec = parse_cfg(cfg).with_classes(1).with_size(size, size)
    items = check_dataset(data, "train", progress=False).good
    aug, dev = augment_config(spec), torch.device(device)
    if gpu_augment:
        src = DeviceBatches(items, (size, size), aug, batch, 1, 0, device=dev, cache_path=cache)
    else:
        src = TrainBatches(items, (size, size), aug, batch, 1, 0, device=dev)
    times = []
    for i in range(WARMUP + iterations):  # the first pass decodes the images (RAM cache) or maps the file
        t = time.perf_counter()
        src.inputs(i, 0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i >= WARMUP:
            times.append(time.perf_counter() - t)
    src.close()
    return batch * len(times) / sum(times)


def _measure(cfg: str, tmp: Path, size: int, batch: int, iterations: int, repeats: int, freeze: int,
             channels_last: bool, amp: bool, device: str, progress: bool) -> dict[str, list[float]]:
    """images/s samples of every case at one size, interleaved repeat by repeat."""
    data = str(make_target_set(tmp / f"set{size}", max(2 * batch, 16), size, seed=0, val_fraction=0.0))
    spec = parse_cfg(cfg).with_classes(1).with_size(size, size)
    names = ["bare_f0", "train_f0", "train_gpu_aug_f0"] + ([f"bare_f{freeze}", f"train_f{freeze}"] if freeze else [])
    cases = {name: [] for name in names + ["inputs_cpu_loader", "inputs_gpu_aug"]}
    for r in range(repeats):
        for name, samples in cases.items():
            kind, _, fr = name.rpartition("_f")
            if name.startswith("inputs_"):
                ips = _inputs_only(cfg, data, tmp / "cache", size, batch, 2 * iterations, name.endswith("gpu_aug"),
                                   device)
            elif kind == "bare":
                ips = _bare(spec, batch, int(fr), iterations, channels_last, amp, device)
            else:
                ips = _train(cfg, data, tmp / f"run{size}_{name}_{r}", size, batch, int(fr), iterations,
                             channels_last, amp, device, gpu_augment=kind == "train_gpu_aug")
            samples.append(round(ips, 3))
            if progress:
                print(f"  size {size} {name} repeat {r + 1}/{repeats}: {ips:.2f} images/s", flush=True)
    return cases


def _summarise(size: int, batch: int, freeze: int, device: str, cases: dict) -> tuple[dict, str]:
    med = {k: statistics.median(v) for k, v in cases.items()}
    best = {k: max(v) for k, v in cases.items()}  # the least disturbed sample, when others share the CPU
    entry = {"size": size, "batch": batch, "samples": cases, "median_images_per_s": med, "best_images_per_s": best,
             "train_over_bare_f0": med["train_f0"] / med["bare_f0"],
             "gpu_aug_over_train_f0": med["train_gpu_aug_f0"] / med["train_f0"],
             "gpu_aug_over_bare_f0": med["train_gpu_aug_f0"] / med["bare_f0"],
             "best_train_over_bare_f0": best["train_f0"] / best["bare_f0"],
             "best_gpu_aug_over_train_f0": best["train_gpu_aug_f0"] / best["train_f0"],
             "train_iterations_per_s_f0": med["train_f0"] / batch,
             "inputs_gpu_aug_over_cpu_loader": med["inputs_gpu_aug"] / med["inputs_cpu_loader"]}
    line = (f"size {size}, batch {batch}, {device}: bare {med['bare_f0']:.2f} img/s; train (CPU loader) "
            f"{med['train_f0']:.2f} img/s ({entry['train_over_bare_f0']:.2f}x bare, goal >= 0.9); train "
            f"--gpu-augment {med['train_gpu_aug_f0']:.2f} img/s ({entry['gpu_aug_over_train_f0']:.2f}x the CPU "
            f"loader, {entry['gpu_aug_over_bare_f0']:.2f}x bare); best samples: bare {best['bare_f0']:.2f}, train "
            f"{best['train_f0']:.2f}, gpu-augment {best['train_gpu_aug_f0']:.2f}; input path alone (no model): CPU "
            f"loader {med['inputs_cpu_loader']:.1f} img/s, gpu-augment {med['inputs_gpu_aug']:.1f} img/s "
            f"({entry['inputs_gpu_aug_over_cpu_loader']:.2f}x)")
    if freeze:
        f = f"f{freeze}"
        entry.update({f"train_over_bare_{f}": med[f"train_{f}"] / med[f"bare_{f}"],
                      f"freeze{freeze}_speedup_train": med[f"train_{f}"] / med["train_f0"],
                      f"freeze{freeze}_speedup_bare": med[f"bare_{f}"] / med["bare_f0"],
                      f"best_freeze{freeze}_speedup_train": best[f"train_{f}"] / best["train_f0"],
                      f"train_iterations_per_s_{f}": med[f"train_{f}"] / batch})
        line += (f"; freeze {freeze}: train {med[f'train_{f}']:.2f} img/s "
                 f"({entry[f'freeze{freeze}_speedup_train']:.2f}x freeze 0, goal >= 2.5), bare "
                 f"{med[f'bare_{f}']:.2f} img/s")
    return entry, line


def run_bench_train(device: str = "cpu", sizes: list[int] = (416, 160), batch: int = 8, iterations: int = 6,
                    repeats: int = 3, freeze: int = 13, channels_last: bool = True, amp: bool = False,
                    threads: int | None = None, progress: bool = True) -> dict:
    """Medians of images/s per case and size, ratios, and the machine; see the module docstring.
    `threads`: torch CPU threads for the measurement (default: torch's)."""
    resolve_device(device)  # a bad --device fails here, in one line, before anything is fetched or timed
    if threads:
        torch.set_num_threads(threads)
    cfg = str(zoo.fetch("yolov3-tiny").cfg)
    report = {"device": device, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "batch": batch,
              "iterations": iterations, "repeats": repeats, "freeze": freeze, "channels_last": channels_last,
              "amp": amp, "load_average_start": list(os.getloadavg()), "sizes": [], "lines": []}
    with tempfile.TemporaryDirectory(prefix="darktune-bench-train-") as tmp:
        for size in sizes:
            cases = _measure(cfg, Path(tmp), size, batch, iterations, repeats, freeze, channels_last, amp, device,
                             progress)
            entry, line = _summarise(size, batch, freeze, device, cases)
            report["sizes"].append(entry)
            report["lines"].append(line)
    report["load_average_end"] = list(os.getloadavg())
    report["lines"].append(f"medians of {repeats} runs x {iterations} iterations; torch threads "
                           f"{report['torch_threads']}, load average {report['load_average_start'][0]:.1f} -> "
                           f"{report['load_average_end'][0]:.1f} (other processes share the CPU)")
    return report
