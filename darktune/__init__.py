"""darktune: retrain darknet YOLO detectors by transfer learning and ship them to edge runtimes."""

__version__ = "0.1.0"
