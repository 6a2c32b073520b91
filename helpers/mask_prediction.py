"""From a trained U-Net to masks: batched prediction with flip TTA, mask methods, original-size masks, scores.

Masks from predictions (`METHODS`), K = num_classes + 1 ids, id k + 1 = class k, 0 = background:
- "pixel":    argmax of the seg head's per-pixel class probabilities.
- "fg+class": fg head's probability > 0.5 -> the image's class (from the classifier), else background.
- "fusion":   fg = mean of the two heads' object probabilities (fg head and 1 - P(background) of
              the seg head), > 0.5; the image's class = argmax_k classifier_prob[k] x vote[k], where
              vote[k] is the seg head's mean P(class k) over the image weighted by that fg
              probability, normalised over the object classes. Without classifier probabilities
              the vote alone decides; with class indices only, their one-hot is the prior.

Every method is a per-pixel argmax over a few score maps (all K class maps for "pixel"; [1 - fg,
fg] with labels [0, class + 1] for the other two), so that the original-size mask is made by
resizing those SCORES (bilinear, align_corners=False) to the original (H, W) and then taking the
argmax: never by resizing a finished index map.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .augment import center_resize, normalize
from .cache import CachedImages
from .config import Config
from .hardware import autocast, resolve, to_layout
from .masks import read_mask
from .metrics import SegmentationScore

METHODS = ("pixel", "fg+class", "fusion")
_PROGRESS_MIN_IMAGES = 256  # prediction shows a bar from this many images on


def segmenter_classes(model: nn.Module) -> int:
    """Object classes of a segmenter (UNet.num_classes, else its spec)."""
    n = getattr(model, "num_classes", None)
    if n is None and isinstance(getattr(model, "spec", None), dict):
        n = model.spec.get("num_classes")
    if n is None:
        raise TypeError(f"{type(model).__name__} has no num_classes; expected a helpers.models.UNet")
    return int(n)



# ----------------------------------------------------------------------------- prediction
def model_inputs(images: Tensor, cfg: Config, device: torch.device, channels_last: bool, tta: bool) -> Tensor:
    """uint8 cache batch -> normalized model input at cfg.image_size (plain, then flipped, with tta)."""
    x = normalize(center_resize(images.to(device, non_blocking=True), None, cfg.image_size)[0])
    if tta:
        x = torch.cat([x, x.flip(3)])
    return to_layout(x, channels_last)


def _image_tensor(images: CachedImages | Tensor, what: str) -> Tensor:
    data = images.images if isinstance(images, CachedImages) else images
    if not isinstance(data, Tensor) or data.ndim != 4 or data.shape[1] != 3:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise ValueError(f"{what}: expected CachedImages or a [N,3,H,W] tensor, got {shape}")
    return data


def _iter_probs(model: nn.Module, images: Tensor, cfg: Config, tta: bool, batch_size: int | None,
                progress: bool | None, desc: str) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(start, fg prob [b,h,w], class probs [b,K,h,w]) per batch, float32 on the device, at the model's size."""
    device, amp, channels_last = resolve(cfg)
    batch_size = batch_size or max(1, int(cfg.batch_size))
    n = images.shape[0]
    show = progress if progress is not None else n >= _PROGRESS_MIN_IMAGES
    was_training = model.training
    model.eval()
    try:
        for start in tqdm(range(0, n, batch_size), desc=desc, unit="batch", leave=False, disable=not show):
            x = model_inputs(images[start:start + batch_size], cfg, device, channels_last, tta)
            with torch.no_grad(), autocast(device, amp):
                out = model(x)
            fg = torch.sigmoid(out["fg"][:, 0].float())
            cls = out["seg"].float().softmax(dim=1)
            if tta:  # flip the flipped half's prediction back before averaging
                fg_a, fg_b = fg.chunk(2)
                cls_a, cls_b = cls.chunk(2)
                fg, cls = (fg_a + fg_b.flip(-1)) / 2, (cls_a + cls_b.flip(-1)) / 2
            yield start, fg, cls
    finally:
        model.train(was_training)


