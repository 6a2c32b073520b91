"""Tests for helpers.checkpoints: atomic writes, crash safety, weights_only loading, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import helpers.checkpoints as checkpoints
from helpers.checkpoints import load_checkpoint, save_checkpoint


def _payload(num_classes: int = 10, value: float = 1.0) -> dict:
    return {"model_spec": {"arch": "resnet18", "num_classes": num_classes, "small_stem": True,
                           "image_size": 32, "class_names": [str(k) for k in range(num_classes)]},
            "model": {"w": torch.full((2, 2), value)}, "epoch": 3, "history": [{"loss": 0.5}],
            "rng": torch.get_rng_state(), "path": "runs/x.pt", "flag": True, "none": None}


def test_roundtrip_creates_folders_and_leaves_no_tmp(tmp_path):
    path = tmp_path / "a" / "b" / "classifier.pt"
    save_checkpoint(path, _payload())
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["classifier.pt"]
    out = load_checkpoint(path, num_classes=10)
    assert out["epoch"] == 3 and out["flag"] is True and out["none"] is None
    assert torch.equal(out["model"]["w"], torch.ones(2, 2))
    assert out["history"] == [{"loss": 0.5}]


def test_failure_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, _payload(value=1.0))
    real_save = torch.save

    def broken_save(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(3)}, f)  # something got written ...
        raise OSError("disk full")  # ... then the write failed

    monkeypatch.setattr(checkpoints.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _payload(value=2.0))
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.pt"]  # the .tmp is gone
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(2, 2))


def test_other_class_count_names_the_file(tmp_path):
    path = tmp_path / "classifier.pt"
    save_checkpoint(path, _payload(num_classes=10))
    with pytest.raises(ValueError, match=r"classifier\.pt was trained for 10 classes but the data has 50"):
        load_checkpoint(path, num_classes=50)
    assert load_checkpoint(path)["epoch"] == 3  # no expectation: no check


def test_missing_file_says_who_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"classifier_baseline\.pt not found.*01_classifier_baseline"):
        load_checkpoint(tmp_path / "classifier_baseline.pt")
    with pytest.raises(FileNotFoundError, match=r"03_pseudo_labeling"):
        load_checkpoint(tmp_path / "classifier_pseudo_r1.pt")
    with pytest.raises(FileNotFoundError, match=r"04_unet_segmentation"):
        load_checkpoint(tmp_path / "unet_from_classifier.pt")
    with pytest.raises(FileNotFoundError, match=r"my_run\.pt.*run_name='my_run'"):
        load_checkpoint(tmp_path / "my_run.pt")


def test_unsafe_or_damaged_files_are_refused(tmp_path):
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"path": Path("runs/x.pt")}, unsafe)  # a Path is not weights_only-safe: store str
    with pytest.raises(ValueError, match=r"unsafe\.pt.*weights_only"):
        load_checkpoint(unsafe)
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"damaged\.pt"):
        load_checkpoint(damaged)
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", [1, 2])
