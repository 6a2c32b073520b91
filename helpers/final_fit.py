"""The last fit: the chosen recipe trained once more on every labeled image, validation images included.

The validation images choose (the pseudo-label round or not, which U-Net); once the choices are
made, they can teach as well: with 10 labeled images per class and cfg.val_per_class = 2, that is
2 more per class on top of the 8 the models trained on, a quarter more labels. With no images left to pick an epoch with, these fits keep their last
weights (the EMA ones when cfg.ema_decay > 0). Each run is named "final_" + the chosen run's name and
checkpointed like any other, so a rerun after a disconnect resumes it. SimCLR's encoder
(notebook 02) is reused as it is: it never saw the labels, only the validation images were left
out of its 5,000-odd images.

Two ways, by cfg.final_fit_fraction: 1 (the default) retrains each recipe from its start, as the
first pass did (Goodfellow et al., *Deep Learning*, 2016, algorithm 7.2); below 1, each chosen
model continues from its own weights on all labeled images, for that share of its epochs at that
share of its learning rate, the round's student on the round's stored pseudo-labels (their
algorithm 7.3): a fraction of the cost, where a run's time is short.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from . import cache, classification, pseudo, segmentation, selfsup
from .config import Config
from .pipeline import (
    BASELINE_RUN,
    SSL_CLASSIFIER_RUN,
    RunData,
    checkpoint_path,
    keys_digest,
    load_classifier,
    new_classifier,
    pseudo_label_tensors,
    start_classifier,
    stored_pseudo_labels,
)
from .transfer import state_digest

PREFIX = "final_"
PSEUDO_PREFIX = "classifier_pseudo_r"
SEMI_UNET = "unet_semi"  # the U-Net that also learns from unlabeled images (cfg.seg_consistency_weight)
UNET_STARTS = ("unet_scratch", "unet_from_ssl", "unet_from_classifier", SEMI_UNET)


def all_labeled(data: RunData) -> cache.CachedImages:
    """Every labeled image of the run (training and validation split), masks included."""
    return cache.concat(data.train, data.val)


def continuing(cfg: Config) -> bool:
    """Whether the final fit continues the chosen models (cfg.final_fit_fraction < 1) rather than retraining them."""
    fraction = float(cfg.final_fit_fraction)
    if not 0 < fraction <= 1:
        raise ValueError(f"final_fit_fraction (IMSUB_FINAL_FIT_FRACTION) must be in (0, 1], got {fraction}")
    return fraction < 1


def _continued_cfg(cfg: Config) -> Config:
    """The settings of a continued fit: no warmup, the learning rates scaled by the fraction."""
    f = float(cfg.final_fit_fraction)
    return dataclasses.replace(cfg, lr=cfg.lr * f, seg_lr=cfg.seg_lr * f, warmup_epochs=0)


def _share(cfg: Config, epochs: int) -> int:
    """cfg.final_fit_fraction of `epochs`, at least one."""
    return max(1, round(float(cfg.final_fit_fraction) * int(epochs)))


def _start_from_own_weights(model: torch.nn.Module) -> torch.nn.Module:
    """Mark a reloaded model so that its training's resume tag names the weights it continues from."""
    model.start_digest = state_digest(model.state_dict())
    return model.train()


def round_pseudo_labels(cfg: Config, data: RunData, chosen: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices, labels) of the pseudo-labels the chosen round's student trained on (run_dir/pseudo_labels_rN.json)."""
    path = Path(cfg.run_dir) / f"pseudo_labels_r{chosen[len(PSEUDO_PREFIX):]}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the final fit continues {chosen} on the pseudo-labels it "
                                "trained on; run notebook 03 again (or set IMSUB_FINAL_FIT_FRACTION=1 to retrain)")
    stored = json.loads(path.read_text())
    if stored.get("keys_sha1") != keys_digest(data.unlabeled.keys):
        raise ValueError(f"{path} was selected from other unlabeled images than this run's; run notebook 03 again")
    return pseudo_label_tensors(stored)


def continue_classifier(cfg: Config, data: RunData, chosen: str) -> str:
    """The chosen classifier continued on all labeled images (a round's student: + its pseudo-labels); the new run's name."""
    run = PREFIX + chosen
    model = _start_from_own_weights(load_classifier(cfg, chosen, data.index.num_classes))
    train_set, epochs, unlabeled = all_labeled(data), cfg.epochs, None
    if chosen.startswith(PSEUDO_PREFIX):
        if data.unlabeled is None or not len(data.unlabeled):
            raise ValueError(f"{chosen} learned from unlabeled images, but this run's data has none loaded")
        indices, labels = round_pseudo_labels(cfg, data, chosen)
        train_set = cache.concat(train_set, pseudo.pseudo_labeled(data.unlabeled, indices, labels))
        epochs = cfg.pseudo_epochs
        unlabeled = data.unlabeled if cfg.consistency_weight > 0 else None
    classification.fit(model, train_set, None, _continued_cfg(cfg), run_name=run, epochs=_share(cfg, epochs),
                       unlabeled=unlabeled, unlabeled_weight=cfg.consistency_weight)
    return run


