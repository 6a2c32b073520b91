"""Tests for the checkpoint policy of helpers.engine.fit_task (helpers.checkpoints.TrainingFiles):
best weights only when they improve, resume state throttled by time, the mirror folder, kills between writes."""
from __future__ import annotations

import shutil
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import helpers.checkpoints as checkpoints
from helpers.checkpoints import (
    SAVE_LOG,
    STATE_SUFFIX,
    TrainingFiles,
    copy_atomic,
    read_save_log,
    restore_missing,
    save_log_rows,
)
from helpers.classification import fit
from helpers.config import Config
from helpers.engine import TrainTask, fit_task

from .resume import assert_identical_runs, crash_after_saves
from .test_classification import _cfg, _data, _tiny


class ScriptedTask(TrainTask):
    """A linear regression whose validation accuracy follows a script; each epoch advances a fake clock."""

    def __init__(self, values: list[float], first_epoch: int = 0, clock: list[float] | None = None,
                 seconds_per_epoch: float = 0.0):
        g = torch.Generator().manual_seed(0)
        self.x, self.y = torch.randn(32, 4, generator=g), torch.randn(32, 1, generator=g)
        self.values, self.epoch = list(values), first_epoch
        self.clock, self.seconds_per_epoch = clock, seconds_per_epoch

    def __len__(self) -> int:
        return 32

    def settings(self) -> dict:
        return {"task": "scripted"}

    def to_device(self, device) -> None:
        pass

    def start_epoch(self, steps, batch, generator) -> None:
        self.order = torch.randperm(32, generator=generator)
        self.epoch += 1
        if self.clock is not None:
            self.clock[0] += self.seconds_per_epoch

    def next_batch(self, i, batch, generator):
        idx = self.order[i * batch:(i + 1) * batch]
        return self.x[idx], self.y[idx]

    def step_loss(self, model, data, channels_last):
        x, y = data
        loss = F.mse_loss(model(x), y)
        return loss, torch.stack([loss.detach() * len(x), torch.zeros(())])

    def train_record(self, stats, seen, steps, batch) -> dict:
        return {"train_loss": stats[0] / seen, "train_acc": 0.0}

    def postfix(self, stats, seen) -> dict:
        return {}

    def validate(self, model) -> dict:
        return {"val_loss": 1.0, "val_acc": self.values[self.epoch - 1]}


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 1)


def _scfg(tmp_path, **kw) -> Config:
    values = dict(batch_size=8, warmup_epochs=0, lr=0.01, optimizer="adamw", ema_decay=0.0, device="cpu",
                  run_dir=tmp_path / "runs", seed=0, select_best_epoch=True)  # the best-epoch machinery
    values.update(kw)
    return Config(**values)


@pytest.fixture
def fake_clock(monkeypatch) -> list[float]:
    clock = [1000.0]
    monkeypatch.setattr(checkpoints, "_clock", lambda: clock[0])
    return clock


def _epochs_saved(monkeypatch) -> list[tuple[int, bool]]:
    """Record (epoch, weights written) of every checkpoint."""
    saved, real_save = [], TrainingFiles.save

    def save(self, state, weights=None):
        saved.append((state["epoch"], weights is not None))
        real_save(self, state, weights)

    monkeypatch.setattr(TrainingFiles, "save", save)
    return saved


def test_best_weights_are_written_only_when_they_improve(tmp_path, monkeypatch):
    saved = _epochs_saved(monkeypatch)
    values = [0.1, 0.3, 0.3, 0.2, 0.5, 0.4]  # epoch 3 ties on accuracy but not on loss (<= keeps the later)
    result = fit_task(_linear(), ScriptedTask(values), _scfg(tmp_path), run_name="s", epochs=6, progress=False)
    # while the best is the epoch just saved, the state holds its weights: the weights file waits
    # for a save where the best is older (epoch 4: the best is 3) and for the last one
    assert saved == [(1, False), (2, False), (3, False), (4, True), (5, False), (6, True)]
    stats = result.checkpoint_stats
    assert (stats.saves, stats.state_writes, stats.weights_writes) == (6, 6, 2)
    weights = torch.load(tmp_path / "runs" / "s.pt", weights_only=True)
    state = torch.load(tmp_path / "runs" / f"s{STATE_SUFFIX}", weights_only=True)
    assert weights["best_epoch"] == state["best_epoch"] == result.best_epoch == 5
    assert "train" not in weights and "model" not in state  # each file carries only its own part
    assert state["epoch"] == weights["epoch"] == 6
    assert state["train"] is None  # a finished run keeps no tensors in its state: no model, EMA or optimizer moments
    assert stats.bytes_local > 0 and stats.bytes_mirrored == 0
    # the two checkpoint files, the per-epoch history (helpers.tracking) and, when installed, TensorBoard's folder
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()
                  if p.name != "tensorboard") == [SAVE_LOG, "s.history.csv", "s.pt", f"s{STATE_SUFFIX}"]
    assert save_log_rows(tmp_path / "runs") == [{"run": "s", "saves": 6, "weights_writes": 2, "seconds": pytest.approx(
        stats.seconds, abs=0.01), "mb_local": round(stats.bytes_local / 1e6, 1), "mb_mirrored": 0.0}]


