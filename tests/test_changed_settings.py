"""A changed setting is a new training (helpers.engine): the earlier one is set aside as `<run>@<tag>`,
never overwritten and never silently reused, and taken back when its settings return. This is what
the notebooks' exercises rely on: change one IMSUB_* setting, rerun the notebook, compare."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from helpers.checkpoints import STATE_SUFFIX
from helpers.classification import fit
from helpers.engine import START_KEY, fit_task, training_tag
from helpers.models import build_classifier, model_spec
from helpers.pipeline import new_classifier
from helpers.segmentation import new_segmenter
from helpers.transfer import state_digest

from .resume import assert_identical_runs, crash_after_saves
from .test_classification import _cfg, _data, _tiny
from .test_training_files import ScriptedTask, _linear, _scfg

VALUES = [0.1, 0.2, 0.3, 0.4, 0.5]


def _weights(result) -> dict:
    return {k: v.clone() for k, v in result.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_setting_trains_anew_and_the_earlier_training_comes_back(tmp_path, capsys):
    cfg, other = _cfg(tmp_path, epochs=1), _cfg(tmp_path, epochs=1, lr=0.5)
    first = fit(_tiny(), _data(32), None, cfg, run_name="c", progress=False)
    first_weights = _weights(first)
    saved = torch.load(first.resume_file, weights_only=True)
    tag = training_tag(saved["settings"], saved["model_spec"], saved["epochs"])

    second = fit(_tiny(), _data(32), None, other, run_name="c", progress=False)
    out = capsys.readouterr().out
    assert "lr: 0.05 -> 0.5" in out and f"kept as c@{tag}.*" in out
    assert second.resumed_from == 0 and not _same(_weights(second), first_weights)
    runs = tmp_path / "runs"
    for suffix in (".pt", ".resume.pt", ".history.csv"):
        assert (runs / f"c@{tag}{suffix}").is_file(), suffix
    assert torch.load(runs / "c.pt", weights_only=True)["settings"]["lr"] == 0.5

    back = fit(_tiny(seed=3), _data(32), None, cfg, run_name="c", progress=False)
    assert "taken back" in capsys.readouterr().out
    assert back.resumed_from == 1 and _same(_weights(back), first_weights)  # no training: the first one, exactly
    assert not (runs / f"c@{tag}.pt").exists()
    assert len(list(runs.glob("c@*.pt"))) == 2  # the lr=0.5 training's weights and state, set aside in turn


def test_changed_images_or_epochs_are_new_trainings_too(tmp_path, capsys):
    cfg = _cfg(tmp_path, epochs=1)
    fit(_tiny(), _data(32), None, cfg, run_name="c", progress=False)
    result = fit(_tiny(), _data(32, seed=7), None, cfg, run_name="c", progress=False)
    assert result.resumed_from == 0 and "the training images or labels" in capsys.readouterr().out
    longer = fit(_tiny(), _data(32, seed=7), None, _cfg(tmp_path, epochs=2), run_name="c", progress=False)
    assert longer.resumed_from == 0 and len(longer.history) == 2  # a new schedule, not a continuation
    assert "epochs: 1 -> 2" in capsys.readouterr().out


def test_a_killed_training_set_aside_resumes_exactly_when_taken_back(tmp_path, monkeypatch):
    straight = fit_task(_linear(), ScriptedTask(VALUES), _scfg(tmp_path / "straight"), run_name="k", epochs=5,
                        progress=False)
    cfg = _scfg(tmp_path / "b")
    crash_after_saves(monkeypatch, lambda: fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="k",
                                                     epochs=5, progress=False))
    monkeypatch.undo()
    other = fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="k", epochs=4, progress=False)
    assert other.resumed_from == 0  # another schedule meanwhile: the killed training is set aside, not lost
    resumed = fit_task(_linear(), ScriptedTask(VALUES, first_epoch=2), cfg, run_name="k", epochs=5,
                       progress=False)
    assert resumed.resumed_from == 2
    assert_identical_runs(straight, resumed)


def test_the_mirror_follows_and_a_new_session_takes_back_from_it(tmp_path):
    mirror = tmp_path / "drive"
    cfg = _scfg(tmp_path / "a", mirror_dir=mirror)
    first = fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="m", epochs=3, progress=False)
    fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="m", epochs=4, progress=False)
    aside = sorted(p.name for p in mirror.glob("m@*"))
    assert len(aside) == 2 and aside[0].endswith(".pt")  # the first training, weights and state, in the mirror too
    # a new session: empty local disk, the mirror holds both trainings
    again = fit_task(_linear(), ScriptedTask(VALUES), _scfg(tmp_path / "b", mirror_dir=mirror), run_name="m",
                     epochs=3, progress=False)
    assert again.resumed_from == 3 and _same(_weights(again), _weights(first))


def test_a_changed_starting_point_is_a_new_training(tmp_path, capsys):
    cfg = _scfg(tmp_path)

    def started(run: str, digest: str | None):
        model = _linear()
        if digest:
            model.start_digest = digest
        return fit_task(model, ScriptedTask(VALUES), cfg, run_name=run, epochs=3, progress=False)

    assert started("old", None).resumed_from == 0
    assert started("old", "aaa").resumed_from == 3  # written before starts were recorded: not compared
    assert started("s", "bbb").resumed_from == 0
    assert torch.load(cfg.run_dir / "s.pt", weights_only=True)["settings"][START_KEY] == "bbb"
    capsys.readouterr()
    assert started("s", "ccc").resumed_from == 0 and "the starting weights" in capsys.readouterr().out
    assert started("s", "bbb").resumed_from == 3


def test_a_model_built_from_a_checkpoint_carries_its_digest(tmp_path):
    source = build_classifier("resnet18", 3)
    path = tmp_path / "source.pt"
    torch.save({"model": source.state_dict()}, path)
    cfg = _cfg(tmp_path, arch="resnet18", image_size=32)
    index = type("Index", (), {"num_classes": 3, "class_names": ["a", "b", "c"]})()
    model = new_classifier(cfg, index, encoder_from=path)
    trunk = {k: v.clone() for k, v in source.state_dict().items() if not k.startswith("fc.")}
    assert model.start_digest == state_digest(trunk)
    with torch.no_grad():
        source.layer1[0].conv1.weight[0, 0, 0, 0] += 1e-3
    torch.save({"model": source.state_dict()}, path)
    assert new_classifier(cfg, index, encoder_from=path).start_digest != model.start_digest
    assert not hasattr(new_classifier(cfg, index), "start_digest")
    assert new_segmenter(cfg, index, encoder_from=path).start_digest != model.start_digest  # the changed source
    torch.save({"model": trunk}, path)
    assert new_segmenter(cfg, index, encoder_from=path).start_digest == model.start_digest
    assert model.spec == model_spec("resnet18", 3, False, 32, ["a", "b", "c"])


def test_a_kill_between_two_renames_overwrites_nothing(tmp_path, monkeypatch):
    cfg = _scfg(tmp_path)
    first = fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="r", epochs=3, progress=False)
    fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="r", epochs=4, progress=False)
    runs = cfg.run_dir
    aside = next(p for p in runs.glob("r@*.pt") if not p.name.endswith(STATE_SUFFIX))  # its weights file
    saved = aside.read_bytes()
    real_replace, calls = os.replace, []

    def killed_after_one_rename(src, dst):  # taking the 3-epoch training back: killed after its first rename
        calls.append(Path(src).name)
        if "@" in Path(src).name and len([c for c in calls if "@" in c]) == 2:
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed_after_one_rename)
    with pytest.raises(KeyboardInterrupt):
        fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="r", epochs=3, progress=False)
    monkeypatch.undo()
    assert (runs / "r.resume.pt").is_file() and aside.read_bytes() == saved  # the state came back first
    again = fit_task(_linear(), ScriptedTask(VALUES), cfg, run_name="r", epochs=3, progress=False)
    # the next start completes the take-back: the very weights file comes back, nothing retrained or overwritten
    assert again.resumed_from == 3 and (runs / "r.pt").read_bytes() == saved and not aside.exists()
    assert again.history == first.history
