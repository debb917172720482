"""What happens inside a run: one iteration (micro-batches, non-finite guard, update), the evaluation points,
logging to metrics.jsonl / progress bar / TensorBoard, checkpoints, and the files written at the end."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time

import torch

from darktune.errors import DarktuneError
from darktune.train.state import Run, TrainResult
from darktune.train.feature_cache import feature_cache_for
from darktune.train.files import write_run_file
from darktune.darknet.weights import Header, save_weights, seen_after
from darktune.files import atomic_write_bytes
from darktune.eval.evaluate import evaluate_model, load_eval_set, PrefixCache
from darktune.eval.tiled import Slicing, evaluate_tiled, load_whole_set
from darktune.train.chart import write_chart
from darktune.train.checkpoint import save_checkpoint
from darktune.train.freeze import freeze_proof, frozen_at, layer_digests, PrefixFrozenModel, set_frozen
from darktune.train.init import build_optimizer
from darktune.train.inputs import size_counts
from darktune.train import recovery, timed
from darktune.train.schedule import learning_rate


def wrap_model(run: Run) -> torch.nn.Module:
    """What the step calls: the frozen-prefix forward, under DDP when distributed, compiled on request.
    Rebuilt whenever the frozen set changes (DDP registers only the parameters that require grad)."""
    dist = run.dist
    compile_ = dist.device.type == "cuda" if run.config.compile is None else run.config.compile
    net = PrefixFrozenModel(run.model)
    if dist.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        net = DDP(net, device_ids=[dist.device.index] if dist.device.type == "cuda" else None,
                  broadcast_buffers=False)
    if compile_:
        net = torch.compile(net)
    return net


def _elapsed(run: Run) -> float:
    return (run.elapsed_base or 0.0) + time.perf_counter() - run.t_start


def open_outputs(run: Run, progress: bool) -> None:
    from tqdm import tqdm

    if run.elapsed_base is None:
        run.elapsed_base = run.state.elapsed_seconds
    if not run.dist.main:
        return
    try:
        run.metrics = open(run.dir / "metrics.jsonl", "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (closed at the end)
    except OSError as exc:
        raise DarktuneError(f"cannot open: {exc.strerror or exc}", path=str(run.dir / "metrics.jsonl")) from None
    run.progress = tqdm(total=run.iterations, initial=run.step, disable=not progress, file=sys.stderr,
                        unit="it", dynamic_ncols=True, desc=run.dir.name)
    if run.config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            run.log("tensorboard is not installed: no TensorBoard logs (metrics.jsonl has everything)")
        else:
            run.tb = SummaryWriter(str(run.dir / "tensorboard"))


def _write(run: Run, record: dict) -> None:
    if run.metrics is not None:
        try:
            run.metrics.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise DarktuneError(f"cannot write: {exc.strerror or exc}", path=str(run.dir / "metrics.jsonl")) from None
    if run.tb is not None:
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and value is not None:
                run.tb.add_scalar(key, value, record["iteration"])


# ------------------------------------------------------------------------------------------------ one iteration
def _set_lr(run: Run, iteration: int) -> float:
    offset = run.state.schedule_offset  # continue_schedule: where the weights' schedule was
    lr = learning_rate(run.net_params, iteration + offset, run.config.lr, run.iterations + offset, run.config.seed)
    lr *= recovery.lr_scale(run.guard, iteration)  # lowered for a while after a recovery
    for group in run.opt.param_groups:
        group["lr"] = lr
    return lr


def train_step(run: Run, iteration: int) -> tuple[bool, dict[str, torch.Tensor], str]:
    """One darknet iteration (1-based). Returns (applied, loss parts per image as detached tensors, why it was
    not applied: a non-finite loss or a spike, `darktune.train.recovery`)."""
    dist, dev = run.dist, run.dist.device
    per_rank = run.batch // dist.world
    run.model.train()
    buffers = _bn_buffers(run)
    backup = [b.clone() for b in buffers]  # a skipped step must not move the batch-norm statistics either
    sums: dict[str, torch.Tensor] = {}
    cache = feature_cache_for(run)
    for sub in range(run.subdivisions):
        x, targets = run.data.inputs(iteration - 1, sub)  # float (b, 3, S, S) in [0, 1] on the device
        hw = (x.shape[-2], x.shape[-1])  # S changes every 10 iterations with multi-scale
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync = (run.net.no_sync() if dist.world > 1 and sub < run.subdivisions - 1 and hasattr(run.net, "no_sync")
                else contextlib.nullcontext())
        with sync:
            with torch.autocast(dev.type, dtype=run.amp_dtype, enabled=run.amp_dtype is not None):
                heads = run.net(x) if cache is None else cache.forward(run.net, x, run.data.last_indices)
            loss, parts = run.loss_fn(heads, targets, hw)
            scaled = loss / per_rank
            (run.scaler.scale(scaled) if run.scaler is not None else scaled).backward()
        parts["loss"] = loss.detach()
        for key, value in parts.items():
            sums[key] = sums[key] + value if key in sums else value
    total = torch.stack([sums[k].detach().float() for k in recovery.TERMS])
    if dist.world > 1:
        import torch.distributed as td

        td.all_reduce(total)  # a NaN or inf on any rank makes the sum non-finite on every rank
    values = (total / run.batch).tolist()  # the one host sync of an iteration: a bad step must not be applied
    why = _judge(run, values, hw[0])
    if not why:
        if run.scaler is not None:
            run.scaler.step(run.opt)
            run.scaler.update()
        else:
            run.opt.step()
    else:
        torch._foreach_copy_(buffers, backup)
    run.opt.zero_grad(set_to_none=True)
    return not why, {k: v / per_rank if k != "n_pos" else v for k, v in sums.items()}, why


def _judge(run: Run, values: list[float], size: int) -> str:
    """Why the iteration must not be applied ("" when it may): a non-finite loss, or a spike of one of its terms
    (`darktune.train.recovery`). A good one's terms go into the spike reference."""
    if not math.isfinite(values[0]):
        return recovery.describe(values[0])
    scaled = recovery.scaled(values, size, run.spec.net.width)
    term, ratio = recovery.is_spike(run.guard, scaled, run.config.spike_factor)
    if term:
        return recovery.describe(values[0], term, ratio, size)
    run.guard.history = (run.guard.history + [scaled])[-recovery.HISTORY:]
    return ""


