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


def assert_identical_runs(straight: engine.FitResult, resumed: engine.FitResult) -> None:
    """Same training weights in the resume states, same best weights (returned and on disk), same history, same best epoch."""
    straight_state = torch.load(straight.resume_file, weights_only=True)
    resumed_state = torch.load(resumed.resume_file, weights_only=True)
    for k, v in straight_state["train"]["model"].items():
        assert torch.equal(v, resumed_state["train"]["model"][k]), k
    resumed_best = torch.load(resumed.checkpoint, weights_only=True)["model"]
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
        assert torch.equal(v, resumed_best[k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert straight.best_epoch == resumed.best_epoch
