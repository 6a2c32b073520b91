"""U-Net segmentation: build (encoder from a classifier), the loss, train, validate.

Training runs on helpers.engine's loop (`fit_task`) with a segmentation task: batches from the
uint8 cache on the device, one affine warp for each image and its mask (augment.weak_augment),
`segmentation_loss` (CE with ignore + fg BCE + fg Dice), cfg.seg_lr with warmup and cosine, mixed
precision and channels_last as helpers.hardware decides, EMA if cfg.ema_decay > 0, checkpoints
(helpers.engine's policy) and exact resume. Validation measures the mIoU at the cache resolution; the real score
is helpers.mask_prediction.evaluate_segmentation, at the original resolution against the mask files.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import paired_views, weak_augment
from .cache import CachedImages
from .checkpoints import load_checkpoint
from .config import Config
from .consistency import unlabeled_order
from .data import DatasetIndex
from .engine import FitResult, TrainTask, data_fingerprint, fit_task
from .hardware import autocast, resolve, to_layout
from .mask_prediction import METHODS, masks_from_predictions, model_inputs, resize_maps, segmenter_classes
from .masks import IGNORE_INDEX, index_to_ids
from .metrics import SegmentationScore, segmentation_counts
from .models import DEFAULT_DECODER_CHANNELS, UNet, model_spec, unet_from_spec
from .transfer import load_encoder, load_encoder_weights

KIND = "unet"  # model_spec["kind"] of a segmenter; classifiers' specs have no "kind"


# ----------------------------------------------------------------------------- model
def segmenter_spec(cfg: Config, num_classes: int, class_names: Sequence[str],
                   decoder_channels: Sequence[int] | None = None) -> dict:
    """model_spec of a U-Net for this config (kind="unet", decoder channels recorded)."""
    spec = model_spec(cfg.arch, num_classes, cfg.small_stem, cfg.image_size, class_names,
                      decoder_channels=tuple(decoder_channels or DEFAULT_DECODER_CHANNELS))
    spec["kind"] = KIND
    return spec


def _encoder_checkpoint(cfg: Config, source: str | Path) -> Path:
    """A checkpoint file, or a run name (no suffix) resolved to cfg.run_dir / f"{name}.pt"."""
    path = Path(source)
    if not path.is_file() and path.suffix == "" and len(path.parts) == 1:
        return Path(cfg.run_dir) / f"{path.name}.pt"
    return path


def new_segmenter(cfg: Config, index: DatasetIndex, encoder_from: str | Path | None = None,
                  decoder_channels: Sequence[int] | None = None) -> UNet:
    """A U-Net for cfg.arch/small_stem and index's classes, .spec attached; encoder from a classifier checkpoint.

    index: a DatasetIndex (or anything with num_classes and class_names).
    encoder_from: a classifier checkpoint written by classification.fit (a path, or a run name in
      cfg.run_dir); its best weights' trunk is copied into the encoder and the transfer is printed.
      Without it, cfg.encoder_weights (a local torchvision state_dict) is used if set.
    """
    num_classes = int(index.num_classes)
    model = UNet(cfg.arch, num_classes, small_stem=cfg.small_stem,
                 decoder_channels=tuple(decoder_channels or DEFAULT_DECODER_CHANNELS))
    model.spec = segmenter_spec(cfg, num_classes, index.class_names, decoder_channels)
    if encoder_from is not None:
        path = _encoder_checkpoint(cfg, encoder_from)
        ckpt = load_checkpoint(path, num_classes=num_classes)
        state = ckpt.get("model")
        if not isinstance(state, dict) or not state:
            raise ValueError(f"checkpoint {path} holds no model weights; rerun the run that writes it")
        src = ckpt.get("model_spec") or {}
        for key in ("arch", "small_stem"):
            if key in src and src[key] != model.spec[key]:
                raise ValueError(
                    f"checkpoint {path} is a {key}={src[key]!r} model but the config asks for "
                    f"{key}={model.spec[key]!r}; use the same arch and small_stem as the classifier")
        report = load_encoder(model, state, f"checkpoint {path}")  # raises when any encoder tensor is missing
        model.start_digest = report.digest  # recorded by the training: a changed start is a new training
        unused = ", ".join(report.unexpected) if report.unexpected else "none"
        print(f"encoder: {report.loaded} tensors loaded from {path}; missing: none; unused: {unused}")
    elif cfg.encoder_weights:
        report = load_encoder_weights(model, cfg.encoder_weights)
        model.start_digest = report.digest
        print(f"encoder: {report.loaded} tensors loaded from {cfg.encoder_weights}; missing: none")
    return model


def load_segmenter(cfg: Config, run_name: str, num_classes: int | None = None) -> UNet:
    """Rebuild a U-Net from its checkpoint (best weights), in eval mode on cfg.device."""
    path = Path(cfg.run_dir) / f"{run_name}.pt"
    ckpt = load_checkpoint(path, num_classes=num_classes)
    spec = ckpt.get("model_spec")
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise ValueError(f"checkpoint {path} holds no segmenter (its model_spec has no kind={KIND!r}: "
                         "a classifier?); pass the run_name given to fit_segmenter")
    model = unet_from_spec(spec)
    model.load_state_dict(ckpt["model"])
    model.spec = dict(spec)
    return model.to(cfg.device or "cpu").eval()


# ----------------------------------------------------------------------------- training
def _masks_fingerprint(data: CachedImages) -> str:
    """Hash of a split's keys, labels and masks (detects a changed training set on resume)."""
    h = hashlib.sha1()
    h.update("\n".join(data.keys).encode())
    h.update(data.labels.detach().cpu().numpy().tobytes())
    h.update(data.masks.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _check_masks(data: CachedImages, num_classes: int, what: str) -> None:
    """ValueError unless `data` carries masks with indices 0..num_classes or IGNORE_INDEX."""
    if data.masks is None:
        raise ValueError(f"fit_segmenter: the {what} images carry no masks; cache them with "
                         "with_masks=True (pipeline.load_run_data does)")
    values = torch.unique(data.masks).tolist()
    bad = [v for v in values if v > num_classes and v != IGNORE_INDEX]
    if bad:
        raise ValueError(f"fit_segmenter: the {what} masks hold indices {bad[:10]}, but the model has "
                         f"{num_classes} classes (indices 0..{num_classes}, {IGNORE_INDEX} = ignore)")


class SegmentationTask(TrainTask):
    """segmentation_loss on weakly augmented image + mask pairs; the best epoch by the shipped mask method's mIoU.

    Validation (at the cache resolution) scores every mask method of helpers.mask_prediction it can
    (`val_miou_<method>`); `val_miou`, which picks the best epoch, is the one of `method`: the
    masks that will be shipped. "fg+class" and "fusion" take the image class from `class_probs`,
    the classifier's probabilities for the validation images.
    """

    metric = "val_miou"
    tie_break = "val_loss"
    val_keys = ("val_loss", "val_miou", "val_fg_iou", *(f"val_miou_{m}" for m in METHODS))
    num_stats = 5  # loss*n, correct pixels, valid pixels, confident unlabeled pixels, unlabeled pixels

    def __init__(self, train: CachedImages, val: CachedImages | None, cfg: Config, num_classes: int,
                 fg_weight: float = 1.0, dice_weight: float = 1.0, method: str = "pixel",
                 class_probs: Tensor | None = None, unlabeled: CachedImages | None = None):
        self.train, self.val, self.cfg, self.num_classes = train, val, cfg, int(num_classes)
        self.fg_weight, self.dice_weight = float(fg_weight), float(dice_weight)
        self.method, self.class_probs, self.unlabeled = method, class_probs, unlabeled
        self.size = int(cfg.image_size)
        self.teacher: nn.Module | None = None
        self._train = self._val = self._unl = None

    def __len__(self) -> int:
        return len(self.train)

    def settings(self) -> dict:
        """What a resumed run must share with its checkpoint: the recipe, the mask method, the data's fingerprints."""
        cfg = self.cfg
        return {
            "task": "segmentation", "optimizer": cfg.optimizer, "lr": float(cfg.seg_lr),
            "weight_decay": float(cfg.weight_decay), "batch_size": int(cfg.batch_size),
            "image_size": int(cfg.image_size), "ema_decay": float(cfg.ema_decay),
            "warmup_epochs": int(cfg.warmup_epochs), "grad_clip": float(cfg.grad_clip), "seed": int(cfg.seed),
            "fg_weight": self.fg_weight, "dice_weight": self.dice_weight, "mask_method": self.method,
            "num_train": len(self.train), "train_fingerprint": _masks_fingerprint(self.train),
            **({} if self.unlabeled is None else {
                "num_unlabeled": len(self.unlabeled), "unlabeled_fingerprint": data_fingerprint(self.unlabeled),
                "seg_consistency_weight": float(cfg.seg_consistency_weight),
                "seg_consistency_threshold": float(cfg.seg_consistency_threshold),
                "mu": int(cfg.unlabeled_ratio), "ema_teacher": bool(cfg.ema_teacher)}),
        }

    def set_teacher(self, ema_model: nn.Module | None) -> None:
        """With cfg.ema_teacher and unlabeled images, the EMA model's predictions become the dense targets."""
        self.teacher = ema_model if self.cfg.ema_teacher and self.unlabeled is not None else None

    def to_device(self, device: torch.device) -> None:
        """Copy the caches (images with masks, validation, unlabeled) to the training device."""
        self._train = self.train.to(device)
        self._val = self.val.to(device) if self.val is not None and len(self.val) else None
        self._unl = self.unlabeled.to(device) if self.unlabeled is not None else None

    def release(self) -> None:
        """Drop the device copies once training ends."""
        self._train = self._val = self._unl = None

    def start_epoch(self, steps: int, batch: int, generator: torch.Generator) -> None:
        """A new order of the training (and unlabeled) images for this epoch."""
        self.perm = torch.randperm(len(self.train), generator=generator)
        self.ubatch = int(self.cfg.unlabeled_ratio) * batch
        self.uorder = (unlabeled_order(len(self._unl), steps * self.ubatch, generator)
                       if self._unl is not None else None)

    def next_batch(self, i: int, batch: int, generator: torch.Generator):
        """Step i's augmented images with their masks, and unlabeled views when the dense consistency is on."""
        train = self._train
        idx = self.perm[i * batch:(i + 1) * batch].to(train.images.device, non_blocking=True)
        x, target = weak_augment(train.images[idx], train.masks[idx], self.size, generator)
        if self._unl is None:
            return x, target, None
        uidx = self.uorder[i * self.ubatch:(i + 1) * self.ubatch].to(train.images.device, non_blocking=True)
        return x, target, paired_views(self._unl.images[uidx], self.size, generator)

    def step_loss(self, model: nn.Module, data, channels_last: bool) -> tuple[Tensor, Tensor]:
        """Segmentation loss (foreground, class, Dice) plus dense consistency; returns (loss, summed stats)."""
        x, target, unl = data
        if unl is None:
            out = model(to_layout(x, channels_last))
            loss = segmentation_loss(out, target, self.fg_weight, self.dice_weight)
            confident = total = torch.zeros((), device=x.device)
        else:
            weak, strong = unl
            with torch.no_grad():
                teacher_out = (self.teacher or model)(to_layout(weak, channels_last))
            both = model(to_layout(torch.cat([x, strong]), channels_last))  # BatchNorm sees both
            b = x.shape[0]
            out = {k: v[:b] for k, v in both.items()}
            loss_u, confident_mask = dense_consistency_loss(
                teacher_out, {k: v[b:] for k, v in both.items()}, self.cfg.seg_consistency_threshold)
            loss = (segmentation_loss(out, target, self.fg_weight, self.dice_weight)
                    + self.cfg.seg_consistency_weight * loss_u)
            confident, total = confident_mask.sum(), torch.tensor(float(confident_mask.numel()), device=x.device)
        with torch.no_grad():
            valid = target != IGNORE_INDEX
            correct = ((out["seg"].argmax(dim=1) == target) & valid).sum()
            stats = torch.stack([loss.detach().float() * x.shape[0], correct.float(), valid.sum().float(),
                                 confident.float(), total.float()])
        return loss, stats

    def train_record(self, stats: list[float], seen: int, steps: int, batch: int) -> dict:
        """The epoch's loss and pixel accuracy (and the share of confident unlabeled pixels)."""
        record = {"train_loss": stats[0] / seen,
                  "train_pixel_acc": stats[1] / stats[2] if stats[2] > 0 else float("nan")}
        if self._unl is not None:
            record["pixel_mask_rate"] = stats[3] / stats[4] if stats[4] > 0 else float("nan")
        return record

    def postfix(self, stats: list[float], seen: int) -> dict:
        """Running loss and pixel accuracy for the progress bar."""
        return {"loss": f"{stats[0] / seen:.3f}",
                "pix": f"{stats[1] / stats[2]:.3f}" if stats[2] > 0 else "nan"}

    def validate(self, model: nn.Module) -> dict:
        """Validation mIoU of the shipped mask method, every method's mIoU and the loss (see `validate_segmenter`)."""
        if self._val is None:
            return {k: float("nan") for k in self.val_keys}
        return validate_segmenter(model, self._val, self.cfg, method=self.method, class_probs=self.class_probs,
                                  fg_weight=self.fg_weight, dice_weight=self.dice_weight)


def fit_segmenter(
    model: UNet,
    train: CachedImages,
    val: CachedImages | None,
    cfg: Config,
    *,
    run_name: str,
    val_class_probs: Tensor | None = None,
    method: str | None = None,
    epochs: int | None = None,
    resume: bool = True,
    progress: bool = True,
    fg_weight: float = 1.0,
    dice_weight: float = 1.0,
    unlabeled: CachedImages | None = None,
) -> FitResult:
    """Train a U-Net on cached images + masks (cfg.seg_lr, cfg.seg_epochs); best epoch by the mask method's val mIoU.

    method: the mask method whose validation mIoU picks the best epoch (default cfg.mask_method).
    val_class_probs: the classifier's probabilities [N_val, C] for the validation images, which
      "fg+class" (required) and "fusion" use for the image class.
    unlabeled: images without masks for dense consistency (`dense_consistency_loss`, weight
      cfg.seg_consistency_weight, cfg.unlabeled_ratio of them per labeled image in a step).
    Checkpoints cfg.run_dir / f"{run_name}.pt" and .resume.pt (model_spec with kind="unet"); resume as in
    classification.fit. History: train_loss, train_pixel_acc, val_loss, val_miou (of `method`),
    val_miou_<each method>, val_fg_iou, lr, seconds, images_per_s, data_share. The passed model is
    trained in place and finally holds the best weights.
    """
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict) or spec.get("kind") != KIND:
        raise ValueError("fit_segmenter: the model carries no segmenter spec (.spec with kind='unet'), so "
                         "its checkpoint could not be reloaded; build it with new_segmenter")
    num_classes = segmenter_classes(model)
    method = method or cfg.mask_method
    if method not in METHODS:
        raise ValueError(f"unknown mask method {method!r} (cfg.mask_method / IMSUB_MASK_METHOD); "
                         f"choose one of {', '.join(METHODS)}")
    if len(train) == 0:
        raise ValueError("fit_segmenter: the training set is empty")
    _check_masks(train, num_classes, "training")
    has_val = val is not None and len(val) > 0
    if has_val:
        _check_masks(val, num_classes, "validation")
        if val_class_probs is not None and tuple(val_class_probs.shape) != (len(val), num_classes):
            raise ValueError(f"fit_segmenter: val_class_probs has shape {tuple(val_class_probs.shape)}, "
                             f"expected ({len(val)}, {num_classes}): the classifier's probabilities of the val images")
        if method == "fg+class" and val_class_probs is None:
            raise ValueError("fit_segmenter: method 'fg+class' picks the best epoch with the classifier's image "
                             "classes; pass val_class_probs (classification.predict_proba on the val images)")
    if unlabeled is not None and len(unlabeled) and cfg.ema_teacher and cfg.ema_decay <= 0:
        raise ValueError("cfg.ema_teacher needs the weight EMA: set ema_decay > 0 (IMSUB_EMA_DECAY)")
    use_unlabeled = unlabeled is not None and len(unlabeled) > 0 and cfg.seg_consistency_weight > 0
    task = SegmentationTask(train, val, cfg, num_classes, fg_weight, dice_weight, method, val_class_probs,
                            unlabeled if use_unlabeled else None)
    return fit_task(model, task, cfg, run_name=run_name, epochs=cfg.seg_epochs if epochs is None else epochs,
                    lr=cfg.seg_lr, resume=resume, progress=progress)