def _bn_buffers(run: Run) -> list[torch.Tensor]:
    """Running statistics of the batch norms that train (frozen ones never change)."""
    out = []
    for layer in run.model.layers:
        bn = getattr(layer, "bn", None)
        if bn is not None and bn.training:
            out += [bn.running_mean, bn.running_var, bn.num_batches_tracked]
    return out


def _unfreeze(run: Run) -> None:
    set_frozen(run.model, [])
    run.frozen = []
    run.opt = build_optimizer(run.model, 0.0, run.spec.net.momentum, run.spec.net.decay, previous=run.opt)
    run.net = wrap_model(run)
    run.guard.good = None  # the snapshots' optimizer state has the frozen run's parameters
    recovery.take_snapshot(run.guard, run.model, run.opt, run.step)
    run.log(f"iteration {run.step}: all layers unfrozen (--unfreeze-at {run.config.unfreeze_at})")


# ------------------------------------------------------------------------------------------------ the loop
def training_loop(run: Run) -> tuple[str, str]:
    c, st = run.config, run.state
    cuda = run.dist.device.type == "cuda"
    window_t, window_imgs = 0.0, 0
    if _evaluates_start(run) and _evaluate(run, 0):  # the start weights already meet the target
        save_state(run)
        return "stopped_at_target", f"mAP reached {c.target_map} at iteration 0 (the start weights)"
    if run.guard.good is None and run.guard.candidate is None:  # something to go back to from the start
        recovery.take_snapshot(run.guard, run.model, run.opt, run.step)
    it = run.step
    while it < run.iterations:  # with --time, run.iterations is fitted as the run goes (darktune.train.timed)
        it += 1
        if run.budget is not None and not timed.next_fits(run, it, timed.clock(run)):
            return _out_of_time(run, it - 1)
        budget_t = timed.clock(run) if run.budget is not None else 0.0
        if c.unfreeze_at is not None and it - 1 >= c.unfreeze_at and run.frozen:
            _unfreeze(run)
        lr = _set_lr(run, it)
        t = time.perf_counter()
        ok, parts, why = train_step(run, it)
        logging = it % c.log_every == 0 or it == run.iterations or not ok or it in run.eval_points
        if cuda and logging:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        st.train_seconds += dt
        window_t, window_imgs = window_t + dt, window_imgs + run.batch
        run.step = it
        if run.budget is not None:
            now = timed.clock(run)
            timed.after_iteration(run, it, now - budget_t, run.data.size_at(it - 1), now)
        if it == c.unfreeze_at and run.frozen:  # the end of the frozen phase: what freeze_proof.json compares to
            st.digests_at_unfreeze = _digests(run)
        st.skipped_steps += 0 if ok else 1
        st.bad_in_row = 0 if ok else st.bad_in_row + 1
        if logging:
            _log_iteration(run, it, ok, parts, lr, window_imgs / max(window_t, 1e-9))
            window_t, window_imgs = 0.0, 0
        if not ok:
            _recover(run, it, why)
        elif it % recovery.SNAPSHOT_EVERY == 0:
            recovery.take_snapshot(run.guard, run.model, run.opt, it)
        if run.progress is not None:
            run.progress.update(1)
        if st.bad_in_row >= c.max_bad_steps:
            message = (f"stopped at iteration {it}: the loss was not finite (or spiked) in {st.bad_in_row} "
                       "iterations in a row, though each went back to the last good state with a lower lr (try a "
                       "lower --lr, a longer burn_in, or check the labels)")
            run.log(message)
            return "failed", message
        stop = it in run.eval_points and _evaluate(run, it)
        if it % c.checkpoint_every == 0 or stop or it == run.iterations:
            save_state(run)
        if stop:
            return "stopped_at_target", f"mAP reached {c.target_map} at iteration {it}"
    return "finished", ""


