"""darktune.darknet.memory: the estimate grows with batch, size and training, a refusal names what and how much,
and an allocator's failure is recognised whichever allocator raised it. (Not test_memory.py: pytest imports test
modules by basename, and tests/reliability/test_memory.py has that one.)"""

from __future__ import annotations

import pytest
import torch

from corpus import datasets
from darktune.darknet import memory
from darktune.darknet.cfg import parse_cfg_text
from darktune.errors import DarktuneError
from darktune.machine import available_memory


@pytest.fixture(scope="module")
def spec():
    return parse_cfg_text(datasets.tiny_cfg_text(), "tiny.cfg")


def test_estimate_grows_with_batch_size_and_training(spec):
    def per_image(s, training=False):  # without the parameters
        return memory.estimate_bytes(s, 1, training) - memory.estimate_bytes(s, 0, training)

    assert memory.estimate_bytes(spec, 8) - memory.estimate_bytes(spec, 0) == 8 * per_image(spec)
    assert per_image(spec.with_size(128)) > 3 * per_image(spec)  # about 4x the pixels
    assert per_image(spec, training=True) > per_image(spec)


def test_estimate_covers_what_torch_holds(spec):
    """The estimate is at least the bytes of the layers' outputs for one image (a lower bound of any run)."""
    from darktune.darknet.model import Darknet

    model = Darknet(spec.with_size(256)).eval()
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o)) for layer in model.layers]
    with torch.no_grad():
        model(torch.rand(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    biggest = max(o.numel() for o in outputs if isinstance(o, torch.Tensor)) * 4
    assert memory.estimate_bytes(spec.with_size(256), 1) > biggest


def test_check_memory_refuses_in_one_line(spec, monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 1 << 20)
    with pytest.raises(DarktuneError) as exc:
        memory.check_memory(spec.with_size(512), 4, "cpu", advice="use a smaller --size")
    text = str(exc.value)
    assert "tiny.cfg needs about" in text and "4 images of 512x512" in text and "use a smaller --size" in text
    assert "\n" not in text
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # the OS does not say: no refusal
    assert memory.check_memory(spec.with_size(512), 4, "cpu") > 0


def test_is_out_of_memory_knows_every_allocator():
    assert memory.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ..."))
    assert memory.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    assert memory.is_out_of_memory(MemoryError("Unable to allocate 11.2 TiB"))
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not memory.is_out_of_memory(ValueError("can't allocate memory"))


def test_available_memory_is_a_positive_byte_count_on_linux():
    have = available_memory()
    assert have is None or have > 1 << 20
