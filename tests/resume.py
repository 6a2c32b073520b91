"""Shared checks of crash-and-resume for the tests of helpers.classification and helpers.segmentation."""
from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import helpers.checkpoints as checkpoints
import helpers.engine as engine


def crash_after_saves(monkeypatch, run: Callable[[], object], saves: int = 2) -> None:
    """Call `run()` with checkpointing that raises KeyboardInterrupt right after the `saves`-th checkpoint."""
    real_save, calls = checkpoints.TrainingFiles.save, []

    def save_then_crash(self, state, weights=None):
        real_save(self, state, weights)
        calls.append(state["epoch"])
        if len(calls) == saves:
            raise KeyboardInterrupt(f"simulated crash after save {saves}")

    monkeypatch.setattr(checkpoints.TrainingFiles, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(checkpoints.TrainingFiles, "save", real_save)


def record_states(monkeypatch) -> list[dict]:
    """The state payload of every save from now on, kept in memory (a finished training's file keeps no tensors)."""
    real_save, states = checkpoints.TrainingFiles.save, []

    def save_and_record(self, state, weights=None):
        states.append(state)
        real_save(self, state, weights)

    monkeypatch.setattr(checkpoints.TrainingFiles, "save", save_and_record)
    return states


def last_resumable(states: list[dict]) -> dict:
    """The training part of the last state saved before the end (the one a kill would resume from)."""
    return [s for s in states if s["train"] is not None][-1]["train"]


def assert_identical_runs(straight: engine.FitResult, resumed: engine.FitResult) -> None:
    """Same best weights (returned and on disk), same history (every epoch's loss), same best epoch, both finished."""
    straight_state = torch.load(straight.resume_file, weights_only=True)
    resumed_state = torch.load(resumed.resume_file, weights_only=True)
    assert straight_state["epoch"] == resumed_state["epoch"] and resumed_state["train"] is None
    straight_best = torch.load(straight.checkpoint, weights_only=True)["model"]
    resumed_best = torch.load(resumed.checkpoint, weights_only=True)["model"]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
        assert torch.equal(v, resumed_best[k]), k
        assert torch.equal(straight_best[k], resumed_best[k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert straight.best_epoch == resumed.best_epoch