def _out_of_time(run: Run, last: int) -> tuple[str, str]:
    """--time: the next iteration does not fit; `last` is the end (its evaluation unless done)."""
    run.iterations = last
    message = f"time budget {run.config.time} reached after iteration {last}"
    run.log(message)
    if run.budget_evaluates and not any(m[0] == last for m in run.state.maps):
        _evaluate(run, last)
    save_state(run)
    return "finished", message


def _recover(run: Run, it: int, why: str) -> None:
    """A bad iteration: back to the last good state, the lr lowered (`darktune.train.recovery`); said in
    train.log and metrics.jsonl."""
    g = run.guard
    back = recovery.recover(g, run.model, run.opt, it)
    where = f"back to the state after iteration {back}" if back is not None else "no earlier state kept yet"
    scale = recovery.lr_scale(g, it)
    run.log(f"iteration {it}: {why}: update skipped, {where}, lr x{scale:.3g} rising back to the schedule's over "
            f"{recovery.RAMP} iterations (recovery {g.recoveries}; {run.state.bad_in_row} bad in a row)")
    _write(run, {"iteration": it, "event": "recovery", "reason": why, "restored_iteration": back,
                 "lr_scale": scale, "recoveries": g.recoveries, "bad_in_row": run.state.bad_in_row})


def _digests(run: Run) -> dict[str, str]:
    return {str(i): v for i, v in layer_digests(run.model).items()}


def _evaluates_start(run: Run) -> bool:
    """mAP of the start weights (iteration 0) when the run evaluates (--eval-every / --eval-at), once: on a
    fresh start, or on a resume before the first update if it was not recorded yet."""
    c = run.config
    return (run.step == 0 and (bool(run.eval_points) and bool(c.eval_every or c.eval_at) or run.budget_evaluates)
            and not any(m[0] == 0 for m in run.state.maps))


def _log_iteration(run: Run, it: int, ok: bool, parts: dict, lr: float, images_per_s: float) -> None:
    keys = list(parts)
    values = dict(zip(keys, torch.stack([parts[k].float() for k in keys]).tolist()))  # one host sync
    finite = math.isfinite(values["loss"])  # a spike is finite, and its losses are written
    record = {"iteration": it, "loss": values["loss"] if finite else None,
              **{k: values[k] if finite else None for k in ("box", "obj", "cls")}, "n_pos": values.get("n_pos"),
              "lr": lr, "size": run.data.size_at(it - 1), "input": run.data.input_path,
              "images_per_s": round(images_per_s, 3), "train_s": round(run.state.train_seconds, 4),
              "elapsed_s": round(_elapsed(run), 4)}
    if not ok:
        record.update(skipped=True, skipped_steps=run.state.skipped_steps)
        if not finite:
            record["nonfinite"] = True
    _write(run, record)
    if run.progress is not None:
        run.progress.set_postfix(loss=f"{values['loss']:.3f}" if finite else "nan", lr=f"{lr:.2g}",
                                 img_s=f"{images_per_s:.1f}", refresh=False)