def test_saves_are_throttled_by_time_and_the_last_epoch_is_always_saved(tmp_path, monkeypatch, fake_clock):
    saved = _epochs_saved(monkeypatch)
    task = ScriptedTask([0.1 * k for k in range(1, 11)], clock=fake_clock, seconds_per_epoch=40.0)
    fit_task(_linear(), task, _scfg(tmp_path, checkpoint_seconds=90.0), run_name="t", epochs=10,
             progress=False)
    # 40 s per epoch: after epoch 2 (80 s), one more epoch would leave 120 s > 90 s unsaved: save
    assert [epoch for epoch, _ in saved] == [2, 4, 6, 8, 10]
    # the best improved in every interval, always at the saved epoch: the state holds it until the end
    assert [weights for _, weights in saved] == [False, False, False, False, True]
    saved.clear()
    task = ScriptedTask([1 - 0.05 * k for k in range(12)], clock=fake_clock, seconds_per_epoch=25.0)
    fit_task(_linear(), task, _scfg(tmp_path, checkpoint_seconds=90.0), run_name="u", epochs=12, progress=False)
    assert [epoch for epoch, _ in saved] == [3, 6, 9, 12]  # 75 s + 25 s would pass 90 s: at most 75 s unsaved
    assert [weights for _, weights in saved] == [True, False, False, False]  # the best never improved again


def test_mirror_holds_both_files_and_a_new_session_resumes_from_it(tmp_path, monkeypatch):
    train, val = _data(40), _data(9, seed=1)
    straight = fit(_tiny(), train, val, _cfg(tmp_path / "a", epochs=4, ema_decay=0.9), run_name="r",
                   progress=False)
    cfg = _cfg(tmp_path / "b", epochs=4, ema_decay=0.9, mirror_dir=tmp_path / "drive" / "r")
    crash_after_saves(monkeypatch, lambda: fit(_tiny(), train, val, cfg, run_name="r", progress=False))
    mirrored = sorted(p.name for p in (tmp_path / "drive" / "r").iterdir())
    # the state, the weights file once it was due (the best older than a save), the save log: as run_dir
    assert f"r{STATE_SUFFIX}" in mirrored and SAVE_LOG in mirrored
    assert mirrored == sorted(p.name for p in cfg.run_dir.iterdir() if p.name.endswith((".pt", SAVE_LOG)))
    for name in mirrored:
        assert (tmp_path / "drive" / "r" / name).read_bytes() == (cfg.run_dir / name).read_bytes()
    shutil.rmtree(cfg.run_dir)  # the session died with its local disk
    resumed = fit(_tiny(seed=123), train, val, cfg, run_name="r", progress=False)
    assert resumed.resumed_from == 2
    assert_identical_runs(straight, resumed)
    assert resumed.checkpoint_stats.bytes_mirrored == resumed.checkpoint_stats.bytes_local > 0
    # the log of what checkpointing cost came back from the mirror and holds both sessions' calls
    rows = save_log_rows(cfg.run_dir)
    assert [(r["run"], r["saves"]) for r in rows] == [("r", 2), ("r", 2)]
    totals = read_save_log(cfg.run_dir)
    assert totals["trainings"] == 2 and totals["saves"] == 4
    with open(cfg.run_dir / SAVE_LOG, "a") as f:  # a hand-edited record: named, skipped, the rest still counted
        f.write("r,two,1,0.5,0.5,0.1\nr,1,1\n")
    with pytest.warns(UserWarning, match=r"checkpoint_log\.csv: skipped 2 row\(s\)"):
        assert read_save_log(cfg.run_dir)["saves"] == 4
    assert totals["mb_mirrored"] == pytest.approx(totals["mb_local"], abs=0.2) and totals["mb_local"] > 0


