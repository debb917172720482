"""cfg keys training does not honour are refused in one line naming the key and line, never ignored."""

import pytest

from darktune.darknet.cfg import parse_cfg_text
from darktune.errors import DarktuneError
from darktune.train.cfg_keys import refuse_unhonoured

CFG = """[net]
width=64
height=64
{net}
[convolutional]
filters=8
size=3
stride=2
pad=1
activation=leaky
{stop}
[convolutional]
filters=18
size=1
activation=linear
[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=1
num=3
"""


@pytest.mark.parametrize("key", ["mixup=1", "blur=1", "gaussian_noise=1"])
def test_net_augmentations_darktune_lacks_are_refused(key):
    spec = parse_cfg_text(CFG.format(net=key, stop=""))
    with pytest.raises(DarktuneError, match=key.split("=")[0]) as exc:
        refuse_unhonoured(spec, [])
    assert exc.value.line == 4  # the key's line


def test_cutmix_is_refused_when_the_cfg_is_read():
    with pytest.raises(DarktuneError, match="cutmix") as exc:
        parse_cfg_text(CFG.format(net="cutmix=1", stop=""))
    assert exc.value.line == 4


def test_stopbackward_is_honoured_by_a_freeze_that_covers_it_else_refused():
    spec = parse_cfg_text(CFG.format(net="", stop="stopbackward=1"))
    with pytest.raises(DarktuneError, match="--freeze 1"):
        refuse_unhonoured(spec, [])
    refuse_unhonoured(spec, [0])  # --freeze 1: layer 0 gets no gradient, as darknet's stopbackward says
    refuse_unhonoured(parse_cfg_text(CFG.format(net="", stop="")), [])