def _evaluate(run: Run, it: int) -> bool:
    """mAP at iteration `it` (rank 0); returns whether the run stops here (same answer on every rank)."""
    c, st = run.config, run.state
    stop = False
    t, budget_t = time.perf_counter(), timed.clock(run) if run.budget is not None else 0.0
    if run.dist.main:
        result = _measure(run)
        st.maps.append([it, result.map])
        st.final_map = result.map
        if st.best_map is None or result.map > st.best_map:
            st.best_map = result.map
            _save_weights(run, "best.weights")
        if c.eval_weights:
            _save_weights(run, f"iter_{it}.weights")
        reached = c.target_map is not None and result.map >= c.target_map
        if reached and st.time_to_target is None:
            st.time_to_target = {"iteration": it, "seconds": round(st.train_seconds, 4),
                                    "elapsed_seconds": round(_elapsed(run), 4)}
        stop = reached and c.stop_at_target
        _write(run, {"iteration": it, "map": result.map, "protocol": c.protocol, "precision": result.precision,
                     "recall": result.recall, "f1": result.f1, "avg_iou": result.avg_iou,
                     "eval_seconds": round(time.perf_counter() - t, 4), "train_s": round(st.train_seconds, 4),
                     "elapsed_s": round(_elapsed(run), 4)})
        run.log(f"iteration {it}: mAP {100 * result.map:.2f}% ({c.protocol}), best {100 * st.best_map:.2f}%")
    if run.dist.world > 1:
        import torch.distributed as td

        flag = torch.tensor([1.0 if stop else 0.0])
        td.broadcast(flag, 0)
        stop = bool(flag.item())
    if run.budget is not None:  # every rank (rank 0's fit is broadcast)
        now = timed.clock(run)
        timed.after_evaluation(run, it, now - budget_t, now)
    return stop


def _measure(run: Run):
    if run.config.eval_tile:  # whole valid images, sliced as `detect --tile` runs them
        if run.eval_set is None:
            run.eval_set = load_whole_set(run.config.data, "valid", run.config.max_valid_images)
        slicing = Slicing(run.config.eval_tile, run.config.eval_overlap, batch=run.config.eval_batch)
        return evaluate_tiled(run.model, run.eval_set, slicing, run.config.protocol, run.dist.device)
    if run.eval_cache is None:
        run.eval_cache = PrefixCache()
    if run.eval_set is None:
        hw = (run.spec.net.height, run.spec.net.width)
        run.eval_set = load_eval_set(run.config.data, hw, "valid", run.spec.net.letter_box,
                                     run.config.max_valid_images)
        if run.eval_set.n_skipped:
            run.log(f"valid list: {run.eval_set.n_skipped} bad images skipped")
    return evaluate_model(run.model, run.eval_set, run.config.protocol, run.config.eval_batch,
                          run.dist.device, autocast_dtype=run.amp_dtype, channels_last=run.channels_last,
                          prefix_cache=run.eval_cache)


# ------------------------------------------------------------------------------------------------ files
def _save_weights(run: Run, name: str) -> None:
    seen = seen_after(run.state.schedule_offset, run.step, run.batch)  # the lineage's images
    save_weights(run.model, run.dir / "weights" / name, Header(0, 2, 0, seen))


def save_state(run: Run) -> None:
    """checkpoint.pt and last.weights (rank 0)."""
    if not run.dist.main:
        return
    run.state.elapsed_seconds = _elapsed(run)
    if run.scaler is not None:
        run.state.scaler = run.scaler.state_dict()
    save_checkpoint(run.dir / "checkpoint.pt", model=run.model, optimizer=run.opt, step=run.step,
                    config=run.config.to_dict(), loader=run.data.position(run.step),
                    state={**run.state.to_checkpoint(), "guard": run.guard.to_checkpoint(run.step),
                           "budget": run.budget.to_dict() if run.budget is not None else None})
    _save_weights(run, "last.weights")
    run.state.last_saved_step = run.step


