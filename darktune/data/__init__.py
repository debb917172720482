"""Datasets: the in-memory dataset and darknet layout (`dataset`), readers and writers of annotation formats
(`formats`), image and label checks (`check`), the annotation-noise filter (`filter`), statistics and anchors
(`stats`), synthetic scenes (`synth`), augmentation (`augment`) and the training loader (`loader`)."""
