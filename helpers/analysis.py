"""Looking inside a trained model: per-class tables, feature distances, nearest images, layer shapes, per-image IoU."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import IGNORE_INDEX


def format_class_report(report: dict[str, np.ndarray], class_names: Sequence[str], sort_by: str = "f1") -> str:
    """A text table of helpers.metrics.per_class_report, worst classes first, with the macro average."""
    order = np.argsort(report[sort_by], kind="stable")
    width = max(12, max(len(n) for n in class_names))
    lines = [f"{'class':<{width}} {'precision':>9} {'recall':>7} {'F1':>6} {'images':>7}"]
    for k in order:
        lines.append(f"{class_names[k]:<{width}} {report['precision'][k]:>9.2f} {report['recall'][k]:>7.2f} "
                     f"{report['f1'][k]:>6.2f} {int(report['support'][k]):>7d}")
    lines.append(f"{'macro average':<{width}} {report['precision'].mean():>9.2f} {report['recall'].mean():>7.2f} "
                 f"{report['f1'].mean():>6.2f} {int(report['support'].sum()):>7d}")
    return "\n".join(lines)


def class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Mean of the L2-normalised features of each class [C, D], itself normalised (a zero row for an empty class)."""
    feats = F.normalize(features.float(), dim=1)
    labels = labels.long()
    sums = torch.zeros(num_classes, feats.shape[1]).index_add_(0, labels, feats)
    return F.normalize(sums, dim=1)


def cosine_distance(features: Tensor, centres: Tensor) -> Tensor:
    """1 - cosine similarity between every feature row [N, D] and every centre [C, D]: [N, C]."""
    return 1.0 - F.normalize(features.float(), dim=1) @ F.normalize(centres.float(), dim=1).T


def mistake_distances(features: Tensor, labels: Tensor, predictions: Tensor, means: Tensor) -> list[dict]:
    """For each misclassified image: its index, true and predicted class, cosine distance to both class means."""
    dist = cosine_distance(features, means)
    wrong = torch.nonzero(predictions.long() != labels.long()).flatten().tolist()
    return [{"index": i, "true": int(labels[i]), "predicted": int(predictions[i]),
             "to_true_mean": float(dist[i, labels[i]]), "to_predicted_mean": float(dist[i, predictions[i]])}
            for i in wrong]


def nearest(queries: Tensor, reference: Tensor, k: int = 4) -> Tensor:
    """Indices [Q, k] of the k reference rows most cosine-similar to each query row, nearest first."""
    sim = F.normalize(queries.float(), dim=1) @ F.normalize(reference.float(), dim=1).T
    return sim.topk(min(k, reference.shape[0]), dim=1).indices


def layer_table(model: nn.Module, input_shape: Sequence[int], depth: int = 1) -> str:
    """A model summary: each module down to `depth` dots in its name, its output shape and parameter count."""
    rows: list[tuple[str, str, str, int]] = []
    hooks = []

    def describe(output) -> str:
        if isinstance(output, Tensor):
            return str(list(output.shape))
        if isinstance(output, dict):
            return ", ".join(f"{k}: {list(v.shape)}" for k, v in output.items())
        if isinstance(output, (list, tuple)):
            return f"{len(output)} maps"
        return type(output).__name__

    for name, module in model.named_modules():
        if name and name.count(".") < depth:
            params = sum(p.numel() for p in module.parameters())
            hooks.append(module.register_forward_hook(
                lambda m, i, o, name=name, params=params: rows.append((name, type(m).__name__, describe(o), params))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(*input_shape, device=next(model.parameters()).device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    width = max(14, *(len(r[0]) for r in rows))
    lines = [f"{'module':<{width}}  {'type':<16} {'parameters':>11}  output shape"]
    lines += [f"{n:<{width}}  {t:<16} {p:>11,}  {s}" for n, t, s, p in rows]
    total = sum(p.numel() for p in model.parameters())
    lines.append(f"{'(model output)':<{width}}  {type(model).__name__:<16} {total:>11,}  {describe(output)}")
    return "\n".join(lines)


def object_iou(predicted: Tensor, truth: Tensor, labels: Tensor) -> Tensor:
    """Per image: IoU of the true object (index label + 1) between predicted and true index maps [N, H, W].

    Ignore pixels (255) are dropped. A mask labelled with the wrong class scores 0: none of its
    pixels are the true class.
    """
    target = (labels.long() + 1).view(-1, 1, 1)
    valid = truth != IGNORE_INDEX
    pred_obj = (predicted.long() == target) & valid
    true_obj = (truth.long() == target) & valid
    inter = (pred_obj & true_obj).flatten(1).sum(1).float()
    union = (pred_obj | true_obj).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