def write_summary(run: Run, status: str, message: str = "") -> dict:
    st = run.state
    ts = st.train_seconds
    summary = {
        "status": status, "message": message, "iterations": run.step, "iterations_planned": run.iterations,
        "best_map": st.best_map, "final_map": st.final_map, "protocol": run.config.protocol,
        "target_map": run.config.target_map, "time_to_target": st.time_to_target,
        "maps": st.maps, "train_seconds": round(ts, 4), "elapsed_seconds": round(_elapsed(run), 4),
        "images_per_s": round(run.step * run.batch / ts, 3) if ts > 0 else 0.0,
        "skipped_steps": st.skipped_steps, "recoveries": run.guard.recoveries, "train_images": len(run.data),
        "batch": run.batch,
        "subdivisions": run.subdivisions,
        "size": [run.spec.net.width, run.spec.net.height], "frozen_layers_at_end": run.frozen,
        "input": run.data.input_path, "multi_scale": run.data.multi_scale,
        "sizes": {str(k): n for k, n in size_counts(run.data, run.step).items()},  # iterations per training size
        "device": str(run.dist.device), "world_size": run.dist.world, "amp": str(run.amp_dtype),
        "init": {k: st.init.get(k) for k in ("mode", "weights", "upto", "loaded_layers", "new_layers")},
        "feature_cache": run.feature_cache.summary() if run.feature_cache is not None else None,
        "schedule_offset": st.schedule_offset,
        "time_budget": run.budget.to_dict() if run.budget is not None else None,
        "config": run.config.to_dict(),
    }
    atomic_write_bytes(run.dir / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    return summary


def _write_proof(run: Run) -> dict:
    """RUN/freeze_proof.json (fields: `darktune.train.freeze`). With --unfreeze-at K and the run past K, the frozen
    layers are checked from the start to iteration K, and their change after K is reported."""
    def by_layer(digests: dict) -> dict[int, str]:
        return {int(k): v for k, v in digests.items()}

    before = by_layer(run.state.digests_before)
    frozen = [i for i in frozen_at(run.config, 0, len(run.spec.layers)) if i in before]
    k = run.config.unfreeze_at
    unfrozen = k is not None and run.step > k
    at_k = run.state.digests_at_unfreeze if unfrozen else None
    if unfrozen and at_k is None:  # a resume past K from a checkpoint of older code: no digests at K
        proof = freeze_proof(before, layer_digests(run.model), [])
        proof.update(frozen_layers=frozen, frozen_unchanged=None, frozen_changed=None,
                     note=f"the layer digests at iteration {k} were not recorded (a checkpoint of an older "
                          "darktune): nothing shows the frozen phase")
    else:
        proof = freeze_proof(before, layer_digests(run.model), frozen, None if at_k is None else by_layer(at_k))
    proof["iterations"] = run.step
    proof["unfrozen_at"] = k if unfrozen else None
    write_run_file(run.dir / "freeze_proof.json", json.dumps(proof, indent=1) + "\n")
    return proof


def finish(run: Run, status: str, message: str) -> TrainResult:
    st = run.state
    if run.dist.main:
        if st.last_saved_step != run.step:
            save_state(run)
        proof = _write_proof(run)
        if proof["frozen_unchanged"] is False:  # cannot happen; say so loudly if it ever does
            run.log(f"WARNING: frozen layers changed: {proof['frozen_changed']}")
        if run.metrics is not None:
            run.metrics.close()
            run.metrics = None
        frozen = f"frozen {len(frozen_at(run.config, 0, len(run.spec.layers)))} layers"
        if proof["unfrozen_at"] is not None:
            frozen += f" until iteration {proof['unfrozen_at']}"
        title = f"{run.dir.name}: {st.init['mode']}, {frozen}, batch {run.batch}"
        write_chart(run.dir / "metrics.jsonl", run.dir / "chart.png", title, run.config.target_map)
        summary = write_summary(run, status, message)
        if run.progress is not None:
            run.progress.close()
        if run.tb is not None:
            run.tb.close()
        if run.log_file is not None:
            run.log_file.close()
            run.log_file = None
    else:
        summary = {"images_per_s": 0.0, "elapsed_seconds": _elapsed(run)}
    _dist_done(run)
    return TrainResult(run.dir, status, run.step, st.best_map, st.final_map, st.time_to_target,
                       summary["images_per_s"], round(st.train_seconds, 4), summary["elapsed_seconds"],
                       st.skipped_steps, [tuple(m) for m in st.maps], message)


def _dist_done(run: Run) -> None:
    if run.dist.world > 1:
        import torch.distributed as td

        if td.is_initialized():
            td.barrier()
