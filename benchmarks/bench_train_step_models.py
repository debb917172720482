"""Bare training step (forward + backward + SGD step, random input, 1 class, nothing frozen) of both models at
128 px, batch 8, one torch thread, alternating v3/v4 so both see the same load; images/s median of 5 rounds."""
import statistics
import time
import torch
from darktune.darknet import zoo
from darktune.darknet.cfg import parse_cfg
from darktune.darknet.model import Darknet

torch.set_num_threads(1)
specs = {m: parse_cfg(zoo.fetch(m, progress=False).cfg).with_classes(1).with_size(128, 128)
         for m in ("yolov3-tiny", "yolov4-tiny")}
def step_rate(spec, iterations=10):
    torch.manual_seed(0)
    model = Darknet(spec).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    x = torch.rand(8, 3, 128, 128)
    for i in range(2 + iterations):
        if i == 2:
            t = time.perf_counter()
        sum(h.square().mean() for h in model(x)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return 8 * iterations / (time.perf_counter() - t)
rates = {m: [] for m in specs}
for _ in range(5):
    for m, spec in specs.items():
        rates[m].append(step_rate(spec))
for m, r in rates.items():
    print(m, f"{statistics.median(r):.1f} images/s (median of 5; {', '.join(f'{v:.1f}' for v in r)})")
print(f"v4/v3 {statistics.median(rates['yolov4-tiny']) / statistics.median(rates['yolov3-tiny']):.2f}")
