"""The cpu preset's checkpoint bytes fit a laptop: a cpu-shaped run replayed with the real checkpoint code."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from helpers.config import PRESETS, Config

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoint_bytes.py"
_spec = importlib.util.spec_from_file_location("checkpoint_bytes", _path)
checkpoint_bytes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(checkpoint_bytes)

# Eight minutes of training shaped like a cpu-preset run (01's two classifiers, 03's round, 04's two
# U-Nets), few but long simulated epochs: the bytes depend on the saves, not on the epoch count.
PLAN = [("classifier_baseline", [22.5] * 4), ("classifier_no_augmentation", [22.5] * 4),
        ("classifier_pseudo_r1", [30.0] * 4), ("unet_scratch", [22.5] * 4), ("unet_from_classifier", [22.5] * 4)]


@pytest.mark.parametrize("preset", ["cpu"])
def test_a_cpu_shaped_run_writes_under_1_gb_per_15_minutes_and_a_kill_loses_under_2(tmp_path, preset):
    cfg = Config(**{**PRESETS[preset], "preset": preset, "device": "cpu", "run_dir": tmp_path / "runs",
                    "tensorboard": "off", "image_size": 32, "ssl_image_size": 32})
    results = checkpoint_bytes.replay(PLAN, cfg)
    training = sum(sum(s) for _, s in PLAN)
    gb = sum(r["mb"] for r in results.values()) / 1e3
    assert gb <= 1.0 * training / 900, (gb, results)  # at most 1 GB per 15 minutes of training
    assert max(r["longest_unsaved_s"] for r in results.values()) <= 120  # a kill loses at most 2 minutes
    assert results["classifier_pseudo_r1"]["saves"] == 2  # one due on the way (120 s > 115 s), one at the end
    assert all(r["saves"] == 1 for name, r in results.items() if name != "classifier_pseudo_r1")


def test_the_replay_reads_a_run_folders_trainings_in_order(tmp_path):
    import os

    for i, (name, rows) in enumerate([("classifier_baseline", 3), ("unet_scratch", 2), ("classifier_x@ab12", 1)]):
        path = tmp_path / f"{name}.history.csv"
        path.write_text("epoch,train_loss,seconds\n" + "".join(f"{e + 1},1.0,{e + 1.5}\n" for e in range(rows)))
        os.utime(path, (1000 + i, 1000 + i))
    assert checkpoint_bytes.trainings(tmp_path) == [("classifier_baseline", [1.5, 2.5, 3.5]),
                                                    ("unet_scratch", [1.5, 2.5])]  # set-aside ones left out
    assert [checkpoint_bytes.kind(n) for n in ("ssl_encoder", "classifier_pseudo_r1", "final_unet_semi",
                                               "classifier_ssl")] == ["ssl", "fixmatch", "unet", "classifier"]
