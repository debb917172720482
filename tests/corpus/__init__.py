"""Hostile and broken inputs for darktune's reliability tests (issue 8), and the means to inject faults.

Inputs, each with its expected outcome: `images` (damaged, odd and hostile image files), `labels` (malformed
darknet label lines, COCO JSON, VOC XML, Open Images CSV), `files` (mutated cfgs, damaged weights), `hostile`
(pickle payloads, escaping archives, YAML with Python tags, shell-syntax file names), `special` (devices and
FIFOs posing as data files), `datasets` (a tiny network and tiny datasets). Faults: `faults` (a checkpoint
writer killed mid-write, a disk that fills up). `harness`: snapshots of user files, outcome of an exception.
`python -m tests.corpus.generate OUT_DIR` writes every input case to disk.
"""
