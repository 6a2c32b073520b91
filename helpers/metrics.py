"""Scores: classification accuracy, confusion matrix, per-class precision / recall / F1, and the ImageNet-S mIoU."""
from __future__ import annotations

import json
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from helpers.masks import IGNORE_ID, MAX_ID, read_mask

# The ImageNet-S evaluator (LUSSeg/ImageNet-S, evaluation/evaluator.py) computes
#     IoU = TP / (T + P - TP + 1e-10);  mIoU = torch.mean(IoU)
# over all num_classes + 1 ids, without skipping any: an id absent from both prediction and truth
# (P + T = 0) has IoU 0 and still counts in the mean. (Only its per-object-size mIoUs skip absent
# ids, via `[Ps[i] > 0]`.) Its pixel counts come from torch.histc(..., min=0, max=K-1), which drops
# predicted ids outside 0..K-1 from P, while the true id still counts them in T; its data loader
# (data/data.py) removes the pixels whose ground truth is 1000 before counting. We follow all of it.
_EPS = 1e-10


def _workers() -> int:
    return max(2, min(8, os.cpu_count() or 1))


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach"):  # a torch tensor
        return x.detach().cpu().numpy()
    return np.asarray(x)


def accuracy(pred: Any, true: Any) -> float:
    """Fraction of samples whose predicted label equals the true label."""
    pred, true = _to_numpy(pred).ravel(), _to_numpy(true).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"accuracy: {pred.size} predictions for {true.size} labels")
    if true.size == 0:
        raise ValueError("accuracy: no samples")
    return float(np.mean(pred == true))


def confusion_matrix(pred: Any, true: Any, num_classes: int) -> np.ndarray:
    """Counts [C, C] with rows = true class and columns = predicted class."""
    pred = _to_numpy(pred).ravel().astype(np.int64)
    true = _to_numpy(true).ravel().astype(np.int64)
    if pred.shape != true.shape:
        raise ValueError(f"confusion_matrix: {pred.size} predictions for {true.size} labels")
    for name, x in (("predicted", pred), ("true", true)):
        if x.size and (x.min() < 0 or x.max() >= num_classes):
            raise ValueError(f"confusion_matrix: {name} labels must lie in 0..{num_classes - 1}, "
                             f"got {x.min()}..{x.max()}")
    counts = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_report(pred: Any, true: Any, num_classes: int) -> dict[str, np.ndarray]:
    """Per class: precision, recall, F1 and support (true count); a class never predicted has precision 0."""
    cm = confusion_matrix(pred, true, num_classes)
    tp = np.diagonal(cm).astype(np.float64)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def segmentation_counts(pred_ids: Any, true_ids: Any, num_classes: int,
                        source: str = "mask") -> np.ndarray:
    """Pixel counts of one image, [K, K+1]: rows true id, columns predicted id, last column = invalid.

    K = num_classes + 1. Pixels whose truth is IGNORE_ID are dropped. A predicted id outside 0..K-1,
    a missing prediction (None) or one whose shape differs from the truth lands in the last column:
    a wrong pixel that adds to no valid id's predicted area.
    """
    k = num_classes + 1
    true = _to_numpy(true_ids)
    if true.ndim != 2 or true.dtype.kind not in "iu":
        raise ValueError(f"{source}: expected an H x W integer id map, got {true.dtype} {true.shape}")
    if true.size and (true.min() < 0 or true.max() > MAX_ID):
        raise ValueError(f"{source}: ground truth ids must lie in 0..{MAX_ID}")
    # int32 arithmetic and one bincount: large temporary arrays are the cost here, not the math
    dtype = np.int32 if (MAX_ID + 1) * (k + 1) < 2**31 else np.int64
    index = true.astype(dtype) * dtype(k + 1)
    pred = None if pred_ids is None else _to_numpy(pred_ids)
    if pred is None or pred.shape != true.shape:
        index += k
    else:
        if pred.dtype.kind == "i":  # negative ids become huge unsigned values, then k
            pred = pred.view(pred.dtype.str.replace("i", "u"))
        elif pred.dtype.kind != "u":
            raise ValueError(f"predicted ids must be integers, got {pred.dtype}")
        index += np.minimum(pred, k).astype(dtype)
    ignore = true == IGNORE_ID
    index[ignore] = k * (k + 1)  # one extra bin, cut off below (cheaper than boolean indexing)
    counts = np.bincount(index.ravel(), minlength=k * (k + 1) + 1)
    if counts.size > k * (k + 1) + 1 or counts[k * (k + 1)] != np.count_nonzero(ignore):
        # a true id in k..MAX_ID other than IGNORE_ID put pixels beyond the valid bins
        bad = np.unique(true[(true >= k) & ~ignore])[:10].tolist()
        raise ValueError(f"{source}: ground truth holds ids {bad}, outside 0..{k - 1} and not "
                         f"{IGNORE_ID}; is num_classes={num_classes} right?")
    return counts[: k * (k + 1)].reshape(k, k + 1)


