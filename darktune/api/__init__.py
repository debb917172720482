"""darktune from Python, for notebooks and scripts: a thin face over the layers (nothing in darktune imports it).

    from darktune.api import Model

    model = Model.load("yolov3-tiny")                # the zoo's COCO model (fetched once into $DARKTUNE_HOME)
    print(model.evaluate("mydata/obj.data").map)     # the COCO baseline, its classes mapped onto the data's by name
    result = model.train(data="mydata/obj.data", iterations=300, keep_classes=True, size=320, burn_in=30,
                         out="runs/mine")           # any `darktune train` option, by its TrainConfig name
    print(result.final_map, model.evaluate("mydata/obj.data").map)   # the model now holds the run's weights
    for det in model.detect("street.jpg")[0]:
        print(det.name, det.score, det.box)
    model.export_onnx("mine.onnx")

See docs/api.md.
"""

from darktune.api.model import TRAIN_OPTIONS, Detection, Model

__all__ = ["Detection", "Model", "TRAIN_OPTIONS"]
