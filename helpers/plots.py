"""Pictures: image grids with mask overlays and a class legend, training curves, confusion matrices, a widget browser."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import matplotlib.pyplot as plt
import numpy as np

from .masks import IGNORE_INDEX, ids_to_index, read_mask

if TYPE_CHECKING:
    import ipywidgets

IGNORE_COLOR = np.array([255, 255, 255], dtype=np.uint8)


def palette(num_ids: int) -> np.ndarray:
    """A fixed colour per class index (0 = background, black); num_ids x 3 uint8, 60 distinct colours then repeats."""
    table = [plt.get_cmap(name)(i)[:3] for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    colors = [(0, 0, 0)] + [tuple(int(255 * c) for c in table[i % len(table)]) for i in range(num_ids - 1)]
    return np.array(colors, dtype=np.uint8)


def add_class_legend(fig, masks: Sequence, class_names: Sequence[str], ncol: int = 5) -> None:
    """A figure legend with the colour of every class that occurs in `masks` (index maps), plus the ignore band."""
    from matplotlib.patches import Patch

    present: set[int] = set()
    for m in masks:
        if m is not None:
            values = np.unique(m.cpu().numpy() if hasattr(m, "cpu") else np.asarray(m))
            present.update(int(v) for v in values if 0 < v <= len(class_names))
    colors = palette(len(class_names) + 1) / 255.0
    handles = [Patch(color=colors[v], label=class_names[v - 1]) for v in sorted(present)]
    handles.append(Patch(facecolor=IGNORE_COLOR / 255.0, edgecolor="gray", label="ignore band"))
    fig.legend(handles=handles, loc="lower center", ncol=min(ncol, len(handles)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * ((len(handles) - 1) // ncol)), frameon=False)


def overlay(image: np.ndarray, index_mask: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """Blend a class-index mask (0 bg, k+1 class k, 255 ignore) over an H x W x 3 uint8 image."""
    image = np.asarray(image, dtype=np.uint8)
    index_mask = np.asarray(index_mask)
    colors = palette(num_classes + 1)
    out = image.astype(np.float32)
    obj = (index_mask > 0) & (index_mask != IGNORE_INDEX)
    safe = np.where(obj, index_mask, 0).astype(np.int64)
    out[obj] = (1 - alpha) * out[obj] + alpha * colors[np.clip(safe[obj], 0, num_classes)]
    out[index_mask == IGNORE_INDEX] = IGNORE_COLOR
    return out.astype(np.uint8)


def _to_hwc(image) -> np.ndarray:
    """A CHW tensor / HWC array / PIL image as an H x W x 3 uint8 array."""
    if hasattr(image, "detach"):
        image = image.detach().cpu()
        if image.dtype.is_floating_point:
            image = (image.clamp(0, 1) * 255).round().byte()
        image = image.permute(1, 2, 0).numpy()
    return np.asarray(image, dtype=np.uint8)


def show_grid(images: Sequence, masks: Sequence | None = None, titles: Sequence[str] | None = None,
              num_classes: int | None = None, ncols: int = 6, size: float = 2.2, title_colors=None,
              class_names: Sequence[str] | None = None) -> plt.Figure:
    """Show images (CHW tensors, HWC arrays or PIL images) in a grid, masks blended over them.

    With `class_names` (and masks), a legend names the colour of each class shown.
    """
    if class_names is not None and num_classes is None:
        num_classes = len(class_names)
    n = len(images)
    nrows = max(1, (n + ncols - 1) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.05), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = _to_hwc(images[i])
        if masks is not None and masks[i] is not None:
            m = masks[i].cpu().numpy() if hasattr(masks[i], "cpu") else np.asarray(masks[i])
            img = overlay(img, m, num_classes if num_classes is not None else int(m[m != IGNORE_INDEX].max(initial=0)))
        ax.imshow(img)
        if titles is not None:
            color = title_colors[i] if title_colors is not None else "black"
            ax.set_title(titles[i], fontsize=8, color=color)
    fig.tight_layout()
    if class_names is not None and masks is not None:
        add_class_legend(fig, masks, class_names)
    return fig


def show_samples(samples: Sequence, class_names: Sequence[str], with_masks: bool = True, ncols: int = 6) -> plt.Figure:
    """Load index samples from disk and show them with their masks and class names."""
    from .images import load_image

    num_classes = len(class_names)
    images, masks, titles = [], [], []
    for s in samples:
        images.append(np.asarray(load_image(s.image)))
        masks.append(ids_to_index(read_mask(s.mask), num_classes, s.mask) if with_masks and s.mask else None)
        titles.append(class_names[s.label] if s.label >= 0 else s.key)
    return show_grid(images, masks, titles, num_classes=num_classes, ncols=ncols,
                     class_names=class_names if with_masks else None)


def plot_history(history: Sequence[dict], title: str = "") -> plt.Figure:
    """Training curves: loss and accuracy per epoch, train against validation."""
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
    for key, ax in (("loss", ax1), ("acc", ax2)):
        for split in ("train", "val"):
            values = [h.get(f"{split}_{key}") for h in history]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_embedding(ax, xy, labels, class_names: Sequence[str], marked=None, title: str = "") -> None:
    """A 2-D picture of features (e.g. probes.pca_2d) on `ax`, one colour per class; `marked` points as stars."""
    xy, labels = np.asarray(xy), np.asarray(labels)
    marked = np.zeros(len(labels), dtype=bool) if marked is None else np.asarray(marked, dtype=bool)
    colors = palette(len(class_names) + 1)[1:] / 255.0
    for k, name in enumerate(class_names):
        for is_marked, style in ((False, dict(marker="o", s=14, alpha=0.6)),
                                 (True, dict(marker="*", s=90, edgecolors="black", linewidths=0.5))):
            pick = (labels == k) & (marked == is_marked)
            if pick.any():
                ax.scatter(xy[pick, 0], xy[pick, 1], color=colors[k], label=None if is_marked else name, **style)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], normalize: bool = True) -> plt.Figure:
    """A confusion matrix (rows: true class, columns: predicted) with class names on the axes."""
    cm = np.asarray(cm, dtype=np.float64)
    if normalize:
        cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    side = min(0.35 * n + 2, 16)
    fig, ax = plt.subplots(figsize=(side, side))
    im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.set_xticks(range(n), class_names, rotation=90, fontsize=7)
    ax.set_yticks(range(n), class_names, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def browse(samples: Sequence, class_names: Sequence[str], predictions: dict | None = None) -> ipywidgets.VBox:
    """An ipywidgets browser: page through samples with their masks (and predictions, if given).

    `predictions` maps a sample key to (class_id, index_mask) as produced by the later notebooks.
    Returns the displayed VBox(HBox(previous, slider, next), picture). Each page is drawn to a PNG in an Image widget: an
    Output widget capturing plt.show() made headless runners (nbclient, nbval) hang now and then.
    """
    import io

    import ipywidgets as widgets
    from IPython.display import display

    from .images import load_image

    num_classes = len(class_names)
    picture = widgets.Image(format="png")
    slider = widgets.IntSlider(min=0, max=max(len(samples) - 1, 0), description="image")
    previous, following = widgets.Button(description="◀ previous"), widgets.Button(description="next ▶")

    def render(i: int) -> None:
        s = samples[i]
        image = np.asarray(load_image(s.image))
        panels, titles = [image], [f"{s.key}  {image.shape[1]}x{image.shape[0]}"]
        if s.mask is not None:
            panels.append(overlay(image, ids_to_index(read_mask(s.mask), num_classes, s.mask), num_classes))
            titles.append(f"truth: {class_names[s.label]}" if s.label >= 0 else "truth")
        if predictions and s.key in predictions:
            label, mask = predictions[s.key]
            panels.append(overlay(image, mask, num_classes))
            titles.append(f"predicted: {class_names[label]}")
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
        for ax, panel, title in zip(axes[0], panels, titles):
            ax.imshow(panel)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
        plt.close(fig)
        picture.value = buffer.getvalue()

    def step(by: int) -> None:
        slider.value = (slider.value + by) % (slider.max + 1)  # wraps around at either end

    slider.observe(lambda change: render(change["new"]), names="value")
    previous.on_click(lambda _: step(-1))
    following.on_click(lambda _: step(1))
    if samples:
        render(0)
    box = widgets.VBox([widgets.HBox([previous, slider, following]), picture])
    display(box)
    return box