class SegmentationScore:
    """Accumulates ImageNet-S segmentation counts over images (sums, not per-image means)."""

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.num_ids = num_classes + 1
        # rows: true id 0..K-1; columns: predicted id 0..K-1, then "invalid / missing"
        self.counts = np.zeros((self.num_ids, self.num_ids + 1), dtype=np.int64)
        self.n_images = 0

    def update(self, pred_ids: Any, true_ids: Any, source: str = "mask") -> None:
        """Add one image (pred_ids None or of another size: all its pixels are wrong)."""
        self.add_counts(segmentation_counts(pred_ids, true_ids, self.num_classes, source))

    def add_counts(self, counts: np.ndarray) -> None:
        """Add one image's counts from `segmentation_counts` (lets callers compute them in threads)."""
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts of shape {counts.shape}, expected {self.counts.shape}")
        self.counts += counts
        self.n_images += 1

    @property
    def intersection(self) -> np.ndarray:
        """Per id: pixels predicted as that id whose truth is that id."""
        return np.diagonal(self.counts[:, : self.num_ids]).copy()

    @property
    def predicted_area(self) -> np.ndarray:
        """Per id: pixels predicted as that id (ignore pixels excluded)."""
        return self.counts[:, : self.num_ids].sum(axis=0)

    @property
    def true_area(self) -> np.ndarray:
        """Per id: pixels whose truth is that id (ignore pixels excluded)."""
        return self.counts.sum(axis=1)

    def result(self) -> dict:
        """miou (mean over all K ids, absent ids count as 0), iou [K], miou_present, fg_iou, pixel_acc."""
        i, p, t = self.intersection, self.predicted_area, self.true_area
        iou = i / (p + t - i + _EPS)
        present = t > 0
        k = self.num_ids
        fg_i = self.counts[1:, 1:k].sum()
        fg_p = self.counts[:, 1:k].sum()
        fg_t = self.counts[1:, :].sum()
        n_pixels = int(self.counts.sum())
        return {
            "miou": float(iou.mean()),
            "iou": iou,
            # diagnostic only: mean over the ids that occur in the ground truth
            "miou_present": float(iou[present].mean()) if present.any() else float("nan"),
            # diagnostic only: object (any valid class id) vs background; invalid ids are wrong pixels
            "fg_iou": float(fg_i / (fg_p + fg_t - fg_i + _EPS)),
            "pixel_acc": float(i.sum() / n_pixels) if n_pixels else float("nan"),
            "n_images": self.n_images,
            "n_pixels": n_pixels,
        }


def miou(preds: Iterable[Any], truths: Iterable[Any], num_classes: int) -> float:
    """ImageNet-S mIoU of paired prediction / truth id maps, counts summed over all images."""
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths):
        raise ValueError(f"miou: {len(preds)} predictions for {len(truths)} ground-truth masks")
    score = SegmentationScore(num_classes)
    for pred, true in zip(preds, truths):
        score.update(pred, true)
    return score.result()["miou"]


