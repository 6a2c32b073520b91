"""Fast classifier training on the decoded-image cache: on-device batches and augmentation, resumable.

Batches are indexed straight out of the uint8 cache, which is moved to the training device once;
augmentation (helpers.augment) runs batched on that device. There is no DataLoader and no decoding
after the cache is built. Mixed precision and channels_last follow helpers.hardware (on CUDA; on
the CPU only with cfg.cpu_bf16).

Conventions:
- The model's description (helpers.models.model_spec) is taken from `fit(..., spec=...)`, else from
  an attribute `model.spec`; it is stored in the checkpoint so the model can be rebuilt later.
- Checkpoint `cfg.run_dir / f"{run_name}.pt"` is written after every epoch. Its "model" entry is the
  BEST weights so far (EMA weights when EMA is on): what inference and encoder transfer load. The
  state needed to resume (current weights, optimizer, EMA, step, RNG states) is under "train".
- The learning rate is cfg.lr as given (no batch-size scaling), with linear warmup over
  cfg.warmup_epochs and a per-step cosine decay to 0. Weight decay skips biases and norm weights.
- The loop itself (`fit_task`) knows nothing about classification: a `TrainTask` supplies the
  batches, the per-step loss, the validation and the metric that picks the best epoch. `fit` runs it
  with the classification task; helpers.segmentation runs it with a segmentation task.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import center_resize, normalize, strong_augment, weak_augment
from .cache import CachedImages
from .checkpoints import load_checkpoint, save_checkpoint
from .config import Config
from .hardware import autocast, needs_grad_scaler, resolve, to_layout

CHECKPOINT_FORMAT = "helpers.training/1"
_PROGRESS_MIN_IMAGES = 2048  # predict_proba shows a bar from this many images on


# ----------------------------------------------------------------------------- EMA
class EMA:
    """Exponential moving average of a model's weights: float params and buffers averaged, int buffers copied.

    With `warmup`, the decay used at update n is min(decay, (1 + n) / (10 + n)), so that short runs
    (few steps per epoch) are not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = d * ema + (1 - d) * model for float tensors; integer buffers are copied."""
        d = self.current_decay()
        ema_state = self.model.state_dict()
        floats_ema, floats_new = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.is_floating_point():
                floats_ema.append(target)
                floats_new.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Plain-data state (weights_only-safe)."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "model": _cpu_state(self.model)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))


# ----------------------------------------------------------------------------- results
@dataclass
class FitResult:
    """What `fit` returns: per-epoch history, the best epoch and the model holding its weights."""

    history: list[dict]
    best_val_acc: float
    best_epoch: int
    model: nn.Module
    checkpoint: Path
    resumed_from: int = 0  # epochs already done in the checkpoint it resumed from (0: fresh run)
    metric: str = "val_acc"  # the history key that picked the best epoch
    best_value: float = float("nan")  # its value at the best epoch (== best_val_acc for classifiers)


# ----------------------------------------------------------------------------- small helpers
def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a model's state_dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate of a step: linear warmup to base_lr, then cosine decay towards 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return base_lr
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only (not on biases and norm parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: Config, lr: float | None = None) -> torch.optim.Optimizer:
    """SGD (momentum 0.9, Nesterov) or AdamW per cfg.optimizer, at `lr` (default cfg.lr) and cfg.weight_decay."""
    groups = _param_groups(model, cfg.weight_decay)
    lr = float(cfg.lr if lr is None else lr)
    name = cfg.optimizer.lower()
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'sgd' or 'adamw'")


def _fingerprint(data: CachedImages) -> str:
    """Hash of a split's keys and labels (detects a changed training set on resume)."""
    h = hashlib.sha1()
    h.update("\n".join(data.keys).encode())
    h.update(data.labels.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def _spec_of(model: nn.Module, spec: dict | None) -> dict | None:
    spec = spec if spec is not None else getattr(model, "spec", None)
    return dict(spec) if spec is not None else None


# ----------------------------------------------------------------------------- prediction
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
              threshold: float | None, mu: int) -> dict:
    """The run settings a resumed run must share with its checkpoint (epochs may grow)."""
    s = {
        "optimizer": cfg.optimizer, "lr": float(cfg.lr), "weight_decay": float(cfg.weight_decay),
        "batch_size": int(cfg.batch_size), "image_size": int(cfg.image_size),
        "label_smoothing": float(cfg.label_smoothing), "ema_decay": float(cfg.ema_decay),
        "warmup_epochs": int(cfg.warmup_epochs), "grad_clip": float(cfg.grad_clip), "seed": int(cfg.seed),
        "num_train": len(train), "train_fingerprint": _fingerprint(train),
    }
    if unlabeled is not None:
        s.update(num_unlabeled=len(unlabeled), unlabeled_fingerprint=_fingerprint(unlabeled),
                 unlabeled_weight=float(unlabeled_weight), threshold=float(threshold), mu=int(mu))
    return s