def continue_segmenter(cfg: Config, data: RunData, chosen: str) -> str:
    """The chosen U-Net continued on all labeled masks; the new run's name."""
    run = PREFIX + chosen
    model = _start_from_own_weights(segmentation.load_segmenter(cfg, chosen, data.index.num_classes))
    segmentation.fit_segmenter(model, all_labeled(data), None, _continued_cfg(cfg), run_name=run,
                               epochs=_share(cfg, cfg.seg_epochs),
                               unlabeled=data.unlabeled if chosen == SEMI_UNET else None)
    return run


def fit_classifier(cfg: Config, data: RunData, chosen: str) -> str:
    """Train the recipe of the chosen classifier run on all labeled images; the new run's name.

    classifier_baseline: random weights; classifier_ssl: from 02's encoder; classifier_pseudo_rN:
    N self-training rounds whose first teacher is the final labeled-only classifier, every student
    from selfsup.start_encoder(cfg) as in notebook 03, with the same thresholds and cap.
    """
    k = data.index.num_classes
    labeled = all_labeled(data)
    if chosen in (BASELINE_RUN, SSL_CLASSIFIER_RUN):
        start = selfsup.ssl_checkpoint(cfg) if chosen == SSL_CLASSIFIER_RUN else None
        run = PREFIX + chosen
        classification.fit(new_classifier(cfg, data.index, encoder_from=start), labeled, None, cfg, run_name=run)
        return run
    if not chosen.startswith(PSEUDO_PREFIX) or not chosen[len(PSEUDO_PREFIX):].isdigit():
        raise ValueError(f"no final-fit recipe for the classifier run {chosen!r}; expected {BASELINE_RUN}, "
                         f"{SSL_CLASSIFIER_RUN} or {PSEUDO_PREFIX}<round>")
    if data.unlabeled is None or not len(data.unlabeled):
        raise ValueError(f"{chosen} learned from unlabeled images, but this run's data has none loaded")
    teacher_run = fit_classifier(cfg, data, start_classifier(cfg))  # the labeled-only recipe of cfg.init
    teacher = load_classifier(cfg, teacher_run, k)
    start = selfsup.start_encoder(cfg, k)
    for r in range(1, int(chosen[len(PSEUDO_PREFIX):]) + 1):
        probs = classification.predict_proba(teacher, data.unlabeled, cfg, tta=True)
        cap = pseudo.per_class_cap(probs, cfg.pseudo_threshold, cfg.pseudo_max_per_class, cfg.pseudo_balance)
        indices, labels = stored_pseudo_labels(
            cfg, f"{PREFIX}pseudo_labels_r{r}", teacher_run, data.unlabeled.keys,
            lambda p=probs, c=cap: pseudo.select_pseudo_labels(p, cfg.pseudo_threshold, c),
            {"threshold": cfg.pseudo_threshold, "cap": cap})
        train_set = cache.concat(labeled, pseudo.pseudo_labeled(data.unlabeled, indices, labels))
        run = f"{PREFIX}{PSEUDO_PREFIX}{r}"
        result = classification.fit(new_classifier(cfg, data.index, encoder_from=start), train_set, None, cfg,
                                    run_name=run, epochs=cfg.pseudo_epochs,
                                    unlabeled=data.unlabeled if cfg.consistency_weight > 0 else None,
                                    unlabeled_weight=cfg.consistency_weight)
        print(f"final round {r}: {len(indices)} pseudo-labels from {teacher_run}")
        teacher, teacher_run = result.model, run
    return teacher_run


def fit_segmenter(cfg: Config, data: RunData, chosen: str, classifier_run: str) -> str:
    """Train the chosen U-Net's recipe on all labeled masks, its encoder from `classifier_run` where it took one."""
    if chosen not in UNET_STARTS:
        raise ValueError(f"no final-fit recipe for the U-Net run {chosen!r}; expected one of {', '.join(UNET_STARTS)}")
    encoder_from: Path | None = {"unet_scratch": None, "unet_from_ssl": selfsup.ssl_checkpoint(cfg)}.get(
        chosen, checkpoint_path(cfg, classifier_run))
    model = segmentation.new_segmenter(cfg, data.index, encoder_from=encoder_from)
    run = PREFIX + chosen
    segmentation.fit_segmenter(model, all_labeled(data), None, cfg, run_name=run,
                               unlabeled=data.unlabeled if chosen == SEMI_UNET else None)
    return run


def fit_chosen(cfg: Config, data: RunData, classifier: str, segmenter: str) -> tuple[str, str]:
    """The final classifier and U-Net for the chosen runs (names of the new runs), trained on all labeled images."""
    if continuing(cfg):
        return continue_classifier(cfg, data, classifier), continue_segmenter(cfg, data, segmenter)
    final_classifier = fit_classifier(cfg, data, classifier)
    return final_classifier, fit_segmenter(cfg, data, segmenter, final_classifier)

