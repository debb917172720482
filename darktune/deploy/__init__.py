"""Shipping a model: batch norm folded exactly (`fuse`), the torch / ONNX Runtime / OpenCV DNN runtimes behind
one interface (`runtimes`), the fastest of them chosen per machine (`backend_choice`), ONNX export (`onnx`),
darknet cfg + weights export (`darknet_export`), detection on images (`detect`) and video (`video`). Imports
darknet, data and eval."""
