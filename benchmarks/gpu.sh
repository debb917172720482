#!/usr/bin/env bash
# One GPU benchmark for issue 7 (training speed), <= 8 minutes on a machine without network that already has
# torch, numpy, opencv-python-headless, onnxruntime, pyyaml, matplotlib and tqdm. Nothing is installed: the
# repository is used through PYTHONPATH (INSTALL=1 tries `pip install --no-deps --no-build-isolation -e .`).
#
#   benchmarks/gpu.sh [WEIGHTS]
#
# WEIGHTS: the official yolov3-tiny.weights, or a folder holding yolov3-tiny.weights (+ yolov3-tiny.cfg and
# coco.names, written from the published cfg / as placeholders when absent). Without it, $DARKTUNE_HOME's cache
# is used when present; without either, the parts that need the COCO weights (reproduce) are skipped.
#
# Parts, in priority order, each under `timeout` and within the whole budget (BUDGET_S, default 450 s):
#   env         versions, GPU name
#   train       benchmarks/bench_gpu_train.py: the bare Tiny YOLOv3 step (fp32; bf16 autocast + channels_last;
#               + torch.compile) at SIZE, batch BATCH, 1 class, and the full loop fed by the device-side path
#               (uint8 cache -> batch_augment -> step), freeze 0 and 13; ratio loop / bare
#   augment     benchmarks/bench_batch_augment.py: augment_batch alone, images/s
#   bench_train `darktune bench train --device DEVICE --json` (the training module's own bench), if present
#   reproduce   `darktune reproduce --profile full --device DEVICE`: time for each run to reach the target mAP
#               (needs the COCO weights; whatever finished within the budget is reported)
# A table is printed at the end; raw outputs stay in OUT (default: a new /tmp/darktune-gpu.* folder).
#
# Environment: DEVICE (cuda), SIZE (416), BATCH (64), BUDGET_S (450), MODES (fp32,bf16cl,compile; on cpu
# fp32,bf16cl), ITERS (20), REPEATS (3), IMAGES (256), PY (python3), OUT, T_TRAIN (270), T_AUGMENT (45),
# T_BENCH_TRAIN (120), SKIP (space-separated part names), PROFILE (full).
# The full reproduce profile does not fit in 8 minutes next to the rest (its data alone is 6,000 synthetic
# 416x416 images); it gets what is left of the budget and reports the runs that finished. To time it alone:
#   SKIP="train augment bench_train" BUDGET_S=1200 benchmarks/gpu.sh [WEIGHTS]
# CPU dry run: DEVICE=cpu SIZE=64 BATCH=4 ITERS=2 REPEATS=1 IMAGES=8 T_BENCH_TRAIN=30 benchmarks/gpu.sh
set -u

cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-416}
BATCH=${BATCH:-64}
BUDGET_S=${BUDGET_S:-450}
ITERS=${ITERS:-20}
REPEATS=${REPEATS:-3}
IMAGES=${IMAGES:-256}
if [ "$DEVICE" = "cpu" ]; then MODES=${MODES:-fp32,bf16cl}; else MODES=${MODES:-fp32,bf16cl,compile}; fi
OUT=${OUT:-$(mktemp -d /tmp/darktune-gpu.XXXXXX)}
mkdir -p "$OUT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
STATUS_FILE="$OUT/status.tsv"
: > "$STATUS_FILE"

log() { echo "[gpu.sh $(date +%H:%M:%S) ${SECONDS}s] $*" >&2; }

# run_part NAME LIMIT_S CMD... : stdout -> OUT/NAME.out, stderr -> OUT/NAME.err (and the terminal)
run_part() {
    local name=$1 limit=$2
    shift 2
    case " ${SKIP:-} " in *" $name "*) skip_part "$name" "in SKIP"; return 0 ;; esac
    local left=$((BUDGET_S - SECONDS - 5))
    if [ "$left" -lt 20 ]; then
        log "$name: skipped (budget spent)"
        printf '%s\tskipped: budget spent\t0\n' "$name" >> "$STATUS_FILE"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    log "$name: start (limit ${limit}s)"
    local t0=$SECONDS
    timeout -k 10 "$limit" "$@" > "$OUT/$name.out" 2> >(tee "$OUT/$name.err" >&2)
    local rc=$?
    local took=$((SECONDS - t0))
    local what="ok"
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="timed out after ${limit}s"
    [ "$rc" -ne 0 ] && [ "$what" = "ok" ] && what="failed (exit $rc)"
    log "$name: $what in ${took}s"
    printf '%s\t%s\t%s\n' "$name" "$what" "$took" >> "$STATUS_FILE"
    return 0
}