@torch.no_grad()
def validate_segmenter(model: nn.Module, data: CachedImages, cfg: Config, *, method: str = "pixel",
                       class_probs: Tensor | None = None, batch_size: int | None = None,
                       fg_weight: float = 1.0, dice_weight: float = 1.0) -> dict:
    """val_loss, val_miou (of `method`), val_miou_<m> per mask method, val_fg_iou (fg head > 0.5), at the cache size.

    Every mIoU is the ImageNet-S one over the validation set. Methods that need the image class
    ("fg+class") are NaN without `class_probs`.
    """
    if data.masks is None:
        raise ValueError("validate_segmenter: the images carry no masks")
    num_classes = segmenter_classes(model)
    device, amp, channels_last = resolve(cfg)
    batch_size = batch_size or max(1, int(cfg.batch_size))
    size = data.size
    methods = [m for m in METHODS if class_probs is not None or m != "fg+class"]
    scores = {m: SegmentationScore(num_classes) for m in methods}
    loss_sum, fg_inter, fg_union = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(data), batch_size):
            x = model_inputs(data.images[start:start + batch_size], cfg, device, channels_last, tta=False)
            target = data.masks[start:start + batch_size].to(device, non_blocking=True)
            with autocast(device, amp):
                out = model(x)
            out = {k: resize_maps(v.float(), size) for k, v in out.items()}
            loss_sum += float(segmentation_loss(out, target, fg_weight, dice_weight)) * x.shape[0]
            valid = target != IGNORE_INDEX
            truth_fg = (target > 0) & valid
            pred_fg = (out["fg"][:, 0] > 0) & valid
            fg_inter += int((pred_fg & truth_fg).sum())
            fg_union += int((pred_fg | truth_fg).sum())
            fg_prob, cls_prob = torch.sigmoid(out["fg"][:, 0]), out["seg"].softmax(dim=1)
            probs = None if class_probs is None else class_probs[start:start + x.shape[0]]
            true = index_to_ids(target.cpu()).numpy().reshape(-1, size)
            for m in methods:
                pred = masks_from_predictions(fg_prob, cls_prob, probs, m).to(torch.int32).cpu().numpy()
                # one count over the whole batch: the images stacked into one tall map
                scores[m].add_counts(segmentation_counts(pred.reshape(-1, size), true, num_classes))
    finally:
        model.train(was_training)
    result = {"val_loss": loss_sum / max(1, len(data)),
              "val_fg_iou": fg_inter / fg_union if fg_union else float("nan")}
    result.update({f"val_miou_{m}": scores[m].result()["miou"] if m in scores else float("nan") for m in METHODS})
    result["val_miou"] = result[f"val_miou_{method}"]
    return result