def resize_maps(x: Tensor, size: int) -> Tensor:
    """Bilinear (align_corners=False) resize of [B,C,h,w] maps to size x size (identity if equal)."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def predict_segmentation(
    model: nn.Module,
    images: CachedImages | Tensor,
    cfg: Config,
    *,
    tta: bool = True,
    batch_size: int | None = None,
    dtype: torch.dtype = torch.float16,
    progress: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """(fg prob [N,S,S], class probs [N,K,S,S]) on the CPU at the cache size S, with horizontal-flip TTA.

    Stored as float16 by default (N x K x S x S floats add up: 752 x 51 x 160^2 is 2 GB in float16);
    pass dtype=torch.float32 for full precision. For original-size masks use `predict_masks_original`,
    which streams and never holds all probabilities.
    """
    data = _image_tensor(images, "predict_segmentation")
    size = int(data.shape[-1])
    fgs, clss = [], []
    for _, fg, cls in _iter_probs(model, data, cfg, tta, batch_size, progress, "segment"):
        fgs.append(resize_maps(fg[:, None], size)[:, 0].to("cpu", dtype))
        clss.append(resize_maps(cls, size).to("cpu", dtype))
    if not fgs:
        k = segmenter_classes(model) + 1
        return torch.zeros(0, size, size, dtype=dtype), torch.zeros(0, k, size, size, dtype=dtype)
    return torch.cat(fgs), torch.cat(clss)


# ----------------------------------------------------------------------------- masks
def _class_inputs(image_classes, n: int, num_classes: int) -> tuple[Tensor | None, Tensor | None]:
    """(class indices [n] long, classifier probs [n,C] float or None) from indices or probabilities."""
    if image_classes is None:
        return None, None
    c = torch.as_tensor(image_classes)
    if c.ndim == 2 and c.is_floating_point():
        if tuple(c.shape) != (n, num_classes):
            raise ValueError(f"image_classes: classifier probabilities of shape {tuple(c.shape)}, "
                             f"expected ({n}, {num_classes})")
        probs = c.detach().float().cpu()
        return probs.argmax(dim=1), probs
    if c.ndim != 1 or c.is_floating_point() or c.numel() != n:
        raise ValueError(f"image_classes: expected {n} class indices or [{n}, {num_classes}] probabilities, "
                         f"got {c.dtype} {tuple(c.shape)}")
    c = c.detach().long().cpu()
    if c.numel() and (int(c.min()) < 0 or int(c.max()) >= num_classes):
        raise ValueError(f"image_classes: class indices must lie in 0..{num_classes - 1}, "
                         f"got {int(c.min())}..{int(c.max())}")
    return c, None


def _method_scores(fg: Tensor, cls: Tensor, ids: Tensor | None, probs: Tensor | None,
                   method: str) -> tuple[Tensor, Tensor]:
    """(scores [B,C',h,w], labels [B,C']): a pixel's index is labels[argmax over C' of its scores]."""
    b, k = cls.shape[:2]
    device = cls.device
    if method == "pixel":
        return cls, torch.arange(k, device=device).expand(b, k)
    if method == "fg+class":
        if ids is None:
            raise ValueError("method 'fg+class' needs the image classes (the classifier's predictions) "
                             "as image_classes")
        p, image_class = fg, ids.to(device)
    elif method == "fusion":
        p = (fg + (1.0 - cls[:, 0])) / 2
        weight = p + 1e-6  # a soft fg weight: an image without fg still gets a vote
        vote = (cls[:, 1:] * weight[:, None]).sum(dim=(2, 3)) / weight.sum(dim=(1, 2))[:, None]
        vote = vote / vote.sum(dim=1, keepdim=True).clamp_min(1e-12)
        if probs is not None:
            vote = vote * probs.to(device)
        elif ids is not None:
            vote = F.one_hot(ids.to(device), k - 1).float()
        image_class = vote.argmax(dim=1)
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    scores = torch.stack([1.0 - p, p], dim=1)  # argmax picks fg only where p > 0.5 (ties: background)
    labels = torch.stack([torch.zeros_like(image_class), image_class + 1], dim=1)
    return scores, labels


@torch.no_grad()
def masks_from_predictions(fg_prob: Tensor, class_prob: Tensor, image_classes: Tensor | None,
                           method: str, chunk: int = 32) -> Tensor:
    """Index maps [N,S,S] (long, 0 bg, k + 1 class k) from predicted probabilities; see METHODS.

    image_classes: the classifier's class index per image [N], or its probabilities [N, C] (best
    for "fusion"); None is allowed for "pixel" and "fusion".
    """
    if fg_prob.ndim != 3 or class_prob.ndim != 4 or fg_prob.shape != class_prob[:, 0].shape:
        raise ValueError(f"expected fg_prob [N,S,S] and class_prob [N,K,S,S], got {tuple(fg_prob.shape)} "
                         f"and {tuple(class_prob.shape)}")
    n, k = class_prob.shape[:2]
    ids, probs = _class_inputs(image_classes, n, k - 1)
    out = []
    for s in range(0, n, chunk):
        part = slice(s, s + chunk)
        scores, labels = _method_scores(
            fg_prob[part].float(), class_prob[part].float(), None if ids is None else ids[part],
            None if probs is None else probs[part], method)
        out.append(labels.gather(1, scores.argmax(dim=1).flatten(1)).view(scores.shape[0], *scores.shape[2:]))
    if not out:
        return torch.zeros(0, *fg_prob.shape[1:], dtype=torch.long, device=fg_prob.device)
    return torch.cat(out)


def _check_size(size_hw) -> tuple[int, int]:
    h, w = (int(v) for v in size_hw)
    if h < 1 or w < 1:
        raise ValueError(f"size_hw must be a positive (height, width), got {tuple(size_hw)}")
    return h, w


def resize_to_original(scores_or_index: Tensor, size_hw: tuple[int, int], labels: Tensor | None = None) -> Tensor:
    """Index/id map [H, W] (long) of exactly size_hw from [C,h,w] scores, or from an [h,w] integer index map.

    Scores (probabilities or logits) are resized bilinearly (align_corners=False) and THEN
    arg-maxed; `labels` [C] maps the winning channel to its index (default: the channel itself).
    An integer index map is resized with nearest-exact (use scores where you have them).
    """
    h, w = _check_size(size_hw)
    x = scores_or_index
    if not x.is_floating_point():
        if x.ndim != 2:
            raise ValueError(f"resize_to_original: an index map must be [h, w], got {tuple(x.shape)}")
        if tuple(x.shape) != (h, w):
            x = F.interpolate(x[None, None].float(), size=(h, w), mode="nearest-exact")[0, 0]
        x = x.long()
        return labels.to(x.device)[x] if labels is not None else x
    if x.ndim != 3:
        raise ValueError(f"resize_to_original: scores must be [C, h, w], got {tuple(x.shape)}")
    x = x.float()
    if x.shape[0] == 2:  # the fg methods: a comparison is ~100x faster than argmax on the CPU
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        index = (x[1] > x[0]).long()  # ties -> channel 0, as argmax
    else:
        # channels-last interpolation and a max over the contiguous last dim: ~4x faster on the CPU
        x = x[None].contiguous(memory_format=torch.channels_last)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        index = x[0].permute(1, 2, 0).max(dim=-1).indices  # the first maximal channel, as argmax
    return labels.to(index.device)[index] if labels is not None else index


def _prune_probability_channels(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the channels of [C,h,w] PROBABILITIES that cannot win an argmax after bilinear resizing.

    Interpolated probabilities still sum to 1, so the winner has at least 1/C everywhere; a channel
    whose maximum over the image is below that never wins. Exact, and most classes go.
    """
    keep = probs.flatten(1).amax(dim=1) >= (1.0 - 1e-4) / probs.shape[0]
    return probs[keep], labels[keep]


