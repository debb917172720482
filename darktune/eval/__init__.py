"""Evaluation: AP / mAP under named protocols (`metrics`: darknet, voc07, coco101, coco) and the mAP of a model
on a dataset split (`evaluate`). Imports darknet and data."""