def test_a_failing_mirror_warns_and_training_goes_on(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the mirror folder should be")
    cfg = _scfg(tmp_path, mirror_dir=blocker / "runs")
    with pytest.warns(UserWarning, match="could not copy .* to the mirror folder") as caught:
        result = fit_task(_linear(), ScriptedTask([0.1, 0.2]), cfg, run_name="s", epochs=2, progress=False)
    assert len(caught) == 4  # the state of epoch 1, the weights and state of epoch 2, the log: each failure is told
    assert result.checkpoint.is_file() and result.checkpoint_stats.bytes_mirrored == 0


def test_kill_between_the_weights_and_the_state_write_resumes_identically(tmp_path, monkeypatch, fake_clock):
    values = [0.1, 0.2, 0.4, 0.3, 0.35]  # saves after epochs 2, 4 and 5: the best (3) is written at 4

    def task(first_epoch=0):
        return ScriptedTask(values, first_epoch, clock=fake_clock, seconds_per_epoch=40.0)

    cfg = _scfg(tmp_path / "a", checkpoint_seconds=90.0)
    straight = fit_task(_linear(), task(), cfg, run_name="k", epochs=5, progress=False)
    cfg = _scfg(tmp_path / "b", checkpoint_seconds=90.0)
    real_save = checkpoints.save_checkpoint

    def killed_at_state_4(path, payload):
        if path.name.endswith(STATE_SUFFIX) and payload["epoch"] == 4:
            raise KeyboardInterrupt("killed after the weights of epoch 4, before its state")
        return real_save(path, payload)

    monkeypatch.setattr(checkpoints, "save_checkpoint", killed_at_state_4)
    with pytest.raises(KeyboardInterrupt):
        fit_task(_linear(), task(), cfg, run_name="k", epochs=5, progress=False)
    monkeypatch.setattr(checkpoints, "save_checkpoint", real_save)
    assert torch.load(cfg.run_dir / "k.pt", weights_only=True)["best_epoch"] == 3
    assert torch.load(cfg.run_dir / f"k{STATE_SUFFIX}", weights_only=True)["epoch"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the newer weights file is expected: no "lost best" warning
        resumed = fit_task(_linear(), task(first_epoch=2), cfg, run_name="k", epochs=5, progress=False)
    assert resumed.resumed_from == 2 and resumed.best_epoch == straight.best_epoch == 3
    assert_identical_runs(straight, resumed)


def test_a_kill_while_the_best_is_the_latest_epoch_resumes_its_weights_from_the_state(tmp_path, monkeypatch):
    values = [0.1, 0.2, 0.3, 0.25, 0.2]  # the best is the latest epoch at the first three saves
    straight = fit_task(_linear(), ScriptedTask(values), _scfg(tmp_path / "a", ema_decay=0.5), run_name="b",
                        epochs=5, progress=False)
    cfg = _scfg(tmp_path / "b", ema_decay=0.5)
    crash_after_saves(monkeypatch, lambda: fit_task(_linear(), ScriptedTask(values), cfg, run_name="b",
                                                     epochs=5, progress=False), saves=3)
    assert not (cfg.run_dir / "b.pt").exists()  # no weights file yet: the state holds the best (EMA) weights
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "lost best" warning: nothing was lost
        resumed = fit_task(_linear(), ScriptedTask(values, first_epoch=3), cfg, run_name="b", epochs=5,
                           progress=False)
    assert resumed.resumed_from == 3 and resumed.best_epoch == straight.best_epoch == 3
    assert_identical_runs(straight, resumed)


def test_a_finished_run_keeps_no_optimizer_state_and_reruns_without_training(tmp_path):
    cfg, values = _scfg(tmp_path), [0.1, 0.2, 0.3, 0.4, 0.5]
    first = fit_task(_linear(), ScriptedTask(values), cfg, run_name="f", epochs=3, progress=False)
    state = torch.load(first.resume_file, weights_only=True)
    assert state["epoch"] == 3 and state["train"] is None and state["history"]
    assert first.resume_file.stat().st_size < 20_000  # the record alone, no tensors
    again = fit_task(_linear(), ScriptedTask(values), cfg, run_name="f", epochs=3, progress=False)
    assert again.resumed_from == 3 and len(again.history) == 3  # finished: returned without training
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k  # the best weights, from the weights file
    # its weights file lost: the finished state alone cannot stand in for it, so it trains anew, saying why
    first.checkpoint.unlink()
    with pytest.warns(UserWarning, match="trains anew"):
        anew = fit_task(_linear(), ScriptedTask(values), cfg, run_name="f", epochs=3, progress=False)
    assert anew.resumed_from == 0 and anew.checkpoint.is_file()
    # more epochs are another schedule: a new training (tests/test_changed_settings.py), no continuation
    longer = fit_task(_linear(), ScriptedTask(values), cfg, run_name="f", epochs=5, progress=False)
    assert longer.resumed_from == 0 and len(longer.history) == 5


def test_lost_best_weights_are_chosen_again_with_a_warning(tmp_path, monkeypatch):
    cfg, values = _scfg(tmp_path), [0.5, 0.1, 0.2, 0.3, 0.15]
    crash_after_saves(monkeypatch, lambda: fit_task(_linear(), ScriptedTask(values), cfg, run_name="l",
                                                     epochs=5, progress=False), saves=3)
    (cfg.run_dir / "l.pt").unlink()
    with pytest.warns(UserWarning, match=r"l\.pt does not hold the best weights \(epoch 1\)"):
        result = fit_task(_linear(), ScriptedTask(values, first_epoch=3), cfg, run_name="l", epochs=5,
                          progress=False)
    assert result.best_epoch == 4  # the best of the epochs trained after the loss
    assert torch.load(cfg.run_dir / "l.pt", weights_only=True)["best_epoch"] == 4
    # a finished run without its weights file: its state keeps no weights to stand in, so it trains anew
    (cfg.run_dir / "l.pt").unlink()
    with pytest.warns(UserWarning, match="weights .*l.pt are missing .* it trains anew"):
        again = fit_task(_linear(), ScriptedTask(values), cfg, run_name="l", epochs=5, progress=False)
    assert again.resumed_from == 0 and again.best_epoch == 1 and (cfg.run_dir / "l.pt").is_file()


def test_the_older_one_file_checkpoint_still_resumes(tmp_path, monkeypatch):
    values = [0.3, 0.1, 0.2, 0.4]  # the best (epoch 1) is older than the second save: its file exists
    straight = fit_task(_linear(), ScriptedTask(values), _scfg(tmp_path / "a"), run_name="o", epochs=4,
                        progress=False)
    cfg = _scfg(tmp_path / "b")
    crash_after_saves(monkeypatch, lambda: fit_task(_linear(), ScriptedTask(values), cfg, run_name="o",
                                                     epochs=4, progress=False))
    # the format before this split: one file, best weights under "model", the state under "train"
    state = torch.load(cfg.run_dir / f"o{STATE_SUFFIX}", weights_only=True)
    state["model"] = torch.load(cfg.run_dir / "o.pt", weights_only=True)["model"]
    (cfg.run_dir / f"o{STATE_SUFFIX}").unlink()
    checkpoints.save_checkpoint(cfg.run_dir / "o.pt", state)
    resumed = fit_task(_linear(), ScriptedTask(values, first_epoch=2), cfg, run_name="o", epochs=4,
                       progress=False)
    assert resumed.resumed_from == 2
    assert_identical_runs(straight, resumed)
    assert "train" not in torch.load(cfg.run_dir / "o.pt", weights_only=True)  # rewritten as two files


def test_restore_missing_copies_small_files_and_leaves_states_for_later(tmp_path):
    mirror, local = tmp_path / "mirror", tmp_path / "local"
    mirror.mkdir()
    for name in ("a.pt", f"a{STATE_SUFFIX}", "summary.json", "b.pt.tmp", "a@1234abcd.pt", "a@1234abcd.history.csv"):
        (mirror / name).write_text(name)
    local.mkdir()
    (local / "summary.json").write_text("newer, local")
    assert restore_missing(local, mirror) == [local / "a.pt", local / "a@1234abcd.history.csv"]
    assert (local / "summary.json").read_text() == "newer, local"  # a local file is never replaced
    assert sorted(p.name for p in local.iterdir()) == ["a.pt", "a@1234abcd.history.csv", "summary.json"]
    assert restore_missing(local, None) == [] and restore_missing(local, tmp_path / "none") == []


def test_copy_atomic_leaves_the_old_copy_when_it_fails(tmp_path, monkeypatch):
    src, dst = tmp_path / "src.pt", tmp_path / "m" / "dst.pt"
    src.write_bytes(b"new")
    dst.parent.mkdir()
    dst.write_bytes(b"old")

    def broken_copy(a, b):
        open(b, "wb").write(b"ne")
        raise OSError("Drive disconnected")

    monkeypatch.setattr(checkpoints.shutil, "copyfile", broken_copy)
    with pytest.raises(OSError, match="Drive disconnected"):
        copy_atomic(src, dst)
    assert dst.read_bytes() == b"old" and [p.name for p in dst.parent.iterdir()] == ["dst.pt"]