def _stream_original(model: nn.Module, data: CachedImages, cfg: Config, image_classes, methods: Sequence[str],
                     tta: bool, batch_size: int | None, progress: bool | None
                     ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(image position, {method: int32 id map of the image's original size}) per image, in order."""
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose one of {', '.join(METHODS)}")
    num_classes = segmenter_classes(model)
    ids, probs = _class_inputs(image_classes, len(data), num_classes)
    if ids is None and "fg+class" in methods:
        raise ValueError("method 'fg+class' needs the image classes (the classifier's predictions) as "
                         "image_classes; pass them or leave the method out")
    if len(data.sizes) != len(data):
        raise ValueError(f"{len(data)} images but {len(data.sizes)} original sizes")
    show = progress if progress is not None else len(data) >= _PROGRESS_MIN_IMAGES
    bar = tqdm(total=len(data), desc="masks", unit="img", leave=False, disable=not show)
    try:
        for start, fg, cls in _iter_probs(model, data.images, cfg, tta, batch_size, False, "segment"):
            b = fg.shape[0]
            part = slice(start, start + b)
            per_method = {m: _method_scores(fg, cls, None if ids is None else ids[part],
                                            None if probs is None else probs[part], m) for m in methods}
            for j in range(b):
                size = data.sizes[start + j]
                out = {}
                for m, (scores, labels) in per_method.items():
                    sj, lj = scores[j], labels[j]
                    if m == "pixel":
                        sj, lj = _prune_probability_channels(sj, lj)
                    out[m] = resize_to_original(sj, size, lj).to(torch.int32).cpu().numpy()
                yield start + j, out
                bar.update(1)
    finally:
        bar.close()


def predict_masks_original(
    model: nn.Module,
    data: CachedImages,
    cfg: Config,
    image_classes: Tensor | None,
    method: str,
    *,
    tta: bool = True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Iterator[tuple[str, np.ndarray]]:
    """Stream (key, int32 id map of exactly the original H x W) per image: ids 0 bg, k + 1 class k, never 1000.

    Batched inference with flip TTA; each image's scores are resized to data.sizes[i] before the argmax.
    """
    for i, masks in _stream_original(model, data, cfg, image_classes, (method,), tta, batch_size, progress):
        yield data.keys[i], masks[method]


def evaluate_segmentation(
    model: nn.Module,
    data: CachedImages,
    samples: Sequence,
    cfg: Config,
    image_classes: Tensor | None = None,
    methods: Sequence[str] = METHODS,
    *,
    tta: bool = True,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> dict[str, dict]:
    """ImageNet-S scores per method at the ORIGINAL resolution against the samples' mask files.

    samples: the Samples of `data`, in the same order (their .mask files are read with read_mask).
    Returns {method: SegmentationScore.result()}: miou, iou [K], miou_present, fg_iou, pixel_acc, ...
    "fg+class" needs image_classes (the classifier's predictions, or probabilities).
    """
    samples = list(samples)
    keys = [s.key for s in samples]
    if keys != list(data.keys):
        raise ValueError("evaluate_segmentation: samples and data differ (pass the samples of the cached "
                         f"images in the same order); first keys {keys[:3]} vs {list(data.keys)[:3]}")
    missing = [s.key for s in samples if s.mask is None]
    if missing:
        raise ValueError(f"evaluate_segmentation: {len(missing)} samples have no mask file, e.g. {missing[:3]}")
    num_classes = segmenter_classes(model)
    scores = {m: SegmentationScore(num_classes) for m in methods}
    for i, masks in _stream_original(model, data, cfg, image_classes, tuple(methods), tta, batch_size, progress):
        truth = read_mask(samples[i].mask)
        for m, pred in masks.items():
            scores[m].update(pred, truth, source=str(samples[i].mask))
    return {m: s.result() for m, s in scores.items()}
