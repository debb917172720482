"""RunState: the typed record of a run's measurements, saved as the checkpoint's "state" dict with the keys
checkpoints of older darktune have, and read back from such checkpoints."""

from __future__ import annotations

from darktune.train.state import RunState

# The "state" keys a checkpoint written before RunState existed holds (fresh run, before any unfreeze)
OLD_KEYS = {"best_map", "final_map", "time_to_target", "train_seconds", "skipped_steps", "schedule_offset",
            "bad_in_row", "maps", "init", "input", "digests_before", "elapsed_seconds", "last_saved_step"}


def test_checkpoint_dict_keeps_the_old_keys():
    assert set(RunState().to_checkpoint()) == OLD_KEYS
    full = RunState(digests_at_unfreeze={"0": "ab"}, scaler={"scale": 2.0}).to_checkpoint()
    assert set(full) == OLD_KEYS | {"digests_at_unfreeze", "scaler"}


def test_reads_an_older_checkpoint_and_round_trips():
    old = {"best_map": 0.5, "final_map": 0.4, "time_to_target": None, "train_seconds": 3.5, "skipped_steps": 1,
           "bad_in_row": 0, "maps": [[2, 0.5], [4, 0.4]], "init": {"mode": "scratch"}, "input": "cpu_loader",
           "digests_before": {"0": "x"}, "loader_at_resume": {"epoch": 0}, "elapsed_base": 1.0}
    state = RunState.from_checkpoint(old)  # older code left out schedule_offset and kept two transient keys
    assert state.best_map == 0.5 and state.maps == [[2, 0.5], [4, 0.4]] and state.schedule_offset == 0
    assert state.digests_at_unfreeze is None and state.last_saved_step is None
    assert RunState.from_checkpoint(state.to_checkpoint()) == state