def _check_resume(path: Path, ckpt: dict, spec: dict | None, settings: dict) -> None:
    """ValueError naming the file when the checkpoint belongs to another model or run settings."""
    if ckpt.get("format") != CHECKPOINT_FORMAT or "train" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a resumable training checkpoint of helpers.training.fit; "
                         "delete it, pass resume=False, or use another run_name")
    old_spec = ckpt.get("model_spec")
    if spec is not None and old_spec is not None and old_spec != spec:
        diff = sorted(k for k in set(spec) | set(old_spec) if spec.get(k) != old_spec.get(k))
        raise ValueError(f"checkpoint {path} holds another model (model_spec differs in {diff}); "
                         "delete it, pass resume=False, or use another run_name")
    old = ckpt.get("settings", {})
    diff = sorted(k for k in set(settings) | set(old) if settings.get(k) != old.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff if "fingerprint" not in k)
        if any("fingerprint" in k for k in diff):
            shown = (shown + ", " if shown else "") + "the training images or labels changed"
        raise ValueError(f"checkpoint {path} was written with other run settings ({shown}); "
                         "delete it, pass resume=False, or use another run_name")


def _rng_state(generator: torch.Generator, device: torch.device) -> dict:
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(), "cuda": None}
    if device.type == "cuda":
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def _unlabeled_order(n: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` indices into n unlabeled images: concatenated fresh permutations (each image once per pass)."""
    reps = max(1, math.ceil(count / n))
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:count]


# ----------------------------------------------------------------------------- the training loop
class TrainTask:
    """What `fit_task` needs from a training objective: data, per-step loss, validation, best-epoch metric.

    A task holds its datasets. Per epoch, `fit_task` calls `start_epoch` once, then per step
    `next_batch` (timed as data work) and `step_loss` (inside autocast), then `validate` on the
    evaluation model (the EMA model if EMA is on). The best epoch has the highest history value of
    `metric`, ties broken by the lowest `tie_break`; a NaN metric (no validation) counts as best.
    """

    metric: str = "val_acc"
    tie_break: str = "val_loss"
    val_keys: tuple[str, ...] = ("val_loss", "val_acc")  # filled by `validate`, NaN until then
    num_stats: int = 2  # length of the per-step statistics vector `step_loss` returns

    def __len__(self) -> int:
        """Number of training images (one epoch = len // batch steps)."""
        raise NotImplementedError

    def settings(self) -> dict:
        """Plain-data run settings a resumed run must share with its checkpoint."""
        raise NotImplementedError

    def to_device(self, device: torch.device) -> None:
        """Move the data to the training device (called once, only when there are epochs to run)."""
        raise NotImplementedError

    def release(self) -> None:
        """Drop the device copies made by `to_device`."""

    def start_epoch(self, steps: int, batch: int, generator: torch.Generator) -> None:
        """Draw the epoch's sample order from `generator`."""
        raise NotImplementedError

    def next_batch(self, i: int, batch: int, generator: torch.Generator):
        """The augmented inputs and targets of step i, on the device."""
        raise NotImplementedError

    def step_loss(self, model: nn.Module, data, channels_last: bool) -> tuple[Tensor, Tensor]:
        """(loss to backpropagate, detached statistics [num_stats] summed over the batch, on the device)."""
        raise NotImplementedError

    def train_record(self, stats: list[float], seen: int, steps: int, batch: int) -> dict:
        """The epoch's training entries of the history (keys starting with 'train_' come first)."""
        raise NotImplementedError

    def postfix(self, stats: list[float], seen: int) -> dict:
        """Live progress-bar fields from the running statistics."""
        raise NotImplementedError

    def validate(self, model: nn.Module) -> dict:
        """The `val_keys` entries of the epoch (NaN when there is no validation set)."""
        raise NotImplementedError


class ClassificationTask(TrainTask):
    """Supervised cross-entropy on labeled images, plus FixMatch on `unlabeled` when given (what `fit` runs)."""

    num_stats = 6  # loss*n, correct, masked, unlabeled loss*n, pseudo correct, pseudo known

    def __init__(self, train: CachedImages, val: CachedImages | None, cfg: Config,
                 unlabeled: CachedImages | None = None, unlabeled_weight: float = 1.0,
                 threshold: float | None = None, mu: int = 1):
        self.train, self.val, self.unlabeled, self.cfg = train, val, unlabeled, cfg
        self.unlabeled_weight, self.threshold, self.mu = float(unlabeled_weight), threshold, int(mu)
        self.size = int(cfg.image_size)
        self.smoothing = float(cfg.label_smoothing)
        self._train = self._val = self._unl = None

    def __len__(self) -> int:
        return len(self.train)

    def settings(self) -> dict:
        return _settings(self.cfg, self.train, self.unlabeled, self.unlabeled_weight, self.threshold, self.mu)

    def to_device(self, device: torch.device) -> None:
        self._train = self.train.to(device)
        self._val = self.val.to(device) if self.val is not None and len(self.val) else None
        self._unl = self.unlabeled.to(device) if self.unlabeled is not None else None

    def release(self) -> None:
        self._train = self._val = self._unl = None

    def start_epoch(self, steps: int, batch: int, generator: torch.Generator) -> None:
        self.perm = torch.randperm(len(self.train), generator=generator)
        self.ubatch = self.mu * batch
        self.uorder = (_unlabeled_order(len(self._unl), steps * self.ubatch, generator)
                       if self._unl is not None else None)

    def next_batch(self, i: int, batch: int, generator: torch.Generator):
        train = self._train
        idx = self.perm[i * batch:(i + 1) * batch].to(train.images.device, non_blocking=True)
        x, _ = weak_augment(train.images[idx], None, self.size, generator)
        y = train.labels[idx]
        if self._unl is None:
            return x, y, None
        ub = self.ubatch
        uidx = self.uorder[i * ub:(i + 1) * ub].to(train.images.device, non_blocking=True)
        uimg = self._unl.images[uidx]
        xw, _ = weak_augment(uimg, None, self.size, generator)
        xs = strong_augment(uimg, self.size, generator)
        return x, y, (xw, xs, uidx)

    def step_loss(self, model: nn.Module, data, channels_last: bool) -> tuple[Tensor, Tensor]:
        x, y, unl = data
        batch = x.shape[0]
        if unl is not None:
            xw, xs, uidx = unl
            with torch.no_grad():
                pw = model(to_layout(xw, channels_last)).float().softmax(dim=1)
            conf, pseudo = pw.max(dim=1)
            mask = (conf >= self.threshold).float()
            logits = model(to_layout(torch.cat([x, xs]), channels_last)).float()
            lx, lu = logits[:batch], logits[batch:]
            loss_x = F.cross_entropy(lx, y, label_smoothing=self.smoothing)
            loss_u = (F.cross_entropy(lu, pseudo, reduction="none") * mask).mean()
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
                truth = self._unl.labels[uidx]
                known = (truth >= 0).float() * mask
                stats[4] = ((pseudo == truth).float() * known).sum()
                stats[5] = known.sum()
        return loss, stats

    def train_record(self, stats: list[float], seen: int, steps: int, batch: int) -> dict:
        record = {"train_loss": stats[0] / seen, "train_acc": stats[1] / seen}
        if self._unl is not None:
            n_u = steps * self.mu * batch
            record.update(mask_rate=stats[2] / n_u, unlabeled_loss=stats[3] / n_u,
                          pseudo_acc=stats[4] / stats[5] if stats[5] > 0 else float("nan"))
        return record

    def postfix(self, stats: list[float], seen: int) -> dict:
        return {"loss": f"{stats[0] / seen:.3f}", "acc": f"{stats[1] / seen:.3f}"}

    def validate(self, model: nn.Module) -> dict:
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
    threshold: float | None = None,
    mu: int = 1,
    spec: dict | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """Train a classifier on the cache (optionally FixMatch on `unlabeled`), checkpoint every epoch, resume.

    unlabeled: when given, each step also takes mu x batch unlabeled images; confident (max prob >=
      threshold, default cfg.pseudo_threshold) predictions on their weak view supervise their
      strong view with weight `unlabeled_weight`.
    spec: the model_spec stored in the checkpoint (default: `model.spec` if the model has one).
    resume: continue from `cfg.run_dir / f"{run_name}.pt"` if it exists (same settings required);
      a finished run is returned without training.
    The passed model is trained in place and finally holds the best weights (EMA weights if EMA is on).
    """
    spec = _spec_of(model, spec)
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
        threshold = float(cfg.pseudo_threshold if threshold is None else threshold)
        if mu < 1:
            raise ValueError(f"mu (unlabeled batches per labeled batch) must be >= 1, got {mu}")
    task = ClassificationTask(train, val, cfg, unlabeled if use_unlabeled else None, unlabeled_weight,
                              threshold, mu)
    return fit_task(model, task, cfg, run_name=run_name, epochs=cfg.epochs if epochs is None else epochs,
                    spec=spec, resume=resume, progress=progress)


def fit_task(
    model: nn.Module,
    task: TrainTask,
    cfg: Config,
    *,
    run_name: str,
    epochs: int,
    lr: float | None = None,
    spec: dict | None = None,
    resume: bool = True,
    progress: bool = True,
) -> FitResult:
    """The training loop behind `fit`: optimizer, warmup+cosine, AMP, EMA, best epoch, checkpoints, resume.

    lr: the base learning rate (default cfg.lr). Batch size, optimizer, weight decay, warmup,
    grad clipping, EMA and seed come from cfg. See `TrainTask` for what the task supplies.
    """
    epochs = int(epochs)
    device, amp, channels_last = resolve(cfg)
    spec = _spec_of(model, spec)
    base_lr = float(cfg.lr if lr is None else lr)
    settings = task.settings()
    path = Path(cfg.run_dir) / f"{run_name}.pt"

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, lr=base_lr)
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                  enabled=needs_grad_scaler(amp))
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    generator = torch.Generator().manual_seed(int(cfg.seed))

    batch = min(int(cfg.batch_size), len(task))
    steps_per_epoch = max(1, len(task) // batch)  # the incomplete last batch is dropped (BN needs > 1)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs) * steps_per_epoch
    best_key, tie_key = f"best_{task.metric}", f"best_{task.tie_break}"

    history: list[dict] = []
    best = {"value": -math.inf, "tie": math.inf, "epoch": 0, "state": None}
    start_epoch, step = 0, 0
    if resume and path.exists():
        ckpt = load_checkpoint(path, num_classes=spec["num_classes"] if spec else None, map_location="cpu")
        _check_resume(path, ckpt, spec, settings)
        tr = ckpt["train"]
        try:
            model.load_state_dict(tr["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not fit this model ({exc}); "
                             "delete it, pass resume=False, or use another run_name") from exc
        optimizer.load_state_dict(tr["optimizer"])
        if tr.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(tr["scaler"])
        if ema is not None and tr.get("ema") is not None:
            ema.load_state_dict(tr["ema"])
        _set_rng_state(tr["rng"], generator)
        step, start_epoch = int(tr["step"]), int(ckpt["epoch"])
        history = list(ckpt["history"])
        best = {"value": float(ckpt[best_key]), "tie": float(ckpt[tie_key]),
                "epoch": int(ckpt["best_epoch"]), "state": ckpt["model"]}
        if int(ckpt.get("epochs", epochs)) != epochs and start_epoch < epochs:
            warnings.warn(f"{path}: planned for {ckpt.get('epochs')} epochs, continuing to {epochs}; "
                          "the learning-rate schedule changes from here on", stacklevel=3)
        if progress:
            print(f"resuming {path} after epoch {start_epoch}/{epochs}")

    if start_epoch < epochs:
        task.to_device(device)
        bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, desc=run_name, unit="step",
                   disable=not progress, dynamic_ncols=True)
        try:
            last_save = time.perf_counter()
            for epoch in range(start_epoch, epochs):
                record, step, stats, seen = _train_epoch(
                    model, optimizer, scaler, ema, task, device, amp, channels_last, float(cfg.grad_clip),
                    generator, batch, steps_per_epoch, step, total_steps, warmup_steps, base_lr, bar,
                    epoch, epochs)
                eval_model = ema.model if ema is not None else model
                t0 = time.perf_counter()
                record.update(task.validate(eval_model))
                record["seconds"] += time.perf_counter() - t0
                history.append(record)
                value, tie = record[task.metric], record[task.tie_break]
                if math.isnan(value):
                    improved = True  # no validation: the latest epoch is the best
                else:
                    improved = value > best["value"] or (value == best["value"] and tie <= best["tie"])
                if improved:
                    best = {"value": value, "tie": tie, "epoch": epoch + 1, "state": _cpu_state(eval_model)}
                bar.set_postfix(ep=f"{epoch + 1}/{epochs}", **task.postfix(stats, seen),
                                val=f"{value:.3f}", refresh=True)
                # Every epoch by default; cfg.checkpoint_seconds > 0 saves at most that often (and
                # always after the last epoch), for runs whose epochs take less time than the save.
                due = time.perf_counter() - last_save >= cfg.checkpoint_seconds or epoch + 1 == epochs
                if not due:
                    continue
                last_save = time.perf_counter()
                save_checkpoint(path, {
                    "format": CHECKPOINT_FORMAT, "run_name": run_name, "model_spec": spec,
                    "settings": settings, "epoch": epoch + 1, "epochs": epochs, "history": history,
                    best_key: best["value"], tie_key: best["tie"], "best_epoch": best["epoch"],
                    "model": best["state"],
                    "train": {"model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                              "scaler": scaler.state_dict(), "ema": ema.state_dict() if ema else None,
                              "step": step, "rng": _rng_state(generator, device)},
                })
        finally:
            bar.close()
            task.release()

    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    best_value = best["value"] if best["value"] > -math.inf else float("nan")
    return FitResult(history=history, best_val_acc=best_value if task.metric == "val_acc" else float("nan"),
                     best_epoch=best["epoch"], model=model, checkpoint=path,
                     resumed_from=start_epoch if resume and start_epoch else 0,
                     metric=task.metric, best_value=best_value)


def _train_epoch(model, optimizer, scaler, ema, task, device, amp, channels_last, grad_clip, generator,
                 batch, steps, step, total_steps, warmup_steps, base_lr, bar, epoch,
                 epochs) -> tuple[dict, int, list[float], int]:
    """One epoch of steps; returns (history record without validation, new step, summed stats, images seen)."""
    model.train()
    task.start_epoch(steps, batch, generator)
    sums = torch.zeros(task.num_stats, device=device)
    seen = 0
    data_time = total_time = 0.0
    cuda_events = []
    t_epoch = time.perf_counter()
    lr = optimizer.param_groups[0]["lr"]
    for i in range(steps):
        # --- data: index the on-device cache, augment on the device
        if device.type == "cuda":
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
            ev[0].record()
        else:
            t0 = time.perf_counter()
        data = task.next_batch(i, batch, generator)
        if device.type == "cuda":
            ev[1].record()
        else:
            t1 = time.perf_counter()
        # --- compute: forward, backward, optimizer
        lr = lr_at(step, total_steps, warmup_steps, base_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with autocast(device, amp):
            loss, stats = task.step_loss(model, data, channels_last)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip and grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if ema is not None:
            ema.update(model)
        step += 1
        # --- bookkeeping (on the device; no sync)
        sums += stats
        seen += batch
        if device.type == "cuda":
            ev[2].record()
            cuda_events.append(ev)
        else:
            t2 = time.perf_counter()
            data_time += t1 - t0
            total_time += t2 - t0
        if bar is not None:
            if device.type != "cuda" or (i + 1) % 10 == 0 or i + 1 == steps:
                bar.set_postfix(ep=f"{epoch + 1}/{epochs}", **task.postfix(sums.tolist(), seen), refresh=False)
            bar.update(1)
    _sync(device)
    train_seconds = time.perf_counter() - t_epoch
    if cuda_events:
        # CUDA events time the device's own timeline without a sync per step
        data_time = sum(e[0].elapsed_time(e[1]) for e in cuda_events) / 1000
        total_time = sum(e[0].elapsed_time(e[2]) for e in cuda_events) / 1000
    s = sums.tolist()
    fields = task.train_record(s, seen, steps, batch)
    record = {"epoch": epoch + 1}
    record.update({k: v for k, v in fields.items() if k.startswith("train_")})
    record.update({k: float("nan") for k in task.val_keys})
    record.update({
        "lr": float(lr),
        "seconds": train_seconds,
        "images_per_s": seen / train_seconds if train_seconds > 0 else float("nan"),
        "data_share": data_time / total_time if total_time > 0 else float("nan"),
    })
    record.update({k: v for k, v in fields.items() if not k.startswith("train_")})
    return record, step, s, seen