# ----------------------------------------------------------------------------- loss
def segmentation_loss(
    out: Mapping[str, Tensor],
    target: Tensor,
    fg_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> Tensor:
    """CE on 'seg' + fg_weight * BCE on 'fg' + dice_weight * soft Dice on fg; 255 pixels ignored."""
    seg, fg = out["seg"].float(), out["fg"].float()
    if target.ndim != 3 or target.shape[-2:] != seg.shape[-2:] or target.shape[0] != seg.shape[0]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match seg logits {tuple(seg.shape)}")
    target = target.long()
    valid = target != IGNORE_INDEX
    n_valid = valid.sum().clamp(min=1)
    # sum / count instead of mean: an all-ignored batch gives 0, not NaN
    ce = F.cross_entropy(seg, target, ignore_index=IGNORE_INDEX, reduction="sum") / n_valid
    fg_logit = fg[:, 0]
    fg_target = (target > 0) & valid
    bce = F.binary_cross_entropy_with_logits(fg_logit, fg_target.float(), reduction="none")
    bce = torch.where(valid, bce, torch.zeros_like(bce)).sum() / n_valid
    prob = torch.where(valid, torch.sigmoid(fg_logit), torch.zeros_like(fg_logit))
    truth = fg_target.float()
    inter = (prob * truth).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + truth.flatten(1).sum(1)
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)  # per image, +1 smoothing: empty vs empty = 0
    return ce + fg_weight * bce + dice_weight * dice.mean()


def dense_consistency_loss(weak_out: dict[str, Tensor], strong_out: dict[str, Tensor],
                           threshold: float) -> tuple[Tensor, Tensor]:
    """(loss, confident pixels [B,H,W]): the weak view's confident per-pixel guesses supervise the strong view.

    The two views share their geometry (augment.paired_views), so pixel (i, j) is the same point of
    the image in both. A pixel counts where the seg head's top probability reaches `threshold`; its
    argmax is the class target (cross-entropy) and "not background" the fg target (BCE). Unsure
    pixels count as zero (FixMatch per pixel, as in UniMatch, Yang et al., CVPR 2023).
    """
    probs = weak_out["seg"].detach().float().softmax(dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = (confidence >= threshold).float()
    ce = F.cross_entropy(strong_out["seg"].float(), pseudo, reduction="none")
    bce = F.binary_cross_entropy_with_logits(strong_out["fg"][:, 0].float(), (pseudo > 0).float(), reduction="none")
    return ((ce + bce) * mask).mean(), mask
