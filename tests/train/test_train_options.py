"""The training options are declared once, on TrainConfig's fields (darktune.train.config.Option); the
`darktune train` flags, the experiment spec's keys, the changes a resume accepts and a run's identity are read
from there. These tests check the derived sets against each other and against the flags `train --help` shows."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

import darktune.cli.train as cli_train
from darktune.cli import main
from darktune.experiment.spec import (GRID_KEYS, PER_START_KEYS, STAGE_KEYS, TRAIN_OPTIONS, identity_options,
                                      plan_runs, spec_from_dict)
from darktune.train.config import KINDS, OPTIONS, RESUMABLE_CHANGES, Option, TrainConfig

FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
# Fields with no `darktune train` flag, on purpose (library and experiment specs only).
NOT_FLAGS = {"eval_batch"}


def test_every_field_declares_its_option():
    assert list(OPTIONS) == list(FIELDS)
    for name, option in OPTIONS.items():
        assert isinstance(option, Option), name
        assert option.kind in KINDS and option.help, name
        assert isinstance(option.resumable, bool) and isinstance(option.identity, bool), name
        assert option.choices is None or option.kind == "str", name
        assert option.identity_with is None or OPTIONS[option.identity_with].kind == "store_true", name
        assert option.cli_after is None or OPTIONS[option.cli_after].cli, name
    groups = [o.exclusive for o in OPTIONS.values() if o.exclusive]
    assert all(groups.count(g) >= 2 for g in groups)  # a group of one excludes nothing


def test_spec_keys_are_train_config_fields_in_one_order():
    assert set(TRAIN_OPTIONS) <= set(FIELDS)
    assert sorted(OPTIONS[k].spec for k in TRAIN_OPTIONS) == list(range(1, len(TRAIN_OPTIONS) + 1))
    for keys in (STAGE_KEYS, GRID_KEYS, PER_START_KEYS):
        assert keys[-len(TRAIN_OPTIONS):] == TRAIN_OPTIONS and len(set(keys)) == len(keys)
    # what a stage or the grid sets itself (freeze, iterations, eval_at, seed, ...) is not also a train option
    assert not {"data", "weights", "freeze", "iterations", "eval_at", "seed", "max_images"} & set(TRAIN_OPTIONS)


@pytest.mark.parametrize("key", [k for k in TRAIN_OPTIONS if FIELDS[k].default is not None])
def test_a_spec_validates_each_option_with_its_default(key):
    default = FIELDS[key].default
    spec = spec_from_dict({"train": {key: default}, "grid": {"data": "obj.data", "starts": ["scratch"]}})
    assert spec.options == {key: default}


def test_resumable_and_identity_sets_come_from_the_fields():
    assert RESUMABLE_CHANGES == {k for k, o in OPTIONS.items() if o.resumable} and RESUMABLE_CHANGES <= set(FIELDS)
    every = dict({k: 1 for k in TRAIN_OPTIONS}, stop_at_target=False)
    assert set(identity_options(every)) == {k for k in TRAIN_OPTIONS if OPTIONS[k].identity
                                           and not OPTIONS[k].identity_with}
    stops = dict(every, stop_at_target=True)
    assert set(identity_options(stops)) == {k for k in TRAIN_OPTIONS if OPTIONS[k].identity}
    assert identity_options({"an_older_key": 1}) == {"an_older_key": 1}  # run.json of an older darktune


def test_run_identity_is_byte_identical_to_before():
    """Old run folders are reused only when run.json's identity matches: its JSON must not move, except for the
    leading "model" (a run.json without it is read as yolov3-tiny's: darktune.experiment.runs.check_reuse)."""
    spec = spec_from_dict({
        "train": {"batch": 8, "workers": 2, "checkpoint_every": 5, "feature_cache": False, "target_map": 0.5,
                  "lr": 0.001, "freeze_layers": [0, 1], "steps": [4], "scales": [0.1], "augment": False},
        "grid": {"data": "/d/obj.data", "starts": ["scratch", "coco"], "iterations": 10, "eval_at": [5],
                 "per_start": {"scratch": {"stop_at_target": True}}}})
    stops, goes = (json.dumps(plan.identity()) for plan in plan_runs(spec))
    head = ('"data": "/d/obj.data", "freeze": 0, "images": null, "seed": 0, "iterations": 10, "eval_at": [5, 10], '
            '"options": {"augment": false, "batch": 8, "freeze_layers": [0, 1], "lr": 0.001, "scales": [0.1], '
            '"steps": [4]')
    assert stops == ('{"model": "yolov3-tiny", "start": "scratch", ' + head
                     + ', "stop_at_target": true, "target_map": 0.5}}')
    assert goes == '{"model": "yolov3-tiny", "start": "coco", ' + head + "}}"


def test_train_help_lists_every_flag_field(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    words = set(capsys.readouterr().out.replace("[", " ").replace("]", " ").split())
    assert {k for k, o in OPTIONS.items() if not o.cli} == NOT_FLAGS
    for name, option in OPTIONS.items():
        if option.cli:
            assert option.flag(name) in words, name
            if option.kind == "tristate":
                assert f"--no-{name.replace('_', '-')}" in words, name


def test_flag_defaults_are_the_fields_defaults():
    """`darktune train --cfg C --data D` is TrainConfig(cfg=C, data=D): no default is written twice."""
    parser = argparse.ArgumentParser()
    cli_train.add_commands(parser.add_subparsers())
    args = parser.parse_args(["train", "--cfg", "c.cfg", "--data", "d.data"])
    assert cli_train.config_from_args(args) == TrainConfig(cfg="c.cfg", data="d.data")
    args = parser.parse_args(["train", "--cfg", "c.cfg", "--data", "d.data", "--no-augment", "--no-amp",
                              "--compile", "--freeze-layers", "0-2,5", "--eval-at", "4,2"])
    assert cli_train.config_from_args(args) == TrainConfig(cfg="c.cfg", data="d.data", augment=False, amp=False,
                                                           compile=True, freeze_layers=[0, 1, 2, 5], eval_at=[2, 4])
