"""Pseudo-labels: pick confident predictions on unlabeled images, cap them per class, measure their quality."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .cache import CachedImages


def _check_probs(probs: Tensor) -> None:
    if not isinstance(probs, Tensor) or probs.ndim != 2:
        shape = tuple(probs.shape) if isinstance(probs, Tensor) else type(probs).__name__
        raise ValueError(f"probs must be an [N, C] tensor of class probabilities, got {shape}")


def select_pseudo_labels(
    probs: Tensor, threshold: float, max_per_class: int | None = None
) -> tuple[Tensor, Tensor]:
    """Keep argmax where max prob >= threshold, at most max_per_class most confident per class; (sorted indices, labels)."""
    _check_probs(probs)
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(
            f"max_per_class must be >= 1 or None (no cap), got {max_per_class}; "
            "for the config's 0 ('derived') use default_max_per_class(num_unlabeled, num_classes)")
    probs = probs.detach().float().cpu()
    conf, pred = probs.max(dim=1)
    keep = torch.nonzero(conf >= threshold).flatten()
    if max_per_class is not None and keep.numel() > 0:
        # Most confident first; the stable sort keeps the lower index first on ties.
        order = torch.sort(conf[keep], descending=True, stable=True).indices
        keep = keep[order]
        classes = pred[keep]
        # rank of each kept entry within its class, in confidence order
        onehot = torch.nn.functional.one_hot(classes, probs.shape[1])
        rank = (onehot.cumsum(dim=0) * onehot).sum(dim=1) - 1
        keep = keep[rank < max_per_class]
    keep = torch.sort(keep).values.long()
    return keep, pred[keep].long()


def default_max_per_class(num_unlabeled: int, num_classes: int, factor: float = 2.0) -> int:
    """Per-class cap: `factor` times the mean share of the unlabeled images per class (at least 1)."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return max(1, math.ceil(factor * num_unlabeled / num_classes))


def per_class_cap(probs: Tensor, threshold: float, explicit: int = 0, balance: float = 0.0) -> int:
    """The per-class cap of a selection: `explicit` if > 0; with `balance` > 0, balance x the mean share
    of the images above the threshold (so that it binds as soon as one class holds more than that);
    else 2x the mean share of all unlabeled images (a loose cap that rarely binds)."""
    _check_probs(probs)
    num_classes = probs.shape[1]
    if explicit > 0:
        return int(explicit)
    if balance > 0:
        kept = int((probs.detach().float().max(dim=1).values >= threshold).sum())
        return max(1, math.ceil(balance * kept / num_classes))
    return default_max_per_class(probs.shape[0], num_classes)


def pseudo_label_stats(labels: Tensor, num_classes: int) -> Tensor:
    """Number of pseudo-labels per class, a long tensor [num_classes]."""
    labels = torch.as_tensor(labels).long().flatten().cpu()
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"pseudo-labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return torch.bincount(labels, minlength=num_classes)


def precision_coverage(indices: Tensor, labels: Tensor, true_labels: Tensor) -> dict:
    """Quality of pseudo-labels where the truth is known: precision (among kept with known truth), coverage, kept."""
    indices = torch.as_tensor(indices).long().flatten().cpu()
    labels = torch.as_tensor(labels).long().flatten().cpu()
    true_labels = torch.as_tensor(true_labels).long().flatten().cpu()
    if indices.numel() != labels.numel():
        raise ValueError(f"{indices.numel()} indices but {labels.numel()} labels")
    truth = true_labels[indices]
    known = truth >= 0
    n_known = int(known.sum())
    precision = float((labels[known] == truth[known]).float().mean()) if n_known else float("nan")
    total = true_labels.numel()
    return {
        "precision": precision,
        "coverage": indices.numel() / total if total else float("nan"),
        "kept": int(indices.numel()),
    }


def per_class_quality(indices: Tensor, labels: Tensor, true_labels: Tensor, num_classes: int) -> dict[str, Tensor]:
    """Per class (by pseudo-label): kept, precision, and coverage (kept and right / images truly of the class)."""
    indices = torch.as_tensor(indices).long().flatten().cpu()
    labels = torch.as_tensor(labels).long().flatten().cpu()
    true_labels = torch.as_tensor(true_labels).long().flatten().cpu()
    right = labels == true_labels[indices]
    kept = torch.bincount(labels, minlength=num_classes).float()
    correct = torch.bincount(labels[right], minlength=num_classes).float()
    present = torch.bincount(true_labels[true_labels >= 0], minlength=num_classes).float()
    nan = torch.tensor(float("nan"))
    return {"kept": kept.long(), "precision": torch.where(kept > 0, correct / kept.clamp(min=1), nan),
            "coverage": torch.where(present > 0, correct / present.clamp(min=1), nan)}


def threshold_sweep(probs: Tensor, true_labels: Tensor, thresholds: Sequence[float]) -> list[dict]:
    """precision / coverage / kept of the confidence-thresholded argmax for each threshold (for plots)."""
    _check_probs(probs)
    rows = []
    for t in thresholds:
        idx, lab = select_pseudo_labels(probs, float(t))
        rows.append({"threshold": float(t), **precision_coverage(idx, lab, true_labels)})
    return rows


def pseudo_labeled(data: CachedImages, indices: Tensor, labels: Tensor) -> CachedImages:
    """The CachedImages subset at `indices` with its labels replaced by the pseudo-labels."""
    indices = torch.as_tensor(indices).long().flatten().cpu()
    labels = torch.as_tensor(labels).long().flatten()
    if indices.numel() != labels.numel():
        raise ValueError(f"{indices.numel()} indices but {labels.numel()} labels")
    part = data.subset(indices)
    part.labels = labels.to(part.labels.device).clone()
    return part
