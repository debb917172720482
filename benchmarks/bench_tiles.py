"""Large images, small objects: AP50 on whole validation images with (a) a plain resize to the network,
(b) darktune's sliced detection (`darktune.deploy.sliced`), (c) SAHI's slicing and merge over the same model,
the same tiles and the same merge (NMS by IoU > 0.5, darktune's default; SAHI too switches to it below a score
threshold of 0.1), side by side in one run; time per image of each. AP also with both tools' greedy
match-and-merge (GREEDYNMM by IoS > 0.5, SAHI's default above 0.1).

    .venv/bin/python benchmarks/bench_tiles.py --cfg RUN/model.cfg --weights RUN/weights/last.weights \\
        --data VALID/obj.data --split valid --tile 416 --overlap 0.2 --backend onnxruntime --repeats 5

The model is one trained on `darktune data tile` tiles of one deepforest site; --data lists whole images of
another (see docs/tiles.md for the full recipe). All three run the same backend; each tile is detected with
darknet's decoding and per-tile NMS 0.45 (score threshold 0.005 for AP, as darknet's `detector map`), so (b)
and (c) differ only in who slices, batches and merges: darktune batches the tiles (8 a call), SAHI runs them
one at a time through its `DetectionModel` interface (a thin wrapper over the same backend, written here).
SAHI is a benchmark-only dependency (`pip install sahi`; never needed by darktune). AP50: darktune's
darknet protocol (all-point, IoU > 0.5). Timing: wall seconds per image, the three methods taking turns in each
round (a slow spell of a shared machine hits all alike), median over --repeats rounds; at the AP threshold
(0.005) and at detect's default 0.25.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from darktune.data.tile import tile_grid  # noqa: E402
from darktune.deploy.runtimes import make_backend  # noqa: E402
from darktune.deploy.sliced import Slicing, sliced_detect  # noqa: E402
from darktune.eval.metrics import evaluate  # noqa: E402
from darktune.eval.tiled import load_whole_set  # noqa: E402

NMS = 0.45


def sahi_model(backend, conf: float):
    """A SAHI DetectionModel that runs `backend` (darktune's decode + per-tile NMS) on each RGB slice."""
    from sahi.models.base import DetectionModel
    from sahi.prediction import ObjectPrediction

    class DarktuneModel(DetectionModel):
        def load_model(self):
            self.model = backend

        def set_model(self, model, **kwargs):
            self.model = model

        def perform_inference(self, image):
            self._original_predictions = self.model.detect([np.ascontiguousarray(image[..., ::-1])],
                                                           self.confidence_threshold, NMS)[0]

        def _create_object_prediction_list_from_original_predictions(self, shift_amount_list=[[0, 0]],
                                                                     full_shape_list=None):
            shift = shift_amount_list[0] if shift_amount_list else [0, 0]
            full = full_shape_list[0] if full_shape_list else None
            preds = [ObjectPrediction(bbox=[float(v) for v in d[:4]], category_id=int(d[5]),
                                      category_name=str(int(d[5])), score=float(d[4]), shift_amount=list(shift),
                                      full_shape=full)
                     for d in self._original_predictions]
            self._object_prediction_list_per_image = [preds]

    return DarktuneModel(confidence_threshold=conf, category_mapping={"0": "0"}, load_at_init=True,
                         device="cpu")


def sahi_detect(model, image_bgr: np.ndarray, tile: int, overlap: float, merge: str = "NMS", metric: str = "IOU"
                ) -> np.ndarray:
    from sahi.predict import get_sliced_prediction

    result = get_sliced_prediction(np.ascontiguousarray(image_bgr[..., ::-1]), model, slice_height=tile,
                                   slice_width=tile, overlap_height_ratio=overlap, overlap_width_ratio=overlap,
                                   perform_standard_pred=False, postprocess_type=merge,
                                   postprocess_match_metric=metric, postprocess_match_threshold=0.5,
                                   force_postprocess_type=True, verbose=0)
    rows = [[*p.bbox.to_xyxy(), p.score.value, p.category.id] for p in result.object_prediction_list]
    return np.asarray(rows, np.float32).reshape(-1, 6)


def same_tiles(width: int, height: int, tile: int, overlap: float) -> bool:
    from sahi.slicing import get_slice_bboxes

    theirs = get_slice_bboxes(height, width, tile, tile, False, overlap, overlap)
    return sorted(map(tuple, theirs)) == sorted(tile_grid(width, height, tile, overlap))


def run_methods(backend, images, slicing, conf: float) -> dict:
    model = sahi_model(backend, conf)
    return {"a_plain": lambda im: backend.detect([im], conf, NMS)[0],
            "b_darktune_sliced": lambda im: sliced_detect(backend, im, slicing, conf, NMS),
            "c_sahi": lambda im: sahi_detect(model, im, slicing.size, slicing.overlap)}


def timed(methods: dict, images, repeats: int) -> dict:
    """Median wall and CPU seconds (this process, all threads) per image of each method, the methods taking
    turns in each round."""
    wall, cpu = {k: [] for k in methods}, {k: [] for k in methods}
    for fn in methods.values():  # warm-up
        fn(images[0])
    for _ in range(repeats):
        for name, fn in methods.items():
            t, c = time.perf_counter(), time.process_time()
            for im in images:
                fn(im)
            cpu[name].append((time.process_time() - c) / len(images))
            wall[name].append((time.perf_counter() - t) / len(images))
    return {"wall": {k: statistics.median(v) for k, v in wall.items()},
            "cpu": {k: statistics.median(v) for k, v in cpu.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfg", required=True)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--data", required=True, help="obj.data whose --split list holds whole validation images")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--tile", type=int, default=416)
    ap.add_argument("--overlap", type=float, default=0.2)
    ap.add_argument("--backend", default="onnxruntime", choices=("torch", "onnxruntime", "opencv"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", metavar="OUT", help="write the results here too")
    args = ap.parse_args()
    load_before = os.getloadavg()
    backend = make_backend(args.backend, args.cfg, args.weights, batch=None if args.backend == "onnxruntime" else 1)
    ws = load_whole_set(args.data, args.split)
    slicing = Slicing(args.tile, args.overlap)
    tiles_agree = all(same_tiles(im.shape[1], im.shape[0], args.tile, args.overlap) for im in ws.images)
    ap50 = {}
    methods = run_methods(backend, ws.images, slicing, 0.005)
    greedy = Slicing(args.tile, args.overlap, merge="greedynmm")  # AP only: what the merge costs (both tools)
    methods["b_darktune_sliced_greedynmm_ios"] = lambda im: sliced_detect(backend, im, greedy, 0.005, NMS)
    sahi_low = sahi_model(backend, 0.005)
    methods["c_sahi_greedynmm_ios"] = lambda im: sahi_detect(sahi_low, im, args.tile, args.overlap, "GREEDYNMM", "IOS")
    for name, fn in methods.items():
        dets = [fn(im) for im in ws.images]
        ap50[name] = evaluate(dets, ws.truths, len(ws.names), protocol="darknet").map
    timing = {f"conf_{c}": timed(run_methods(backend, ws.images, slicing, c), ws.images, args.repeats)
              for c in (0.005, 0.25)}
    out = {"date": date.today().isoformat(), "machine": f"{platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs", "load_before": [round(x, 2) for x in load_before],
           "load_after": [round(x, 2) for x in os.getloadavg()], "command": " ".join(sys.argv),
           "backend": args.backend, "images": [f"{Path(p).name} {im.shape[1]}x{im.shape[0]}, {len(t)} boxes"
                                               for p, im, t in zip(ws.paths, ws.images, ws.truths)],
           "tiles_per_image": [len(tile_grid(im.shape[1], im.shape[0], args.tile, args.overlap))
                               for im in ws.images],
           "same_tiles_as_sahi": tiles_agree, "ap50_darknet": {k: round(v, 4) for k, v in ap50.items()},
           "seconds_per_image_median": {c: {kind: {k: round(v, 4) for k, v in t[kind].items()} for kind in t}
                                        for c, t in timing.items()}}
    out["darktune_over_sahi"] = {c: {kind: round(t[kind]["b_darktune_sliced"] / t[kind]["c_sahi"], 3) for kind in t}
                                 for c, t in timing.items()}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
