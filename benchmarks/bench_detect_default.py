"""`darktune detect`'s default (`--backend auto`) against each runtime's network call, in the same run.

For yolov3-tiny (COCO weights from the cache) at 416, batch 1, all CPU threads: the median of each installed
runtime's network call alone (torch, onnxruntime, OpenCV DNN: preprocessed input to raw heads), and the median
per image of detect's whole path with the auto default (read the file, resize, network, decode, NMS, the JSON
record: `darktune.cli.detect._image`, as `darktune detect --json` runs it), over photos made from matplotlib's
sample photograph at several sizes. The runtimes and detect take turns in small blocks, so a slow spell of a
shared machine hits all alike. Then the `darktune detect --json` command itself over the folder of photos,
per image with start-up cancelled: as it runs by default (on a CPU with several cores, images side by side,
one thread each: `darktune.deploy.pipeline`) and with --workers 1 (one image at a time on all threads, the
next one read ahead), the two taking turns; then a video's frames the same two ways. Goals (issue 16): auto picks a
runtime within 5% of the fastest network call; detect's per image <= 1.10x the fastest network call.

    .venv/bin/python benchmarks/bench_detect_default.py [--photos 32] [--rounds 8] [--sweeps 5] [--each-runtime]
        [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = [(512, 600), (640, 480), (800, 600), (1024, 768)]


def make_photos(folder: Path, n: int) -> list[Path]:
    """`n` JPEGs (quality 90) of the sample photograph, resized to the SIZES in turn."""
    import cv2
    import matplotlib

    image = cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"))
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        path = folder / f"photo{i:02d}.jpg"
        cv2.imwrite(str(path), cv2.resize(image, (w, h)), [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def make_video(path: Path, frames: int) -> Path:
    """An mp4v video of `frames` 640x480 frames: the sample photograph panning right, 4 px per frame."""
    import cv2
    import matplotlib

    image = cv2.resize(cv2.imread(str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
                       (640, 480))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (640, 480))
    for i in range(frames):
        writer.write(np.roll(image, 4 * i, axis=1))
    writer.release()
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=8, help="turns; each times --block calls of each")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--sweeps", type=int, default=5, help="runs of the detect command over the photos")
    parser.add_argument("--video-frames", type=int, default=64, help="frames of the video timed (640x480)")
    parser.add_argument("--each-runtime", action="store_true",
                        help="also time the command with --backend NAME for each installed runtime")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from darktune.deploy import backend_choice

    from darktune.darknet import zoo
    from darktune.devices import cpu_count
    from darktune.machine import cpu_name, load_average
    from darktune.cli import build_parser
    from darktune.cli.detect import _class_names, _image
    from darktune.deploy.detect import preprocess_batch
    from darktune.deploy.pipeline import worker_count
    from darktune.deploy.video import open_source

    fetched = zoo.fetch("yolov3-tiny", progress=False)
    cfg, weights = str(fetched.cfg), str(fetched.weights)
    runnable, missing = backend_choice.installed()
    runtimes = [backend_choice.build(n, cfg, weights, size=None, device="cpu", batch=1, threads=None)
                for n in runnable]
    started = time.perf_counter()
    auto, choice = backend_choice.choose(cfg, weights)  # probes here if this machine + model is not cached
    choose_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        photos = make_photos(Path(tmp), args.photos)
        det_args = build_parser().parse_args(["detect", *map(str, photos), "--cfg", cfg, "--weights", weights,
                                              "--json"])
        det_args.letterbox, det_args.choice = False, choice
        names = _class_names(det_args, auto)

        class Bar:  # what _image needs of tqdm
            def update(self, n):
                pass

            def write(self, *a, **k):
                pass

        def detect_one(path):
            return _image(det_args, auto, open_source(str(path)), names, None, Bar())

        x = preprocess_batch([open_source(str(photos[0]))._first], runtimes[0].net_hw)
        for r in runtimes:
            r.raw(x)
        detect_one(photos[0])
        net = {r.name: [] for r in runtimes}
        per_image, k = [], 0
        for _ in range(args.rounds):
            for r in runtimes:
                r.raw(x)  # untimed: the previous runtime's threads settle
                for _ in range(args.block):
                    t = time.perf_counter()
                    r.raw(x)
                    net[r.name].append(time.perf_counter() - t)
            for _ in range(args.block):
                t = time.perf_counter()
                detect_one(photos[k % len(photos)])
                per_image.append(time.perf_counter() - t)
                k += 1
        # the command itself over a folder of photos: per image = (all photos - one photo) / (n - 1), so
        # start-up cancels; medians of --sweeps runs, the default (images side by side, one thread each) and
        # --workers 1 (one image at a time on all threads, the next one read ahead) taking turns
        import contextlib
        import io

        from darktune.cli import main as cli_main

        def run(paths, *extra) -> float:
            t = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                cli_main(["detect", *map(str, paths), "--cfg", cfg, "--weights", weights, "--json", *extra])
            return time.perf_counter() - t

        def command_ms(backend: list[str]) -> tuple[float, float]:
            """(default, --workers 1) ms per image of the command with these backend options."""
            sweeps = {"one": [], "default": [], "workers1": []}
            run(photos[:1], *backend)
            for _ in range(args.sweeps):
                sweeps["one"].append(run(photos[:1], *backend))
                sweeps["default"].append(run(photos, *backend))
                sweeps["workers1"].append(run(photos, *backend, "--workers", "1"))
            one = float(np.median(sweeps["one"]))
            return tuple((float(np.median(sweeps[k])) - one) / (len(photos) - 1) * 1000
                         for k in ("default", "workers1"))

        sweep_ms, sweep1_ms = command_ms([])
        by_runtime = {n: command_ms(["--backend", n]) for n in runnable} if args.each_runtime else {}
        # a video: per frame = (all frames - one frame) / (frames - 1), medians of --sweeps runs, the default
        # (frames side by side) and --workers 1 taking turns
        clip = make_video(Path(tmp) / "clip.mp4", args.video_frames)
        video = {"one": [], "default": [], "workers1": []}
        run([clip], "--max-frames", "1")
        for _ in range(args.sweeps):
            video["one"].append(run([clip], "--max-frames", "1"))
            video["default"].append(run([clip]))
            video["workers1"].append(run([clip], "--workers", "1"))
        video_ms = {k: (float(np.median(video[k])) - float(np.median(video["one"]))) / (args.video_frames - 1) * 1000
                    for k in ("default", "workers1")}
    med = {n: float(np.median(v)) * 1000 for n, v in net.items()}
    fastest = min(med, key=med.get)
    detect_ms = float(np.median(per_image)) * 1000
    report = {
        "date": time.strftime("%Y-%m-%d"), "machine": cpu_name(), "cpus": cpu_count(),
        "model": "yolov3-tiny 416 batch 1", "photos": args.photos, "photo_sizes": SIZES,
        "network_median_ms": {n: round(v, 2) for n, v in med.items()}, "skipped": missing,
        "fastest": fastest, "auto": choice.backend, "auto_reason": choice.reason, "auto_choose_s": round(choose_s, 2),
        "auto_vs_fastest": round(med[choice.backend] / med[fastest], 3),
        "detect_per_image_median_ms": round(detect_ms, 2),
        "detect_vs_fastest_network": round(detect_ms / med[fastest], 3),
        "calls_per_runtime": args.rounds * args.block, "images_timed": len(per_image),
        "detect_command_per_image_ms": round(sweep_ms, 2),
        "detect_command_vs_fastest_network": round(sweep_ms / med[fastest], 3),
        "detect_command_workers": worker_count([str(p) for p in photos], "cpu"),
        "detect_command_workers1_per_image_ms": round(sweep1_ms, 2),
        "detect_command_workers1_vs_fastest_network": round(sweep1_ms / med[fastest], 3),
        "sweeps": args.sweeps,
        "video": {"frames": args.video_frames, "size": [640, 480], "per_frame_ms": round(video_ms["default"], 2),
                  "vs_fastest_network": round(video_ms["default"] / med[fastest], 3),
                  "workers1_per_frame_ms": round(video_ms["workers1"], 2),
                  "workers1_vs_fastest_network": round(video_ms["workers1"] / med[fastest], 3)},
        "detect_command_by_runtime": {n: {"per_image_ms": round(d, 2), "workers1_per_image_ms": round(w, 2),
                                          "vs_own_network": round(d / med[n], 3),
                                          "workers1_vs_own_network": round(w / med[n], 3)}
                                      for n, (d, w) in by_runtime.items()},
        "load_1min": load_average(),
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"bench detect default: {report['model']}, {report['machine']} ({report['cpus']} CPUs), {report['date']}")
    for n, v in sorted(med.items(), key=lambda kv: kv[1]):
        print(f"  network call {n:<12} {v:8.2f} ms  ({v / med[fastest]:.3f}x the fastest)")
    print(f"  detect one image at a time, its read not overlapped (auto -> {choice.backend}) {detect_ms:8.2f} ms  "
          f"({report['detect_vs_fastest_network']:.3f}x the fastest network call; goal <= 1.10)")
    print(f"  detect command over {args.photos} photos, per image {sweep_ms:8.2f} ms  "
          f"({report['detect_command_vs_fastest_network']:.3f}x the fastest network call; goal <= 1.10; "
          f"{report['detect_command_workers']} images side by side)")
    print(f"  detect command, --workers 1, per image {sweep1_ms:8.2f} ms  "
          f"({report['detect_command_workers1_vs_fastest_network']:.3f}x; one image at a time on all threads)")
    v = report["video"]
    print(f"  detect command on a {v['frames']}-frame 640x480 video, per frame {v['per_frame_ms']:8.2f} ms  "
          f"({v['vs_fastest_network']:.3f}x; frames side by side); --workers 1 {v['workers1_per_frame_ms']:.2f} ms "
          f"({v['workers1_vs_fastest_network']:.3f}x)")
    for n, r in report["detect_command_by_runtime"].items():
        print(f"  detect command --backend {n:<12} per image {r['per_image_ms']:8.2f} ms "
              f"({r['vs_own_network']:.3f}x its network call); --workers 1 {r['workers1_per_image_ms']:.2f} ms "
              f"({r['workers1_vs_own_network']:.3f}x)")
    print(f"  auto's runtime vs the fastest: {report['auto_vs_fastest']:.3f}x (goal <= 1.05); why: {choice.reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
