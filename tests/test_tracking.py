"""Tests for helpers.tracking: each training run's history beside its checkpoint, TensorBoard when installed,
W&B only when asked, and the comparison of runs."""
from __future__ import annotations

import sys
import types

import pytest

from helpers import tracking
from helpers.__main__ import main
from helpers.classification import fit

from .resume import crash_after_saves
from .test_classification import _cfg, _data, _tiny


def test_every_epoch_lands_in_the_history_csv(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, tensorboard="off")
    result = fit(_tiny(), _data(48), _data(12, seed=1), cfg, run_name="clf", progress=False)
    path = tmp_path / "runs" / "clf.history.csv"
    rows = tracking.read_history(path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for row, record in zip(rows, result.history):
        for key in ("train_loss", "val_acc", "lr", "images_per_s", "seconds"):
            assert row[key] == pytest.approx(record[key], rel=1e-5, abs=1e-6), key
    assert path.read_text().splitlines()[0].startswith("epoch,train_loss,train_acc,val_loss,val_acc,lr")
    assert not list((tmp_path / "runs").glob("*.tmp")) and not (tmp_path / "runs" / "tensorboard").exists()


def test_a_resumed_run_rewrites_the_history_from_its_checkpoint(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, epochs=4, tensorboard="off")
    train, val = _data(40), _data(9, seed=1)
    crash_after_saves(monkeypatch, lambda: fit(_tiny(), train, val, cfg, run_name="r", progress=False))
    resumed = fit(_tiny(), train, val, cfg, run_name="r", progress=False)
    rows = tracking.read_history(tmp_path / "runs" / "r.history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["val_acc"] for r in rows] == pytest.approx([h["val_acc"] for h in resumed.history], abs=1e-6)


def test_tensorboard_event_files_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    fit(_tiny(), _data(48), _data(12, seed=1), _cfg(tmp_path, epochs=2), run_name="clf", progress=False)
    events = EventAccumulator(str(tmp_path / "runs" / "tensorboard" / "clf"))
    events.Reload()
    assert {"train_loss", "val_acc", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]


def test_tensorboard_on_without_the_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install tensorboard"):
        fit(_tiny(), _data(48), _data(12, seed=1), _cfg(tmp_path, tensorboard="on"), run_name="x", progress=False)
    fit(_tiny(), _data(48), _data(12, seed=1), _cfg(tmp_path, tensorboard="auto"), run_name="y", progress=False)


def test_wandb_only_when_a_project_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # importing it would fail: the default must not try
    fit(_tiny(), _data(48), _data(12, seed=1), _cfg(tmp_path, tensorboard="off"), run_name="a", progress=False)

    logged, finished = [], []
    run = types.SimpleNamespace(log=lambda values, step: logged.append((step, values)),
                                finish=lambda: finished.append(True))
    fake = types.SimpleNamespace(init=lambda **kw: logged.append(("init", kw)) or run)
    monkeypatch.setitem(sys.modules, "wandb", fake)
    cfg = _cfg(tmp_path, tensorboard="off", wandb_project="imsub-demo")
    fit(_tiny(), _data(48), _data(12, seed=1), cfg, run_name="b", progress=False)
    assert logged[0][0] == "init" and logged[0][1]["project"] == "imsub-demo" and logged[0][1]["name"] == "b"
    assert [step for step, _ in logged[1:]] == [1, 2] and "val_acc" in logged[1][1]
    assert finished == [True]
    first_id = logged[0][1]["id"]
    logged.clear()
    fit(_tiny(), _data(48), _data(12, seed=1), _cfg(tmp_path, tensorboard="off", wandb_project="imsub-demo",
                                                    lr=0.5), run_name="b", progress=False)
    assert logged[0][1]["id"] != first_id  # another training under the same name: another W&B run


def test_compare_lists_every_run_of_the_folders(tmp_path, capsys):
    for name, epochs in (("short", 2), ("long", 3)):
        fit(_tiny(), _data(48), _data(12, seed=1), _cfg(tmp_path, epochs=epochs, tensorboard="off"),
            run_name=name, progress=False)
    table = tracking.compare_runs([tmp_path / "runs"])
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["run", "epochs", "best", "val"]
    assert [line.split()[:2] for line in lines[1:]] == [["long", "3"], ["short", "2"]]
    assert lines[0].split()[-3:] == ["GPU", "GB", "ckpt"] or lines[0].endswith("GPU GB ckpt MB")
    mb = {line.split()[0]: float(line.split()[-1]) for line in lines[1:]}  # from checkpoint_log.csv
    size = (tmp_path / "runs" / "long.pt").stat().st_size + (tmp_path / "runs" / "long.resume.pt").stat().st_size
    assert mb["long"] >= size / 1e6 - 0.1 and all(line.split()[-2] == "-" for line in lines[1:])  # no GPU here
    assert main(["compare", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.strip() == table
    ax = tracking.plot_runs([tmp_path / "runs"], "val_acc")
    assert len(ax.lines) == 2
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
