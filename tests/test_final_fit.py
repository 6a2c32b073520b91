"""helpers.final_fit: the chosen recipe trained again on every labeled image, validation images included."""
from __future__ import annotations

import json

import pytest

import helpers
from helpers import classification, final_fit, pipeline
from helpers.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_demo):
    """A smoke run folder holding 01's baseline, and the final fit of a pseudo-label round + U-Net from it."""
    folder = tmp_path_factory.mktemp("final_fit")
    cfg = helpers.get_config("smoke", data_root=small_demo, run_dir=folder, init="scratch", epochs=1,
                             pseudo_epochs=1, seg_epochs=1, tensorboard="off")
    data = pipeline.load_run_data(cfg, unlabeled=True, progress=False)
    helpers.seed_everything(cfg.seed)
    classification.fit(pipeline.new_classifier(cfg, data.index), data.train, data.val, cfg,
                       run_name=pipeline.BASELINE_RUN, progress=False)
    names = final_fit.fit_chosen(cfg, data, "classifier_pseudo_r1", "unet_from_classifier")
    return cfg, data, names


def _settings(cfg, run_name: str) -> dict:
    return load_checkpoint(pipeline.checkpoint_path(cfg, run_name))["settings"]


def test_every_final_model_trains_on_the_training_and_validation_images(run):
    cfg, data, names = run
    assert names == ("final_classifier_pseudo_r1", "final_unet_from_classifier")
    labeled = len(data.train) + len(data.val)
    assert _settings(cfg, "final_classifier_baseline")["num_train"] == labeled  # the round's teacher
    kept = json.loads((cfg.run_dir / "final_pseudo_labels_r1.json").read_text())
    assert _settings(cfg, "final_classifier_pseudo_r1")["num_train"] == labeled + len(kept["indices"])
    assert _settings(cfg, "final_unet_from_classifier")["num_train"] == labeled
    # the earlier run, trained on the training split only, is left as it was
    assert _settings(cfg, pipeline.BASELINE_RUN)["num_train"] == len(data.train)


def test_the_round_learns_from_the_final_teacher_and_the_unet_starts_from_the_final_classifier(run, capsys):
    cfg, data, _ = run
    kept = json.loads((cfg.run_dir / "final_pseudo_labels_r1.json").read_text())
    assert kept["teacher"] == "final_classifier_baseline.pt"
    student = _settings(cfg, "final_classifier_pseudo_r1")
    assert student["num_unlabeled"] == len(data.unlabeled)  # FixMatch on the unlabeled images, as in 03
    # A rerun resumes every finished fit from its checkpoint and names the same encoder source.
    final_fit.fit_segmenter(cfg, data, "unet_from_classifier", "final_classifier_pseudo_r1")
    assert "final_classifier_pseudo_r1.pt" in capsys.readouterr().out


def test_the_final_fits_keep_their_last_epoch(run):
    cfg, _, names = run
    for name in names:
        ckpt = load_checkpoint(pipeline.checkpoint_path(cfg, name))
        assert ckpt["best_epoch"] == ckpt["epochs"]  # no validation images left to pick an epoch with


def test_an_unknown_run_has_no_recipe(run):
    cfg, data, _ = run
    with pytest.raises(ValueError, match="no final-fit recipe for the classifier run 'classifier_mystery'"):
        final_fit.fit_classifier(cfg, data, "classifier_mystery")
    with pytest.raises(ValueError, match="no final-fit recipe for the U-Net run 'unet_mystery'"):
        final_fit.fit_segmenter(cfg, data, "unet_mystery", "final_classifier_pseudo_r1")
