"""`darktune train` options that cannot do what they say are one-line errors naming the option and the value,
raised before anything is trained or written, on the command line and through `train()` (the experiment grid's
path); the --burn-in help and the warning about a burn-in as long as half the run."""

import pytest
from test_train import cfg_of, tiny_set

from darktune.cli import main
from darktune.errors import DarktuneError
from darktune.train.config import TrainConfig
from darktune.train.loop import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny_set(tmp_path_factory.mktemp("checks_data"))  # 12 training images; the network has layers 0..9


def _train_cli(dataset, out, *extra) -> list[str]:
    cfg, data = dataset
    return ["train", "--cfg", cfg, "--data", data, "--out", str(out), "--size", "96", "--no-progress",
            "--iterations", "4", *extra]


BAD = [
    (["--max-images", "500"], "{data}: --max-images 500 is more than the 12 usable training images"),
    (["--max-images", "0"], "--max-images must be >= 1, got 0"),
    (["--max-images", "-3"], "--max-images must be >= 1, got -3"),
    (["--iterations", "5", "--eval-at", "3,50,60"], "--eval-at 50,60: past the run's last iteration (5 iterations)"),
    (["--stop-at-target"], "--stop-at-target needs --target-map"),
    (["--freeze", "2", "--iterations", "20", "--unfreeze-at", "25"],
     "--unfreeze-at 25 is not before the run's last iteration (20 iterations)"),
    (["--freeze", "2", "--unfreeze-at", "4"], "--unfreeze-at 4 is not before the run's last iteration (4 iterations)"),
    (["--freeze", "2", "--unfreeze-at", "0"],
     "--unfreeze-at must be between 1 and 100000000, got 0"),  # its domain (darktune.numbers), at parse time
    (["--unfreeze-at", "2"], "--unfreeze-at 2 needs frozen layers to unfreeze: give --freeze N or --freeze-layers"),
    (["--freeze-layers", ""], "--freeze-layers: bad layer list '': no layers in it"),
    (["--freeze-layers", " , "], "--freeze-layers: bad layer list ' , ': no layers in it"),
    (["--freeze-layers", "5-2"], "--freeze-layers: bad layer list '5-2': '5-2' is a reversed range (write 2-5)"),
    (["--freeze-layers", "0-30"], "--freeze-layers: the network has layers 0..9, so 10-30 cannot be frozen"),
    (["--freeze-layers", "0-12,40"], "--freeze-layers: the network has layers 0..9, so 10,11,12,40 cannot be frozen"),
    (["--freeze", "30"], "--freeze 30: the network has layers 0..9 (--freeze N freezes layers 0..N-1, so N is at most"),
    (["--freeze", "10"], "--freeze 10: nothing to train: every layer with weights is frozen"),  # valid, none left
    (["--freeze-layers", "0-9"], "--freeze-layers 0-9: nothing to train"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_train_options_are_one_line_errors(dataset, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(_train_cli(dataset, out, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("darktune: error: ") and "Traceback" not in err, err
    assert message.format(data=dataset[1]) in err, err
    assert not (out / "metrics.jsonl").exists()  # refused before anything was trained


def test_the_library_path_gets_the_same_checks(dataset, tmp_path):
    """`darktune experiment` calls train(TrainConfig(...)): its `images` reach --max-images."""
    with pytest.raises(DarktuneError, match=r"--max-images 45 is more than the 12 usable training images"):
        train(cfg_of(dataset, tmp_path / "a", max_images=45), progress=False)
    with pytest.raises(DarktuneError, match="--eval-at 7: past"):
        train(cfg_of(dataset, tmp_path / "b", eval_at=[2, 7]), progress=False)
    with pytest.raises(DarktuneError, match="--unfreeze-at 6 is not before"):
        train(cfg_of(dataset, tmp_path / "c", freeze=2, unfreeze_at=6), progress=False)
    for bad, message in (({"stop_at_target": True}, "--stop-at-target needs --target-map"),
                         ({"freeze_layers": []}, "--freeze-layers is empty"),
                         ({"unfreeze_at": 3}, "--unfreeze-at 3 needs frozen layers"),
                         ({"max_images": 0}, "--max-images must be >= 1")):
        with pytest.raises(DarktuneError, match=message):
            TrainConfig(cfg="x.cfg", data="x.data", **bad)
    assert not any(tmp_path.iterdir())
    res = train(cfg_of(dataset, tmp_path / "ok", iterations=2, max_images=12, eval_at=[2]), progress=False)
    assert res.status == "finished"  # every image, asked for by number, is fine


def test_burn_in_help_and_a_warning_when_it_is_half_the_run(dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "yolov3-tiny.cfg says burn_in=1000, which keeps the lr near 0 for a short run" in help_text

    warning = "warning: burn_in 3 (the cfg's [net] burn_in) is at least half of the run's 6 iterations"
    train(cfg_of(dataset, tmp_path / "long", checkpoint_every=3), progress=False)  # the cfg's burn_in 3
    err = capsys.readouterr().err
    assert err.count(warning) == 1 and "--burn-in" in err.split(warning)[1].splitlines()[0]
    train(cfg_of(dataset, tmp_path / "long", iterations=7, resume=True), progress=False)
    assert "warning: burn_in" not in capsys.readouterr().err  # once per run, at its start
    train(cfg_of(dataset, tmp_path / "short", iterations=7), progress=False)  # 3 < 7 / 2
    assert "warning: burn_in" not in capsys.readouterr().err
    train(cfg_of(dataset, tmp_path / "flag", iterations=4, burn_in=2), progress=False)
    assert "warning: burn_in 2 (--burn-in) is at least half of the run's 4 iterations" in capsys.readouterr().err