def _read_json_list(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise ValueError(f'{path}: expected a JSON list of {{"image": ..., "class_id": ...}}, '
                         f"got {type(data).__name__}")
    return data


def _valid_entry(e: Any) -> bool:
    return (isinstance(e, dict) and isinstance(e.get("image"), str)
            and isinstance(e.get("class_id"), int) and not isinstance(e.get("class_id"), bool))


def _read_ids(path: Path) -> np.ndarray:
    """`read_mask`, with a faster path for the usual RGB mask (ids < 256 need no G arithmetic)."""
    try:
        with Image.open(path) as im:
            if im.mode != "RGB":
                return read_mask(path)
            rgb = np.asarray(im)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask file not found") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise ValueError(f"{path}: cannot be read as a PNG mask ({e}); replace the file") from None
    ids = rgb[..., 0].astype(np.int32)
    green = rgb[..., 1]
    if green.any():
        ids |= green.astype(np.int32) << 8
    return ids


def score_submission(submission_dir: str | os.PathLike, truth_dir: str | os.PathLike,
                     num_classes: int) -> dict:
    """Score a submission folder (or its zip) against a truth folder in the same format.

    Returns accuracy, miou, iou [K], miou_present, fg_iou, pixel_acc, n_images, missing_classes,
    missing_masks, has_masks. A truth image without a (well-formed) classification entry counts as a wrong
    class; one without a readable mask of its size counts as all-wrong pixels. If an image has
    several entries, the last one is used (the validator reports duplicates). A truth folder without
    segmentation/ (classes only, as for photos that come without masks) scores accuracy alone: the
    mask scores are None (shown as n/a), never a 0 that reads as a score.
    """
    submission_dir, truth_dir = Path(submission_dir), Path(truth_dir)
    if submission_dir.is_file() and zipfile.is_zipfile(submission_dir):
        with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(submission_dir) as zf:
            zf.extractall(tmp)
            return score_submission(tmp, truth_dir, num_classes)
    if not submission_dir.is_dir():
        raise FileNotFoundError(f"{submission_dir}: submission folder not found")

    truth_entries = _read_json_list(truth_dir / "classification.json")
    for n, e in enumerate(truth_entries):
        if not _valid_entry(e) or not 0 <= e["class_id"] < num_classes:
            raise ValueError(f"{truth_dir / 'classification.json'}: entry {n} is not "
                             f'{{"image": str, "class_id": 0..{num_classes - 1}}}: {e!r}')
    if not truth_entries:
        raise ValueError(f"{truth_dir / 'classification.json'}: no images")
    predicted = {e["image"]: e["class_id"]
                 for e in _read_json_list(submission_dir / "classification.json") if _valid_entry(e)}

    true_labels = np.array([e["class_id"] for e in truth_entries])
    pred_labels = np.array([predicted.get(e["image"], -1) for e in truth_entries])

    result = {"accuracy": accuracy(pred_labels, true_labels), "n_images": len(truth_entries),
              "missing_classes": int((pred_labels < 0).sum()), "has_masks": (truth_dir / "segmentation").is_dir()}
    if not result["has_masks"]:
        return {**result, **dict.fromkeys(("miou", "iou", "miou_present", "fg_iou", "pixel_acc", "missing_masks"))}

    def image_counts(entry: dict) -> tuple[np.ndarray, bool]:
        stem = Path(entry["image"]).stem
        truth_path = truth_dir / "segmentation" / f"{stem}.png"
        true_ids = _read_ids(truth_path)
        try:
            pred_ids = _read_ids(submission_dir / "segmentation" / f"{stem}.png")
        except (FileNotFoundError, ValueError):
            pred_ids = None
        missing = pred_ids is None or pred_ids.shape != true_ids.shape
        return segmentation_counts(pred_ids, true_ids, num_classes, str(truth_path)), missing

    score = SegmentationScore(num_classes)
    missing_masks = 0
    with ThreadPoolExecutor(_workers()) as pool:
        results = pool.map(image_counts, truth_entries)
        for counts, missing in tqdm(results, total=len(truth_entries), desc="scoring", unit="mask",
                                    leave=False):
            score.add_counts(counts)
            missing_masks += missing
    seg = score.result()
    return {**result, **{k: seg[k] for k in ("miou", "iou", "miou_present", "fg_iou", "pixel_acc")},
            "missing_masks": missing_masks}


NO_MASKS = "n/a (no masks in the truth)"


def format_score(value: float | None, digits: int = 3) -> str:
    """A score for printing: the number, or "n/a ..." where the truth cannot give one (None, NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NO_MASKS
    return f"{value:.{digits}f}"
