"""Training a darknet detector by transfer learning, with truly frozen layers and mAP over iterations.

The public API: `TrainConfig` (every option, declared once: `darktune.train.config`), `train(config)` (run or
resume one run: `darktune.train.loop`) and its `TrainResult` (`darktune.train.state`). This file imports
nothing, so reading a config or building the CLI's flags does not load torch.
"""
