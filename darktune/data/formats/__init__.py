"""Readers and writers of annotation formats, each to or from an in-memory `Dataset`: darknet/YOLO (`yolo`),
COCO JSON (`coco`), Pascal VOC XML (`voc`), Open Images CSV (`openimages`); image files (`image`)."""