skip_part() {
    log "$1: skipped ($2)"
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >> "$STATUS_FILE"
}

# ---------------------------------------------------------------- setup (no network: nothing is downloaded)
if [ "${INSTALL:-0}" = "1" ]; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || log "pip install failed; using PYTHONPATH"
fi
if [ $# -ge 1 ]; then
    src=$1
    if [ -d "$src" ]; then wdir=$src; weights="$src/yolov3-tiny.weights"; else wdir=$(dirname "$src"); weights=$src; fi
    if [ ! -f "$weights" ]; then
        log "weights not found: $weights"
        exit 2
    fi
    home="$OUT/home/yolov3-tiny"
    mkdir -p "$home"
    ln -sf "$(readlink -f "$weights")" "$home/yolov3-tiny.weights"
    if [ -f "$wdir/yolov3-tiny.cfg" ]; then
        ln -sf "$(readlink -f "$wdir/yolov3-tiny.cfg")" "$home/yolov3-tiny.cfg"
    else
        "$PY" benchmarks/bench_gpu_train.py --write-cfg "$home/yolov3-tiny.cfg"
    fi
    if [ -f "$wdir/coco.names" ]; then
        ln -sf "$(readlink -f "$wdir/coco.names")" "$home/coco.names"
    else
        for i in $(seq 0 79); do echo "class$i"; done > "$home/coco.names"
    fi
    export DARKTUNE_HOME="$OUT/home"
    log "weights from $weights (DARKTUNE_HOME=$DARKTUNE_HOME)"
fi

run_part env 60 "$PY" -c '
import json, platform, sys, torch, numpy, cv2
import darktune
d = sys.argv[1]
out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
       "opencv": cv2.__version__, "device": d, "cuda": torch.cuda.is_available(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "bf16": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None}
print(json.dumps(out))
if d.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("DEVICE=" + d + " but torch sees no CUDA device")
' "$DEVICE"
if grep -q '^env	failed' "$STATUS_FILE"; then
    cat "$OUT/env.err" >&2
    log "environment check failed: stopping"
    exit 1
fi

# ---------------------------------------------------------------- the parts
run_part train "${T_TRAIN:-270}" "$PY" benchmarks/bench_gpu_train.py --device "$DEVICE" --size "$SIZE" \
    --batch "$BATCH" --modes "$MODES" --freeze 0,13 --iters "$ITERS" --repeats "$REPEATS" --images "$IMAGES" --json

run_part augment "${T_AUGMENT:-45}" "$PY" benchmarks/bench_batch_augment.py --device "$DEVICE" --size "$SIZE" \
    --batches "$BATCH" --repeats "$REPEATS" --images "$((IMAGES < 64 ? IMAGES : 64))" --json

if "$PY" -c 'import darktune.train.bench' 2> /dev/null; then
    run_part bench_train "${T_BENCH_TRAIN:-120}" "$PY" -m darktune bench train --device "$DEVICE" --sizes "$SIZE" \
        --batch "$BATCH" --freeze 13 --json
else
    skip_part bench_train "darktune.train.bench is not in this checkout"
fi

HAS_WEIGHTS='import sys; from darktune.darknet import zoo; sys.exit(0 if zoo.cached("yolov3-tiny") else 3)'
if ! "$PY" -m darktune reproduce --help > /dev/null 2>&1; then
    skip_part reproduce "no 'darktune reproduce' command"
elif ! "$PY" -c "$HAS_WEIGHTS" 2> /dev/null; then
    skip_part reproduce "no COCO weights in \$DARKTUNE_HOME and no WEIGHTS argument"
elif [ "$DEVICE" = "cpu" ] && [ "${REPRODUCE_ON_CPU:-0}" != "1" ]; then
    skip_part reproduce "DEVICE=cpu (the full profile is for a GPU; REPRODUCE_ON_CPU=1 forces it)"
else
    run_part reproduce "$BUDGET_S" "$PY" -m darktune reproduce --profile "${PROFILE:-full}" --device "$DEVICE" \
        --out "$OUT/reproduce" --json
fi

# ---------------------------------------------------------------- the table
"$PY" - "$OUT" "${PROFILE:-full}" <<'PYEOF'
import json, sys
from pathlib import Path

out, profile = Path(sys.argv[1]), sys.argv[2]


def load(name):
    """The last JSON line of OUT/name.out, or None."""
    try:
        lines = [ln for ln in (out / f"{name}.out").read_text().splitlines() if ln.strip().startswith("{")]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


env = load("env") or {}
print()
print(f"== darktune GPU benchmark: {env.get('gpu') or env.get('device', '?')}, torch {env.get('torch', '?')}, "
      f"python {env.get('python', '?')} ==")
print(f"{'part':<12} {'status':<34} {'seconds':>7}")
for line in (out / "status.tsv").read_text().splitlines():
    name, status, secs = (line.split("\t") + ["", ""])[:3]
    print(f"{name:<12} {status:<34} {secs:>7}")

train = load("train")
if train:
    print(f"\nTraining step, {train['size']}x{train['size']} batch {train['batch']}, {train['classes']} class "
          f"({train['device_name']}; cudnn TF32 allowed: {train.get('cudnn_allow_tf32')})")
    print(f"{'mode':<9} {'freeze':>6} {'bare img/s':>11} {'loop img/s':>11} {'loop/bare':>9}")
    cases = {(c["mode"], c["freeze"]): c for c in train["cases"]}
    for c in train["cases"]:
        if "error" in c:
            print(f"{c['mode']:<9} {c['freeze']:>6} error: {c['error']}")
            continue
        loop = c.get("loop_images_per_s")
        loop_s = "%.1f" % loop if loop else "-"
        ratio_s = "%.2f" % c["loop_over_bare"] if loop else "-"
        print(f"{c['mode']:<9} {c['freeze']:>6} {c['bare_images_per_s']:>11.1f} {loop_s:>11} {ratio_s:>9}")
    best = max((c for c in train["cases"] if c.get("loop_images_per_s") and c["freeze"] == 0),
               key=lambda c: c["loop_images_per_s"], default=None)
    compiled = cases.get(("compile", 0), {}).get("bare_images_per_s")
    if best:
        ref = compiled or best["bare_images_per_s"]
        print(f"best loop (freeze 0): {best['loop_images_per_s']:.0f} img/s ({best['mode']}); target >= 4500 and "
              f">= 0.75 x compiled bare ({0.75 * ref:.0f}): "
              f"{'MET' if best['loop_images_per_s'] >= max(4500, 0.75 * ref) else 'MISSED'}")
    for mode in ("fp32", "bf16cl", "compile"):
        a, b = cases.get((mode, 0), {}), cases.get((mode, 13), {})
        key = "loop_images_per_s" if a.get("loop_images_per_s") and b.get("loop_images_per_s") else "bare_images_per_s"
        if a.get(key) and b.get(key):
            print(f"freeze 13 / freeze 0 ({mode}, {key.split('_')[0]}): {b[key] / a[key]:.2f}x")

aug = load("augment")
if aug:
    for b, row in aug["results"].items():
        for name in ("batch_augment", "cache+augment"):
            if name in row:
                print(f"{name} alone, batch {b}: {row[name]['images_per_s']:.0f} img/s ({aug['device_name']})")

bt = load("bench_train")
if bt:
    print("\ndarktune bench train:")
    print("\n".join(bt["lines"]) if isinstance(bt.get("lines"), list) else json.dumps(bt)[:2000])

rep_dir = out / "reproduce"
if rep_dir.is_dir():
    print(f"\nreproduce --profile {profile} (time to the target mAP, training seconds):")
    rows = []
    for s in sorted(rep_dir.rglob("summary.json")):
        try:
            d = json.loads(s.read_text())
        except (OSError, ValueError):
            continue
        ttt = d.get("time_to_target") or {}
        rows.append((str(s.parent.relative_to(rep_dir)), d.get("status"), d.get("best_map"),
                     ttt.get("seconds"), ttt.get("iteration")))
    for run, status, best, secs, it in rows:
        best_s = f"{100 * best:.1f}" if isinstance(best, (int, float)) else "-"
        reach = f"{secs:.1f} s (it {it})" if secs is not None else "not reached"
        print(f"  {run:<40} {str(status):<18} best mAP {best_s:>5}  target: {reach}")
    if not rows:
        print("  no finished run (see reproduce.err)")
    summary = load("reproduce")
    if summary:
        print(f"  whole profile wall: {summary.get('wall_s')} s, failed runs: {summary.get('failed')}")
print(f"\nraw outputs: {out}")
PYEOF
