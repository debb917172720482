"""Hostile and broken inputs for darktune's reliability tests (issue 8).

Modules: `images` (damaged, odd and hostile image files), `labels` (malformed darknet label lines, COCO JSON,
VOC XML, Open Images CSV), `files` (mutated cfgs, damaged weights), `hostile` (pickle payloads, escaping
archives, YAML with Python tags, shell-syntax file names), `datasets` (a tiny network and tiny datasets).
Every case carries its expected outcome. `python -m tests.corpus.generate OUT_DIR` writes them all.
"""
