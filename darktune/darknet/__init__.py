"""Darknet, exactly: cfg files to typed layer specs (`cfg`, `specs`, `shapes`, `summary`: no torch), the torch
model with darknet's layer numbering (`model`), `.weights` files (`weights`), known weights and the one place
that downloads (`zoo`), boxes, decoding and NMS (`boxes`), the frozen-prefix forward (`prefix`) and the one
cfg + weights -> `Darknet` loader (`load`). Imports only darktune's utilities."""
