"""Experiment tracking: every training run's per-epoch history beside its checkpoint, for comparing runs.

The engine writes `<run_dir>/<run>.history.csv` after every epoch (losses, accuracy or mIoU,
learning rate, images/s, seconds: whatever the task records), TensorBoard event files under
`<run_dir>/tensorboard/<run>/` when the `tensorboard` package is installed (cfg.tensorboard
"auto"; "off" turns them off), and logs to Weights & Biases only when cfg.wandb_project names a
project (wandb is never imported otherwise). `python -m helpers compare [RUN_DIR ...]` prints one
line per training run; `compare_runs` and `plot_runs` do the same in a notebook cell.
"""
from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoints import HISTORY_SUFFIX, save_log_rows

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

_ORDER = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_miou", "lr", "images_per_s", "seconds")


def history_path(run_dir: str | os.PathLike, run_name: str) -> Path:
    """Where a run's per-epoch history goes: beside its checkpoint."""
    return Path(run_dir) / f"{run_name}{HISTORY_SUFFIX}"


def write_history(path: Path, history: Sequence[dict]) -> None:
    """The whole history as CSV (a header of every key seen; usual keys first), written to a temporary name and renamed."""
    keys = [k for k in _ORDER if any(k in h for h in history)]
    keys += sorted({k for h in history for k in h} - set(keys))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    for record in history:
        writer.writerow({k: _plain(record.get(k, "")) for k in keys})
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, path)


def _plain(value):
    return round(value, 6) if isinstance(value, float) and math.isfinite(value) else value


def read_history(path: str | os.PathLike) -> list[dict]:
    """A history CSV back as a list of dicts with numbers as floats (or ints for whole values)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            rows.append({k: _number(v) for k, v in row.items()})
    return rows


def _number(text: str):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


class Tracker:
    """Per-epoch logging of one training run: the CSV always, TensorBoard and W&B when configured."""

    def __init__(self, cfg, run_name: str, settings: dict | None = None, start_epoch: int = 0, tag: str = ""):
        self.path = history_path(cfg.run_dir, run_name)
        self.writer = self.wandb_run = None
        mode = str(getattr(cfg, "tensorboard", "auto")).lower()
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"tensorboard {mode!r} (cfg.tensorboard / IMSUB_TENSORBOARD): use auto, on or off")
        if mode != "off":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed
                if mode == "on":
                    raise ImportError("cfg.tensorboard is 'on' but tensorboard is not installed: "
                                      "pip install tensorboard (or -e '.[tensorboard]')") from None
            else:
                # purge_step drops the events a killed run wrote after its last checkpoint
                self.writer = SummaryWriter(str(Path(cfg.run_dir) / "tensorboard" / run_name),
                                            purge_step=start_epoch + 1 if start_epoch else None)
        project = getattr(cfg, "wandb_project", "")
        if project:
            import wandb  # only here: W&B is used when the user names a project

            self.wandb_run = wandb.init(project=project, name=run_name, config=settings or {}, resume="allow",
                                        # one W&B run per training (tag: helpers.engine.training_tag), resumed
                                        id=f"{Path(cfg.run_dir).name}-{run_name}{'-' + tag if tag else ''}".replace("/", "-"),
                                        reinit=True)

    def log(self, history: Sequence[dict]) -> None:
        """After an epoch: rewrite the CSV; send the newest record to TensorBoard / W&B."""
        write_history(self.path, history)
        record = history[-1]
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "epoch"
                   and math.isfinite(v)}
        if self.writer is not None:
            for key, value in scalars.items():
                self.writer.add_scalar(key, value, record["epoch"])
            self.writer.flush()
        if self.wandb_run is not None:
            self.wandb_run.log(scalars, step=record["epoch"])

    def close(self) -> None:
        """Close the TensorBoard writer and finish the W&B run."""
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()


def _runs(run_dirs: Sequence[str | os.PathLike]) -> list[tuple[str, Path]]:
    found = []
    for folder in map(Path, run_dirs):
        for path in sorted(folder.glob(f"*{HISTORY_SUFFIX}")):
            label = path.name.removesuffix(HISTORY_SUFFIX)
            found.append((f"{folder.name}/{label}" if len(run_dirs) > 1 else label, path))
    return found


def _checkpoint_mb(run_dirs: Sequence[str | os.PathLike]) -> dict[str, float]:
    """MB of checkpoints each training wrote locally (helpers.checkpoints' log), by the label `_runs` gives it."""
    written: dict[str, float] = {}
    for folder in map(Path, run_dirs):
        for row in save_log_rows(folder):
            label = f"{folder.name}/{row['run']}" if len(run_dirs) > 1 else row["run"]
            written[label] = written.get(label, 0.0) + row["mb_local"]
    return written


def compare_runs(run_dirs: Sequence[str | os.PathLike]) -> str:
    """One line per training run in these run folders: epochs, best score and epoch, time, speed, GPU memory, checkpoint MB."""
    lines = [f"{'run':<40} {'epochs':>6} {'best val':>9} {'at epoch':>8} {'last loss':>9} {'minutes':>7} "
             f"{'img/s':>7} {'GPU GB':>6} {'ckpt MB':>7}"]
    written = _checkpoint_mb(run_dirs)
    for label, path in _runs(run_dirs):
        history = read_history(path)
        if not history:
            continue
        peaks = [h["gpu_peak_gb"] for h in history if isinstance(h.get("gpu_peak_gb"), (int, float))]
        metric = next((k for k in ("val_acc", "val_miou", "knn_acc") if k in history[0]), None)
        scored = [h for h in history if metric and isinstance(h.get(metric), (int, float))
                  and math.isfinite(h[metric])]
        best = max(scored, key=lambda h: h[metric]) if scored else None
        speeds = sorted(h["images_per_s"] for h in history if isinstance(h.get("images_per_s"), (int, float)))
        minutes = sum(h.get("seconds", 0) or 0 for h in history) / 60
        lines.append(f"{label:<40} {len(history):>6} "
                     + (f"{best[metric]:>9.3f} {best['epoch']:>8}" if best else f"{'-':>9} {'-':>8}")
                     + f" {history[-1].get('train_loss', float('nan')):>9.3f} {minutes:>7.1f} "
                     + (f"{speeds[len(speeds) // 2]:>7.0f}" if speeds else f"{'-':>7}")
                     + (f" {max(peaks):>6.1f}" if peaks else f" {'-':>6}")
                     + (f" {written[label]:>7.0f}" if label in written else f" {'-':>7}"))
    if len(lines) == 1:
        lines.append(f"(no *{HISTORY_SUFFIX} in {', '.join(map(str, run_dirs))}: no training has run there yet)")
    return "\n".join(lines)


def plot_runs(run_dirs: Sequence[str | os.PathLike], key: str = "val_acc", ax: plt.Axes | None = None) -> plt.Axes:
    """Plot `key` per epoch for every run in these folders that records it; returns the axes."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(7, 3.5))[1]
    for label, path in _runs(run_dirs):
        history = [h for h in read_history(path) if isinstance(h.get(key), (int, float))]
        if history:
            ax.plot([h["epoch"] for h in history], [h[key] for h in history], label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    return ax
