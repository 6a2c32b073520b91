"""The training engine: one loop for every model, resumable, fast on the decoded-image cache.

`fit_task(model, task, cfg, run_name=...)` runs any `TrainTask` (helpers.classification's classifier,
helpers.segmentation's U-Net): AdamW or SGD, linear warmup then per-step cosine decay, mixed
precision and channels_last as helpers.hardware decides, gradient clipping, an optional weight EMA
(helpers.ema), validation after every epoch, the kept weights (the best epoch's, or the last's with
cfg.select_best_epoch off, as in every preset), checkpoints and exact resume.

Conventions:
- The model's description (helpers.models.model_spec) is taken from `spec=`, else from an attribute
  `model.spec`; it is stored in the checkpoint so the model can be rebuilt later.
- Two checkpoint files in cfg.run_dir (helpers.checkpoints.TrainingFiles), written atomically at most
  every cfg.checkpoint_seconds (0: after every epoch) and always after the last epoch, and copied to
  cfg.mirror_dir when it is set: `{run_name}.pt` holds the BEST weights so far (EMA weights when EMA
  is on) under "model", what inference and encoder transfer load, and is rewritten only when the best
  improved and no longer the latest epoch (the state holds that one); `{run_name}.resume.pt` holds
  what resuming needs (current weights, optimizer, GradScaler, EMA, step, RNG states) under "train",
  without the optimizer after the last epoch. Both carry the history and the best epoch.
- A training is its settings (the task's, plus the digest of transferred starting weights), its
  model_spec and its planned epochs. A checkpoint of the same training resumes; one of another
  (a changed setting, an exercise) is set aside as `{run_name}@<tag>.*`, never overwritten, and
  taken back without training when those settings return.
- The learning rate is the given lr (no batch-size scaling). Weight decay skips biases and norm weights.
- Batches come from the task, which indexes its uint8 cache on the training device and augments
  there (helpers.augment): no DataLoader, no decoding after the cache is built.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .cache import CachedImages
from .checkpoints import STATE_SUFFIX, SaveStats, TrainingFiles
from .config import Config
from .ema import EMA, cpu_state
from .hardware import autocast, needs_grad_scaler, resolve
from .progress import report as progress_report
from .tracking import Tracker

CHECKPOINT_FORMAT = "helpers.training/1"


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
    resume_file: Path | None = None  # the resume state next to `checkpoint`
    checkpoint_stats: SaveStats | None = None  # saves, bytes and seconds spent checkpointing in this call



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
        # One fused kernel per step where torch has it (CPU, CUDA): the same update as the per-tensor
        # loop, 5.4x faster on 2 CPU threads for resnet18 (benchmarks/optimizer_step.py, docs/speed.md).
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), fused=fused or None)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'sgd' or 'adamw'")


def data_fingerprint(data: CachedImages) -> str:
    """Hash of a split's keys and labels (detects a changed training set on resume)."""
    h = hashlib.sha1()
    h.update("\n".join(data.keys).encode())
    h.update(data.labels.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def spec_of(model: nn.Module, spec: dict | None) -> dict | None:
    """The model_spec to store: `spec` if given, else `model.spec`, else None."""
    spec = spec if spec is not None else getattr(model, "spec", None)
    return dict(spec) if spec is not None else None


def _start_over(path: Path) -> str:
    """The advice of a refused resume: which files to delete, or how to train anew without deleting."""
    run = path.name.removesuffix(STATE_SUFFIX).removesuffix(".pt")
    return (f"delete {run}.pt and {run}{STATE_SUFFIX} in {path.parent}, pass resume=False, "
            "or use another run_name")


START_KEY = "start_weights"  # settings entry: the digest of the weights a model started from (model.start_digest)


def training_tag(settings: dict, spec: dict | None, epochs: int) -> str:
    """A short name for one training's identity (settings, model, planned epochs): `<run>@<tag>` keeps it aside."""
    blob = json.dumps({"settings": settings, "spec": spec, "epochs": int(epochs)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def _changes(path: Path, ckpt: dict, spec: dict | None, settings: dict, epochs: int) -> list[str]:
    """What differs between a checkpoint's training and this call's (empty: the same one, which resumes).

    ValueError naming the file when it is not a resumable checkpoint of this engine at all.
    """
    if ckpt.get("format") != CHECKPOINT_FORMAT or "train" not in ckpt:
        raise ValueError(f"checkpoint {path} is not a resumable training checkpoint of helpers.engine.fit_task; "
                         + _start_over(path))
    changes = []
    old_spec = ckpt.get("model_spec")
    if spec is not None and old_spec is not None and old_spec != spec:
        changes.append("the model (" + ", ".join(sorted(k for k in set(spec) | set(old_spec)
                                                       if spec.get(k) != old_spec.get(k))) + ")")
    old, new = dict(ckpt.get("settings", {})), dict(settings)
    if START_KEY not in old:
        new.pop(START_KEY, None)  # written before starting weights were recorded: not compared
    diff = sorted(k for k in set(new) | set(old) if new.get(k) != old.get(k))
    changes += [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in diff if "fingerprint" not in k and k != START_KEY]
    if any("fingerprint" in k for k in diff):
        changes.append("the training images or labels")
    if START_KEY in diff:
        changes.append("the starting weights")
    if int(ckpt.get("epochs", epochs)) != epochs:
        changes.append(f"epochs: {ckpt.get('epochs')} -> {epochs}")
    return changes


def _same_training(found: tuple[dict, Path], files: TrainingFiles, spec: dict | None, settings: dict,
                   epochs: int, tag: str, num_classes: int | None) -> tuple[dict, Path] | None:
    """The state to resume: the one found if it is this training; else it is set aside as `<run>@<tag>`
    and a training with exactly these settings set aside earlier is taken back (None: train anew)."""
    ckpt, path = found
    changes = _changes(path, ckpt, spec, settings, epochs)
    if not changes:
        return found
    kept = files.set_aside(training_tag(ckpt.get("settings", {}), ckpt.get("model_spec"),
                                        int(ckpt.get("epochs", epochs))))
    print(f"{files.weights.stem}: changed since its checkpoint: {'; '.join(changes)}. The earlier training "
          f"is kept as {kept}.* in {files.weights.parent}")
    if not files.take_back(tag):
        return None
    found = files.load_state(num_classes)
    if found is not None:
        ckpt, path = found
        if _changes(path, ckpt, spec, settings, epochs):
            raise ValueError(f"checkpoint {path}, taken back for these settings, holds other ones; "
                             + _start_over(path))
        print(f"{files.weights.stem}: these settings were trained before: taken back")
    return found


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



def _no_best() -> dict:
    return {"value": -math.inf, "tie": math.inf, "epoch": 0, "state": None}


def _head(run_name: str, spec: dict | None, settings: dict, epoch: int, epochs: int, history: list[dict],
          best: dict, best_key: str, tie_key: str) -> dict:
    """The entries both checkpoint files carry."""
    return {"format": CHECKPOINT_FORMAT, "run_name": run_name, "model_spec": spec, "settings": settings,
            "epoch": epoch, "epochs": epochs, "history": history, best_key: best["value"],
            tie_key: best["tie"], "best_epoch": best["epoch"]}


def _resumed_best(ckpt: dict, path: Path, files: TrainingFiles, best_key: str, tie_key: str,
                  num_classes: int | None, eval_state) -> tuple[dict, bool]:
    """The best epoch a resumed run continues from, and whether its weights file must be (re)written.

    eval_state(): the restored evaluation model's weights (EMA or raw), the best ones when the best
    epoch is the state's own epoch.
    """
    best = {"value": float(ckpt[best_key]), "tie": float(ckpt[tie_key]), "epoch": int(ckpt["best_epoch"]),
            "state": ckpt.get("model")}
    if best["state"] is not None:  # the older one-file format: rewrite it as two files at the next save
        return best, True
    weights = files.load_weights(num_classes)
    saved_epoch = int(weights.get("best_epoch", -1)) if weights is not None and best_key in weights else -1
    if saved_epoch == best["epoch"]:
        return {**best, "state": weights["model"]}, False
    if saved_epoch > int(ckpt["epoch"]):
        # Killed between writing the weights and the state: these weights come from an epoch the
        # resumed run trains again. Kept as the best so far (an identical run re-finds them).
        return {"value": float(weights[best_key]), "tie": float(weights[tie_key]), "epoch": saved_epoch,
                "state": weights["model"]}, False
    if best["epoch"] == int(ckpt["epoch"]):  # saved while the best was the latest epoch: the state holds it
        return {**best, "state": eval_state()}, True
    warnings.warn(f"{files.weights} does not hold the best weights (epoch {best['epoch']}) that {path} "
                  "records; the best epoch is chosen again among the epochs still to train", stacklevel=3)
    return _no_best(), False


def _finished(found: tuple[dict, Path], files: TrainingFiles, tag: str,
              num_classes: int | None) -> tuple[dict, Path] | None:
    """A finished training's state (no tensors), if its weights file holds the best epoch it records; else None.

    A take-back killed after its first rename left the state in place and the weights still set
    aside as `<run>@<tag>.pt`: the take-back is completed first.
    """
    ckpt, path = found
    if not files.weights.is_file():
        files.take_back(tag)
    weights = files.load_weights(num_classes)
    if weights is not None and int(weights.get("best_epoch", -1)) == int(ckpt["best_epoch"]):
        return found
    warnings.warn(f"{path} records a finished training whose weights {files.weights} are missing or not its "
                  "best epoch's; it trains anew", stacklevel=3)
    return None


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

    def set_teacher(self, ema_model: nn.Module | None) -> None:
        """Called once before training with the weight EMA's model (None without EMA); tasks may use it."""

    def state_dict(self) -> dict:
        """The task's own running state (e.g. adaptive thresholds), saved in checkpoints for exact resume."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned."""

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
    """The training loop: optimizer, warmup+cosine, AMP, EMA, best epoch, checkpoints, resume.

    lr: the base learning rate (default cfg.lr). Batch size, optimizer, weight decay, warmup,
    grad clipping, EMA and seed come from cfg. See `TrainTask` for what the task supplies.
    """
    epochs = int(epochs)
    device, amp, channels_last = resolve(cfg)
    spec = spec_of(model, spec)
    base_lr = float(cfg.lr if lr is None else lr)
    settings = dict(task.settings())
    if getattr(model, "start_digest", None):  # started from transferred weights (helpers.transfer)
        settings[START_KEY] = model.start_digest
    if not cfg.select_best_epoch:
        settings["select_best_epoch"] = False  # absent when on, so that earlier checkpoints still resume
    tag = training_tag(settings, spec, epochs)  # this training's name among those set aside (`<run>@<tag>`)
    files = TrainingFiles(cfg.run_dir, run_name, every_seconds=cfg.checkpoint_seconds,
                          mirror_dir=cfg.mirror_dir)

    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg, lr=base_lr)
    scaler = torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu",
                                  enabled=needs_grad_scaler(amp))
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    task.set_teacher(ema.model if ema is not None else None)
    generator = torch.Generator().manual_seed(int(cfg.seed))

    batch = min(int(cfg.batch_size), len(task))
    steps_per_epoch = max(1, len(task) // batch)  # the incomplete last batch is dropped (BN needs > 1)
    total_steps = epochs * steps_per_epoch
    warmup_steps = int(cfg.warmup_epochs) * steps_per_epoch
    best_key, tie_key = f"best_{task.metric}", f"best_{task.tie_break}"

    history: list[dict] = []
    best = _no_best()
    best_dirty = False  # the best changed since the weights file was written
    start_epoch, step = 0, 0
    num_classes = spec["num_classes"] if spec else None
    found = files.load_state(num_classes) if resume else None
    if found is not None:
        found = _same_training(found, files, spec, settings, epochs, tag, num_classes)
    if found is not None and found[0].get("train") is None:
        found = _finished(found, files, tag, num_classes)
    if found is not None and found[0].get("train") is None:  # finished: the record and the best weights
        ckpt, path = found
        start_epoch, history = int(ckpt["epoch"]), list(ckpt["history"])
        best, best_dirty = _resumed_best(ckpt, path, files, best_key, tie_key, num_classes, None)
        if progress:
            print(f"{path}: finished after {start_epoch}/{epochs} epochs, best epoch {best['epoch']}")
    elif found is not None:
        ckpt, path = found
        tr = ckpt["train"]
        try:
            model.load_state_dict(tr["model"])
        except RuntimeError as exc:
            raise ValueError(f"checkpoint {path} does not fit this model ({exc}); "
                             + _start_over(path)) from exc
        if tr.get("optimizer") is not None:  # a finished run's state leaves it out (see the save below)
            optimizer.load_state_dict(tr["optimizer"])
        if tr.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(tr["scaler"])
        if ema is not None and tr.get("ema") is not None:
            ema.load_state_dict(tr["ema"])
        task.load_state_dict(tr.get("task") or {})
        _set_rng_state(tr["rng"], generator)
        step, start_epoch = int(tr["step"]), int(ckpt["epoch"])
        history = list(ckpt["history"])
        best, best_dirty = _resumed_best(ckpt, path, files, best_key, tie_key, num_classes,
                                         lambda: cpu_state(ema.model if ema is not None else model))
        if progress:
            print(f"resuming {path} after epoch {start_epoch}/{epochs}")

    if start_epoch < epochs:
        task.to_device(device)
        tracker = Tracker(cfg, run_name, settings, start_epoch, tag=tag)  # <run>.history.csv, TensorBoard, W&B
        bar = tqdm(total=(epochs - start_epoch) * steps_per_epoch, desc=run_name, unit="step",
                   disable=not progress, dynamic_ncols=True)
        try:
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
                tracker.log(history)
                value, tie = record[task.metric], record[task.tie_break]
                if math.isnan(value) or not cfg.select_best_epoch:
                    improved = True  # no validation, or a fixed schedule: the latest epoch is kept
                else:
                    improved = value > best["value"] or (value == best["value"] and tie <= best["tie"])
                if improved:
                    best = {"value": value, "tie": tie, "epoch": epoch + 1, "state": cpu_state(eval_model)}
                    best_dirty = True
                shown = {"val": f"{value:.3f}"} if task.metric.startswith("val") else {}
                if not shown and math.isfinite(record.get("knn_acc", math.nan)):
                    shown = {"knn": f"{record['knn_acc']:.3f}"}  # pretraining: no validation metric
                bar.set_postfix(ep=f"{epoch + 1}/{epochs}", **task.postfix(stats, seen), **shown, refresh=True)
                trained = history[start_epoch:]  # this call's epochs time what is left (a resume skips the rest)
                per_epoch = sum(h["seconds"] for h in trained) / len(trained)
                progress_report(run=run_name, epoch=epoch + 1, epochs=epochs, loss=record.get("train_loss"),
                                val=value if task.metric.startswith("val") else None, knn=record.get("knn_acc"),
                                seconds_left=per_epoch * (epochs - epoch - 1))
                last = epoch + 1 == epochs
                if not files.due(last_epoch=last):
                    continue
                # While the best epoch is the one just trained, its weights are the evaluation model's,
                # which the state holds: the weights file waits for a save where the best is older, or
                # the last one (a resumed run takes them from the state; see _resumed_best).
                held = best["epoch"] == epoch + 1 and not last
                head = _head(run_name, spec, settings, epoch + 1, epochs, history, best, best_key, tie_key)
                # A finished training resumes nothing: its state keeps the record alone ("train": None), the
                # weights file the result; the model, EMA and optimizer moments (3-4 model copies) are not written.
                files.save({**head, "train": None if last else {
                    "model": cpu_state(model), "optimizer": optimizer.state_dict(),
                    "task": task.state_dict(), "scaler": scaler.state_dict(),
                    "ema": ema.state_dict() if ema else None, "step": step, "rng": _rng_state(generator, device)}},
                    weights={**head, "model": best["state"]} if best_dirty and not held else None)
                best_dirty = best_dirty and held
        finally:
            bar.close()
            tracker.close()
            task.release()
            files.log()  # run_dir/checkpoint_log.csv: saves and bytes of this call, also when interrupted

    if best["state"] is None and history:
        # a finished run whose best weights were lost: its final (EMA) weights stand in for them
        eval_model = ema.model if ema is not None else model
        best = {"value": history[-1][task.metric], "tie": history[-1][task.tie_break],
                "epoch": len(history), "state": cpu_state(eval_model)}
        files.save_weights({**_head(run_name, spec, settings, len(history), epochs, history, best,
                                    best_key, tie_key), "model": best["state"]})
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    best_value = best["value"] if best["value"] > -math.inf else float("nan")
    return FitResult(history=history, best_val_acc=best_value if task.metric == "val_acc" else float("nan"),
                     best_epoch=best["epoch"], model=model, checkpoint=files.weights,
                     resumed_from=start_epoch if resume and start_epoch else 0,
                     metric=task.metric, best_value=best_value, resume_file=files.state,
                     checkpoint_stats=files.stats)


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
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
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
    if device.type == "cuda":  # what the epoch's training needed at its peak (what a smaller GPU must hold)
        record["gpu_peak_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    record.update({k: v for k, v in fields.items() if not k.startswith("train_")})
    return record, step, s, seen
