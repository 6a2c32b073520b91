"""Image classification on the decoded-image cache: prediction, evaluation, and the training task `fit` runs.

`fit` trains a classifier with helpers.engine's loop on labeled images (cross-entropy with label
smoothing on weakly augmented views, or strongly augmented ones with cfg.label_view="strong") and,
given unlabeled images, adds the FixMatch consistency loss of helpers.consistency. `predict_proba` /
`evaluate` score a model with optional flip TTA; `extract_features` returns its penultimate-layer
features for analysis.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import CROP_MIN_SCALE, center_resize, normalize, paper_weak_augment, strong_augment, weak_augment
from .cache import CachedImages
from .config import Config
from .consistency import AdaptiveThreshold, DistributionAlignment, consistency_loss, unlabeled_order
from .engine import FitResult, TrainTask, data_fingerprint, fit_task, spec_of
from .hardware import autocast, resolve, to_layout

_PROGRESS_MIN_IMAGES = 2048  # predict_proba shows a bar from this many images on
ADAPTIVE = "adaptive"  # cfg.consistency_threshold for FreeMatch's self-adaptive thresholds
WEAK_VIEWS = ("crop", "flip_translate")  # cfg.weak_view: the supervised crop view, or FixMatch's
LABEL_VIEWS = ("weak", "strong")  # cfg.label_view: the labeled images' view (augment.weak_augment / strong_augment)


@torch.no_grad()
def predict_proba(
    model: nn.Module,
    images: CachedImages | Tensor,
    cfg: Config,
    *,
    tta: bool = True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Tensor:
    """Softmax probabilities [N, C] (CPU float32): center_resize + normalize, optional horizontal-flip TTA."""
    data = images.images if isinstance(images, CachedImages) else images
    if not isinstance(data, Tensor) or data.ndim != 4 or data.shape[1] != 3:
        raise ValueError(f"predict_proba: expected CachedImages or a [N,3,H,W] tensor, got "
                         f"{tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__}")
    device, amp, channels_last = resolve(cfg)
    batch_size = batch_size or max(1, 2 * cfg.batch_size)
    was_training = model.training
    model.eval()
    n = data.shape[0]
    show = progress if progress is not None else n >= _PROGRESS_MIN_IMAGES
    out = []
    try:
        for start in tqdm(range(0, n, batch_size), desc="predict", unit="batch", leave=False,
                          disable=not show):
            x = data[start:start + batch_size].to(device, non_blocking=True)
            x = normalize(center_resize(x, None, cfg.image_size)[0])
            if tta:
                x = torch.cat([x, x.flip(3)])
            with autocast(device, amp):
                logits = model(to_layout(x, channels_last))
            probs = logits.float().softmax(dim=1)
            if tta:
                plain, flipped = probs.chunk(2)
                probs = (plain + flipped) / 2
            out.append(probs.cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.zeros(0, 0)
    return torch.cat(out)


def evaluate(model: nn.Module, data: CachedImages, cfg: Config, *, tta: bool = False,
             batch_size: int | None = None, progress: bool | None = None) -> dict:
    """accuracy and loss (NLL) over the images with known labels, plus predictions and probs of all images."""
    probs = predict_proba(model, data, cfg, tta=tta, batch_size=batch_size, progress=progress)
    labels = data.labels.detach().cpu().long()
    predictions = probs.argmax(dim=1) if probs.numel() else torch.zeros(0, dtype=torch.long)
    known = labels >= 0
    n_known = int(known.sum())
    if n_known:
        accuracy = float((predictions[known] == labels[known]).float().mean())
        loss = float(F.nll_loss(probs[known].clamp_min(1e-12).log(), labels[known]))
    else:
        accuracy = loss = float("nan")
    return {"accuracy": accuracy, "loss": loss, "predictions": predictions, "probs": probs,
            "num_labeled": n_known}


# ----------------------------------------------------------------------------- training
def _settings(cfg: Config, train: CachedImages, unlabeled: CachedImages | None, unlabeled_weight: float,
              threshold: float | str | None, mu: int) -> dict:
    """The run settings a resumed run must share with its checkpoint (epochs may grow)."""
    s = {
        "optimizer": cfg.optimizer, "lr": float(cfg.lr), "weight_decay": float(cfg.weight_decay),
        "batch_size": int(cfg.batch_size), "image_size": int(cfg.image_size),
        "label_smoothing": float(cfg.label_smoothing), "ema_decay": float(cfg.ema_decay),
        "warmup_epochs": int(cfg.warmup_epochs), "grad_clip": float(cfg.grad_clip), "seed": int(cfg.seed),
        "num_train": len(train), "train_fingerprint": data_fingerprint(train),
    }
    if unlabeled is not None:
        s.update(num_unlabeled=len(unlabeled), unlabeled_fingerprint=data_fingerprint(unlabeled),
                 unlabeled_weight=float(unlabeled_weight), mu=int(mu), weak_view=cfg.weak_view,
                 threshold=threshold if isinstance(threshold, str) else float(threshold),
                 distribution_alignment=bool(cfg.distribution_alignment), ema_teacher=bool(cfg.ema_teacher))
        if threshold == ADAPTIVE:
            s["threshold_momentum"] = float(cfg.threshold_momentum)
    return s


def parse_threshold(value: float | str) -> float | str:
    """A consistency threshold setting: "adaptive" (FreeMatch) or a probability in [0, 1]."""
    if isinstance(value, str) and value.strip().lower() == ADAPTIVE:
        return ADAPTIVE
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number >= 0.0:  # also catches NaN; above 1 keeps no pseudo-label at all
        raise ValueError(f"consistency threshold {value!r} (cfg.consistency_threshold / IMSUB_CONSISTENCY_THRESHOLD): "
                         f"expected {ADAPTIVE!r} or a probability between 0 and 1")
    return number


class ClassificationTask(TrainTask):
    """Supervised cross-entropy on labeled images, plus FixMatch on `unlabeled` when given (what `fit` runs).

    The consistency part follows the config: cfg.weak_view ("crop": the supervised weak view;
    "flip_translate": FixMatch's), a fixed or adaptive threshold (helpers.consistency), optional
    distribution alignment, and an optional EMA teacher (cfg.ema_teacher: the engine sets
    `teacher` to its EMA model, whose weak-view predictions then give the targets).
    """

    num_stats = 6  # loss*n, correct, masked, unlabeled loss*n, pseudo correct, pseudo known

    def __init__(self, train: CachedImages, val: CachedImages | None, cfg: Config,
                 unlabeled: CachedImages | None = None, unlabeled_weight: float = 1.0,
                 threshold: float | str | None = None, mu: int = 1, augment: bool = True,
                 unlabeled_truth: Tensor | None = None, num_classes: int | None = None):
        self.train, self.val, self.unlabeled, self.cfg = train, val, unlabeled, cfg
        self.augment = bool(augment)
        if cfg.label_view not in LABEL_VIEWS:
            raise ValueError(f"unknown label view {cfg.label_view!r} (cfg.label_view / IMSUB_LABEL_VIEW); "
                             f"choose one of {', '.join(LABEL_VIEWS)}")
        self.strong_labeled = cfg.label_view == "strong"
        self.unlabeled_weight, self.mu = float(unlabeled_weight), int(mu)
        self.threshold = parse_threshold(threshold) if threshold is not None else None
        self.size = int(cfg.image_size)
        self.min_scale = float(cfg.crop_min_scale)
        if not 0.0 < self.min_scale <= 1.0:
            raise ValueError(f"crop_min_scale {cfg.crop_min_scale!r} (cfg.crop_min_scale / IMSUB_CROP_MIN_SCALE): "
                             "expected the smallest crop's share of the image area, above 0 and at most 1")
        self.smoothing = float(cfg.label_smoothing)
        self.truth = None if unlabeled_truth is None else torch.as_tensor(unlabeled_truth).long().cpu()
        num_classes = int(num_classes or (int(train.labels.max()) + 1 if len(train) else 1))
        self.adaptive = AdaptiveThreshold(num_classes, cfg.threshold_momentum) if self.threshold == ADAPTIVE else None
        self.align = DistributionAlignment(num_classes) if cfg.distribution_alignment else None
        self.teacher: nn.Module | None = None
        self._train = self._val = self._unl = self._truth = None

    def __len__(self) -> int:
        return len(self.train)

    def settings(self) -> dict:
        """What a resumed run must share with its checkpoint (see `_settings`)."""
        s = _settings(self.cfg, self.train, self.unlabeled, self.unlabeled_weight, self.threshold, self.mu)
        if not self.augment:
            s["augment"] = False  # absent when on, so that earlier checkpoints still resume
        elif self.strong_labeled:
            s["label_view"] = "strong"  # absent for the weak view, as above
        if self.augment and self.min_scale != CROP_MIN_SCALE:
            s["crop_min_scale"] = self.min_scale  # absent at the default, as above
        return s

    def set_teacher(self, ema_model: nn.Module | None) -> None:
        """With cfg.ema_teacher, the EMA model's weak-view predictions become the targets."""
        self.teacher = ema_model if self.cfg.ema_teacher and self.unlabeled is not None else None

    def state_dict(self) -> dict:
        """The consistency part's running statistics (adaptive thresholds, alignment), for exact resume."""
        return {"adaptive": self.adaptive.state_dict() if self.adaptive else None,
                "align": self.align.state_dict() if self.align else None}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        if self.adaptive is not None and state.get("adaptive"):
            self.adaptive.load_state_dict(state["adaptive"])
        if self.align is not None and state.get("align"):
            self.align.load_state_dict(state["align"])

    def to_device(self, device: torch.device) -> None:
        """Copy the caches (labeled, validation, unlabeled) to the training device."""
        self._train = self.train.to(device)
        self._val = self.val.to(device) if self.val is not None and len(self.val) else None
        self._unl = self.unlabeled.to(device) if self.unlabeled is not None else None
        self._truth = self.truth.to(device) if self.truth is not None else None

    def release(self) -> None:
        """Drop the device copies once training ends."""
        self._train = self._val = self._unl = self._truth = None

    def start_epoch(self, steps: int, batch: int, generator: torch.Generator) -> None:
        """A new order of the labeled (and unlabeled) images for this epoch."""
        self.perm = torch.randperm(len(self.train), generator=generator)
        self.ubatch = self.mu * batch
        self.uorder = (unlabeled_order(len(self._unl), steps * self.ubatch, generator)
                       if self._unl is not None else None)

    def next_batch(self, i: int, batch: int, generator: torch.Generator):
        """Step i's augmented labeled batch and labels (and weak + strong unlabeled views with consistency on)."""
        train = self._train
        idx = self.perm[i * batch:(i + 1) * batch].to(train.images.device, non_blocking=True)
        if self.augment and self.strong_labeled:
            x = strong_augment(train.images[idx], self.size, generator, self.min_scale)
        elif self.augment:
            x, _ = weak_augment(train.images[idx], None, self.size, generator, self.min_scale)
        else:  # the plain image at the training size: the "no augmentation" baseline
            x = normalize(center_resize(train.images[idx], None, self.size)[0])
        y = train.labels[idx]
        if self._unl is None:
            return x, y, None
        ub = self.ubatch
        uidx = self.uorder[i * ub:(i + 1) * ub].to(train.images.device, non_blocking=True)
        uimg = self._unl.images[uidx]
        if self.cfg.weak_view == "flip_translate":
            xw = paper_weak_augment(uimg, self.size, generator)
        else:
            xw, _ = weak_augment(uimg, None, self.size, generator, self.min_scale)
        xs = strong_augment(uimg, self.size, generator, self.min_scale)
        return x, y, (xw, xs, uidx)

    def step_loss(self, model: nn.Module, data, channels_last: bool) -> tuple[Tensor, Tensor]:
        """Cross-entropy on the labeled batch plus the weighted consistency loss; returns (loss, summed stats)."""
        x, y, unl = data
        batch = x.shape[0]
        if unl is not None:
            xw, xs, uidx = unl
            with torch.no_grad():
                logits_weak = (self.teacher or model)(to_layout(xw, channels_last))
            # one forward pass for the labeled and the strong views: BatchNorm sees both
            logits = model(to_layout(torch.cat([x, xs]), channels_last)).float()
            lx, lu = logits[:batch], logits[batch:]
            loss_x = F.cross_entropy(lx, y, label_smoothing=self.smoothing)
            probs_weak = logits_weak.detach().float().softmax(dim=1)
            if self.align is not None:
                probs_weak = self.align(probs_weak)
            threshold = self.adaptive.update(probs_weak) if self.adaptive is not None else self.threshold
            loss_u, mask, pseudo = consistency_loss(probs_weak, lu, threshold)
            loss = loss_x + self.unlabeled_weight * loss_u
        else:
            lx = model(to_layout(x, channels_last)).float()
            loss_x = loss = F.cross_entropy(lx, y, label_smoothing=self.smoothing)
        with torch.no_grad():
            stats = torch.zeros(self.num_stats, device=x.device)
            stats[0] = loss_x.detach() * batch
            stats[1] = (lx.argmax(dim=1) == y).sum()
            if unl is not None:
                stats[2] = mask.sum()
                stats[3] = loss_u.detach() * xs.shape[0]
                truth = self._truth[uidx] if self._truth is not None else self._unl.labels[uidx]
                known = (truth >= 0).float() * mask
                stats[4] = ((pseudo == truth).float() * known).sum()
                stats[5] = known.sum()
        return loss, stats

    def train_record(self, stats: list[float], seen: int, steps: int, batch: int) -> dict:
        """The epoch's loss and accuracy (with unlabeled images: mask rate, their loss, pseudo-label accuracy)."""
        record = {"train_loss": stats[0] / seen, "train_acc": stats[1] / seen}
        if self._unl is not None:
            n_u = steps * self.mu * batch
            record.update(mask_rate=stats[2] / n_u, unlabeled_loss=stats[3] / n_u,
                          pseudo_acc=stats[4] / stats[5] if stats[5] > 0 else float("nan"),
                          threshold=(float(self.adaptive.thresholds().mean()) if self.adaptive is not None
                                     else float(self.threshold)))
        return record

    def postfix(self, stats: list[float], seen: int) -> dict:
        """Running loss and accuracy for the progress bar."""
        return {"loss": f"{stats[0] / seen:.3f}", "acc": f"{stats[1] / seen:.3f}"}

    def validate(self, model: nn.Module) -> dict:
        """Validation loss and accuracy (NaN without validation images)."""
        if self._val is None:
            return {"val_loss": float("nan"), "val_acc": float("nan")}
        ev = evaluate(model, self._val, self.cfg, progress=False)
        return {"val_loss": ev["loss"], "val_acc": ev["accuracy"]}


def fit(
    model: nn.Module,
    train: CachedImages,
    val: CachedImages | None,
    cfg: Config,
    *,
    run_name: str,
    epochs: int | None = None,
    unlabeled: CachedImages | None = None,
    unlabeled_weight: float = 1.0,
    threshold: float | str | None = None,
    mu: int | None = None,
    unlabeled_truth: Tensor | None = None,
    augment: bool = True,
    spec: dict | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train a classifier on the cache (optionally FixMatch on `unlabeled`), checkpointed and resumable.

    unlabeled: when given, each step also takes mu x batch unlabeled images (default
      cfg.unlabeled_ratio); confident predictions on their weak view supervise their strong view
      with weight `unlabeled_weight` (helpers.consistency). threshold: a probability, or
      "adaptive" for FreeMatch's per-class thresholds (default cfg.consistency_threshold).
    unlabeled_truth: the unlabeled images' true classes where known (the demo), only to measure the
      accuracy of the online pseudo-labels (history "pseudo_acc"); never used for training.
    augment: False trains on the plain resized images (to measure what augmentation buys).
    spec: the model_spec stored in the checkpoint (default: `model.spec` if the model has one).
    resume: continue from the run's checkpoint files in cfg.run_dir (helpers.engine: `{run_name}.pt`,
      `{run_name}.resume.pt`) if they exist (same settings required); a finished run is returned
      without training.
    The passed model is trained in place and finally holds the best weights (EMA weights if EMA is on).
    """
    spec = spec_of(model, spec)
    if len(train) == 0:
        raise ValueError("fit: the training set is empty")
    if bool((train.labels < 0).any()):
        raise ValueError("fit: the training set holds images without a label (-1); pass only labeled "
                         "(or pseudo-labeled) images as `train` and the rest as `unlabeled`")
    if spec is not None and int(train.labels.max()) >= int(spec["num_classes"]):
        raise ValueError(f"fit: labels go up to {int(train.labels.max())} but the model has "
                         f"{spec['num_classes']} classes")
    use_unlabeled = unlabeled is not None and len(unlabeled) > 0
    if use_unlabeled:
        threshold = parse_threshold(cfg.consistency_threshold if threshold is None else threshold)
        mu = int(cfg.unlabeled_ratio if mu is None else mu)
        if mu < 1:
            raise ValueError(f"mu (unlabeled batches per labeled batch, cfg.unlabeled_ratio) must be >= 1, got {mu}")
        if cfg.weak_view not in WEAK_VIEWS:
            raise ValueError(f"unknown weak view {cfg.weak_view!r} (cfg.weak_view / IMSUB_WEAK_VIEW); "
                             f"choose one of {', '.join(WEAK_VIEWS)}")
        if cfg.ema_teacher and cfg.ema_decay <= 0:
            raise ValueError("cfg.ema_teacher needs the weight EMA: set ema_decay > 0 (IMSUB_EMA_DECAY)")
        if unlabeled_truth is not None and len(unlabeled_truth) != len(unlabeled):
            raise ValueError(f"unlabeled_truth has {len(unlabeled_truth)} labels for {len(unlabeled)} unlabeled images")
    num_classes = int(spec["num_classes"]) if spec is not None else None
    task = ClassificationTask(train, val, cfg, unlabeled if use_unlabeled else None, unlabeled_weight,
                              threshold, mu or 1, augment, unlabeled_truth if use_unlabeled else None, num_classes)
    return fit_task(model, task, cfg, run_name=run_name, epochs=cfg.epochs if epochs is None else epochs,
                    spec=spec, resume=resume, progress=progress)




@torch.no_grad()
def extract_features(model: nn.Module, images: CachedImages | Tensor, cfg: Config, *,
                     batch_size: int | None = None) -> Tensor:
    """Penultimate-layer features [N, D] (CPU float32) of a torchvision ResNet: the input of its `fc` layer."""
    if not isinstance(getattr(model, "fc", None), nn.Linear):
        raise TypeError(f"extract_features: expected a torchvision ResNet classifier (with .fc), "
                        f"got {type(model).__name__}")
    captured: list[Tensor] = []
    hook = model.fc.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0].float().cpu()))
    try:
        predict_proba(model, images, cfg, tta=False, batch_size=batch_size, progress=False)
    finally:
        hook.remove()
    return torch.cat(captured) if captured else torch.zeros(0, model.fc.in_features)
