"""Shared checks of crash-and-resume for the tests of helpers.classification and helpers.segmentation."""
from __future__ import annotations

from typing import Callable

import pytest
import torch

import helpers.engine as engine


def crash_after_saves(monkeypatch, run: Callable[[], object], saves: int = 2) -> None:
    """Call `run()` with checkpoint saving that raises KeyboardInterrupt right after the `saves`-th save."""
    real_save, calls = engine.save_checkpoint, []

    def save_then_crash(path, payload):
        real_save(path, payload)
        calls.append(path)
        if len(calls) == saves:
            raise KeyboardInterrupt(f"simulated crash after save {saves}")

    monkeypatch.setattr(engine, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(engine, "save_checkpoint", real_save)


def assert_identical_runs(straight: engine.FitResult, resumed: engine.FitResult) -> None:
    """Same training weights in the checkpoints, same best weights, same history losses, same best epoch."""
    straight_ckpt = torch.load(straight.checkpoint, weights_only=True)
    resumed_ckpt = torch.load(resumed.checkpoint, weights_only=True)
    for k, v in straight_ckpt["train"]["model"].items():
        assert torch.equal(v, resumed_ckpt["train"]["model"][k]), k
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [h["train_loss"] for h in straight.history] == [h["train_loss"] for h in resumed.history]
    assert straight.best_epoch == resumed.best_epoch
