"""Darknet activations that torch has no exact module for: hard_mish pinned by hand (activations.c)."""

import pytest
import torch

from darktune.darknet.model import activation


def test_hard_mish_is_darknets_not_hardswish():
    """x for x > 0, x^2/2 + x on (-2, 0], 0 below (Hardswish would give -0.333 at -1, 0.667 at 1)."""
    x = torch.tensor([-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], requires_grad=True)
    y = activation("hard_mish")(x)
    assert y.tolist() == pytest.approx([0, 0, -0.5, -0.375, 0, 0.5, 1, 3])
    y.sum().backward()  # gradient 0, x + 1, 1
    assert x.grad.tolist() == pytest.approx([0, 0, 0, 0.5, 1, 1, 1, 1])
