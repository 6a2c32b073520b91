"""helpers.final_fit: the chosen recipe trained again on every labeled image, validation images included."""
from __future__ import annotations

import json

import pytest

import helpers
from helpers import cache, classification, final_fit, pipeline
from helpers.checkpoints import load_checkpoint


@pytest.fixture(scope="module")
def run(tmp_path_factory, small_demo):
    """A smoke run folder holding 01's baseline, and the final fit of a pseudo-label round + U-Net from it."""
    folder = tmp_path_factory.mktemp("final_fit")
    cfg = helpers.get_config("smoke", data_root=small_demo, run_dir=folder, init="scratch", epochs=1,
                             pseudo_epochs=1, seg_epochs=1, tensorboard="off", final_fit_fraction=1.0)
    data = pipeline.load_run_data(cfg, unlabeled=True, progress=False)
    helpers.seed_everything(cfg.seed)
    classification.fit(pipeline.new_classifier(cfg, data.index), data.train, data.val, cfg,
                       run_name=pipeline.BASELINE_RUN, progress=False)
    names = final_fit.fit_chosen(cfg, data, "classifier_pseudo_r1", "unet_from_classifier")  # the retrain
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


@pytest.fixture(scope="module")
def first_pass(tmp_path_factory, small_demo):
    """A smoke run folder with a first pass as 03 and 04 leave it: baseline, round 1 (its pseudo-labels stored), U-Net."""
    from helpers import pseudo, segmentation
    folder = tmp_path_factory.mktemp("final_fit_continue")
    cfg = helpers.get_config("smoke", data_root=small_demo, run_dir=folder, init="scratch", epochs=2,
                             pseudo_epochs=2, seg_epochs=2, tensorboard="off", final_fit_fraction=0.5)
    data = pipeline.load_run_data(cfg, unlabeled=True, progress=False)
    helpers.seed_everything(cfg.seed)
    baseline = classification.fit(pipeline.new_classifier(cfg, data.index), data.train, data.val, cfg,
                                  run_name=pipeline.BASELINE_RUN, progress=False).model
    probs = classification.predict_proba(baseline, data.unlabeled, cfg)
    indices, labels = pipeline.stored_pseudo_labels(
        cfg, "pseudo_labels_r1", pipeline.BASELINE_RUN, data.unlabeled.keys,
        lambda: pseudo.select_pseudo_labels(probs, 0.0, 5), {"threshold": 0.0, "cap": 5})
    student_set = cache.concat(data.train, pseudo.pseudo_labeled(data.unlabeled, indices, labels))
    classification.fit(pipeline.new_classifier(cfg, data.index), student_set, data.val, cfg,
                       run_name="classifier_pseudo_r1", epochs=cfg.pseudo_epochs, progress=False)
    segmentation.fit_segmenter(segmentation.new_segmenter(cfg, data.index), data.train, None, cfg,
                               run_name="unet_scratch", progress=False)
    return cfg, data, len(indices)


def test_a_continued_final_fit_starts_from_the_chosen_weights_for_a_share_of_the_epochs(first_pass):
    from helpers.transfer import state_digest
    cfg, data, kept = first_pass
    names = final_fit.fit_chosen(cfg, data, "classifier_pseudo_r1", "unet_scratch")
    assert names == ("final_classifier_pseudo_r1", "final_unet_scratch")
    assert not (cfg.run_dir / "final_classifier_baseline.pt").exists()  # no teacher trained again
    labeled = len(data.train) + len(data.val)
    for name, chosen, num_train in ((names[0], "classifier_pseudo_r1", labeled + kept),
                                    (names[1], "unet_scratch", labeled)):
        final = load_checkpoint(pipeline.checkpoint_path(cfg, name))
        assert final["epochs"] == 1  # half of 2
        assert final["settings"]["num_train"] == num_train  # the round's own pseudo-labels, validation images too
        start = load_checkpoint(pipeline.checkpoint_path(cfg, chosen))["model"]
        assert final["settings"]["start_weights"] == state_digest(start)


def test_a_continued_final_fit_names_a_missing_pseudo_label_file(first_pass, tmp_path):
    cfg, data, _ = first_pass
    import shutil
    moved = helpers.get_config("smoke", data_root=cfg.data_root, run_dir=tmp_path, init="scratch",
                               tensorboard="off", final_fit_fraction=0.5)
    shutil.copy(pipeline.checkpoint_path(cfg, "classifier_pseudo_r1"), tmp_path)
    with pytest.raises(FileNotFoundError, match="pseudo_labels_r1.json is missing"):
        final_fit.continue_classifier(moved, data, "classifier_pseudo_r1")


def test_a_continued_final_fit_refuses_pseudo_labels_of_other_unlabeled_images(first_pass, tmp_path):
    cfg, data, _ = first_pass
    stored = json.loads((cfg.run_dir / "pseudo_labels_r1.json").read_text())
    (tmp_path / "pseudo_labels_r1.json").write_text(json.dumps({**stored, "keys_sha1": "0" * 40}))
    moved = helpers.get_config("smoke", data_root=cfg.data_root, run_dir=tmp_path, init="scratch",
                               tensorboard="off", final_fit_fraction=0.5)
    with pytest.raises(ValueError, match="pseudo_labels_r1.json was selected from other unlabeled images"):
        final_fit.round_pseudo_labels(moved, data, "classifier_pseudo_r1")


@pytest.mark.parametrize("fraction", [0.0, 1.5, -1.0])
def test_a_final_fit_fraction_outside_zero_to_one_is_refused(fraction):
    cfg = helpers.get_config("smoke", prepare_data=False, final_fit_fraction=fraction)
    with pytest.raises(ValueError, match="final_fit_fraction"):
        final_fit.continuing(cfg)
