"""Network summary as darknet prints it: layer, type, filters, size/stride, input -> output, BFLOPs."""

from __future__ import annotations

from darktune.darknet.cfg import ConvSpec, MaxPoolSpec, NetworkSpec, RouteSpec, ShortcutSpec, UpsampleSpec, infer_shapes


def _describe(layer) -> tuple[str, str, str]:
    if isinstance(layer, ConvSpec):
        groups = f"/{layer.groups}" if layer.groups > 1 else ""
        return "conv", f"{layer.filters}{groups}", f"{layer.size} x {layer.size}/{layer.stride}"
    if isinstance(layer, MaxPoolSpec):
        return "max", "", f"{layer.size} x {layer.size}/{layer.stride}"
    if isinstance(layer, RouteSpec):
        extra = f" {layer.group_id}/{layer.groups}" if layer.groups > 1 else ""
        return "route", " ".join(map(str, layer.layers)) + extra, ""
    if isinstance(layer, ShortcutSpec):
        return "shortcut", str(layer.from_), ""
    if isinstance(layer, UpsampleSpec):
        return "upsample", "", f"{layer.stride}x"
    return "yolo", "", ""


def summarize(spec: NetworkSpec) -> dict:
    """{"layers": [...], "bflops": float, "params": int, "input": [c, h, w]} for the spec as given."""
    shapes = infer_shapes(spec)
    layers = []
    for shape, layer in zip(shapes, spec.layers):
        kind, filters, size = _describe(layer)
        layers.append({"index": shape.index, "type": kind, "filters": filters, "size": size,
                       "input": list(shape.input), "output": list(shape.output),
                       "bflops": round(shape.bflops, 6), "params": shape.params})
    return {"layers": layers, "bflops": round(sum(s.bflops for s in shapes), 6),
            "params": sum(s.params for s in shapes),
            "input": [spec.net.channels, spec.net.height, spec.net.width]}


def format_summary(summary: dict) -> str:
    lines = [f"{'layer':>5}  {'type':<9}{'filters':>10}  {'size/strd':<10}{'input':>18}  ->{'output':>17}"
             f"{'BFLOPs':>10}"]
    for row in summary["layers"]:
        c, h, w = row["input"]
        oc, oh, ow = row["output"]
        flops = f"{row['bflops']:.3f}" if row["bflops"] else ""
        lines.append(f"{row['index']:>5}  {row['type']:<9}{row['filters']:>10}  {row['size']:<10}"
                     f"{f'{w} x {h} x {c}':>18}  ->{f'{ow} x {oh} x {oc}':>17}{flops:>10}")
    lines.append(f"Total BFLOPS {summary['bflops']:.3f}   trainable parameters {summary['params']:,}")
    return "\n".join(lines)
