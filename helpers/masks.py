"""Mask encoding: segment ids <-> RGB PNG (id = R + G*256), class k <-> id k+1."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

BACKGROUND_ID = 0
IGNORE_ID = 1000  # the challenge's "ignore" id, (232, 3, 0) in RGB
IGNORE_INDEX = 255  # the same pixels in a uint8 class-index map (training targets)
MAX_ID = 256 * 256 - 1

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # numpy or torch: each function returns the kind it gets
IntOrArray = Union[int, np.ndarray, "torch.Tensor"]


def class_to_id(class_id: IntOrArray) -> IntOrArray:
    """Segment id of class k: k + 1 (0 is background)."""
    return class_id + 1


def id_to_class(segment_id: IntOrArray) -> IntOrArray:
    """Class index of a segment id (inverse of `class_to_id`); background gives -1."""
    return segment_id - 1


def rgb_to_ids(rgb: ArrayLike) -> ArrayLike:
    """Decode an H x W x 3 RGB mask (numpy or torch, uint8) into int32 ids R + G*256."""
    if rgb.ndim != 3 or rgb.shape[-1] < 3:
        raise ValueError(f"expected an H x W x 3 RGB mask, got shape {tuple(rgb.shape)}")
    if isinstance(rgb, np.ndarray):
        return rgb[..., 0].astype(np.int32) + rgb[..., 1].astype(np.int32) * 256
    import torch

    return rgb[..., 0].to(torch.int32) + rgb[..., 1].to(torch.int32) * 256


def ids_to_rgb(ids: ArrayLike) -> ArrayLike:
    """Encode integer ids (numpy or torch, H x W) as an H x W x 3 uint8 RGB mask."""
    if isinstance(ids, np.ndarray):
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
            raise ValueError(f"segment ids must lie in 0..{MAX_ID}, got {ids.min()}..{ids.max()}")
        rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
        rgb[..., 0] = ids & 255
        rgb[..., 1] = ids >> 8
        return rgb
    import torch

    ids = ids.to(torch.int64)
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > MAX_ID):
        raise ValueError(f"segment ids must lie in 0..{MAX_ID}")
    return torch.stack([ids & 255, ids >> 8, torch.zeros_like(ids)], dim=-1).to(torch.uint8)


def ids_to_index(ids: ArrayLike, num_classes: int, source: str | os.PathLike = "mask") -> ArrayLike:
    """Map challenge ids to a uint8 class-index map: id k+1 -> k+1, 0 -> 0, 1000 -> IGNORE_INDEX.

    With K = num_classes + 1 indices, the index of a pixel equals its id, except the ignore band.
    Any other id is an error naming `source`.
    """
    if num_classes + 1 > IGNORE_INDEX:
        raise ValueError(f"{num_classes} classes do not fit a uint8 index map")
    if isinstance(ids, np.ndarray):
        bad = (ids != IGNORE_ID) & ((ids < 0) | (ids > num_classes))
        if bad.any():
            raise ValueError(
                f"{source}: holds segment ids {sorted(set(np.unique(ids[bad]).tolist()))[:10]}, "
                f"outside 0..{num_classes} and not {IGNORE_ID}; check the mask encoding (id = R + G*256)"
            )
        index = np.where(ids == IGNORE_ID, IGNORE_INDEX, ids)
        return index.astype(np.uint8)
    import torch

    bad = (ids != IGNORE_ID) & ((ids < 0) | (ids > num_classes))
    if bool(bad.any()):
        raise ValueError(f"{source}: holds segment ids outside 0..{num_classes} and not {IGNORE_ID}")
    return torch.where(ids == IGNORE_ID, torch.full_like(ids, IGNORE_INDEX), ids).to(torch.uint8)


def index_to_ids(index: ArrayLike) -> ArrayLike:
    """Inverse of `ids_to_index`: IGNORE_INDEX -> 1000, every other index is its own id."""
    if isinstance(index, np.ndarray):
        ids = index.astype(np.int32)
        ids[index == IGNORE_INDEX] = IGNORE_ID
        return ids
    import torch

    ids = index.to(torch.int32)
    ids[index == IGNORE_INDEX] = IGNORE_ID
    return ids


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a challenge mask PNG as an H x W int32 id map; errors name the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "I", "I;16", "P") and im.mode != "P":
                # A single-channel mask stores ids directly.
                return np.asarray(im, dtype=np.int32)
            rgb = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask file not found") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot be read as a PNG mask ({e}); replace the file") from None
    return rgb_to_ids(rgb)


def _colour(code: int) -> str:
    return f"({code & 255}, {(code >> 8) & 255}, {code >> 16})"


def read_label_mask(path: str | os.PathLike, class_id: int, num_classes: int) -> np.ndarray:
    """A labeled image's mask as a uint8 class-index map (see `ids_to_index`), its colours checked.

    A labeled image has one class: its mask may hold only background (0, 0, 0), its class
    (class_id + 1, 0, 0) and ignore (232, 3, 0). Any other colour is an error naming the file, the
    colours and their pixel counts (class_id < 0: any class of the dataset is accepted).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if im.mode in ("L", "I", "I;16"):
                code = np.asarray(im, dtype=np.int32)  # a single-channel mask stores ids directly
            else:
                rgb = np.asarray(im.convert("RGB")).astype(np.int32)
                code = rgb[..., 0] + (rgb[..., 1] << 8) + (rgb[..., 2] << 16)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: mask file not found") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        raise ValueError(f"{path}: cannot be read as a PNG mask ({type(e).__name__}: {e}); replace the file") from None
    ok = (code == BACKGROUND_ID) | (code == IGNORE_ID)
    ok |= (code >= 1) & (code <= num_classes) if class_id < 0 else code == class_to_id(class_id)
    if not ok.all():
        values, counts = np.unique(code[~ok], return_counts=True)
        order = np.argsort(-counts)[:6]
        found = ", ".join(
            f"{_colour(int(values[i]))} x {counts[i]} px"
            + (f" (class {int(values[i]) - 1})" if 1 <= values[i] <= num_classes else " (no id of this dataset)")
            for i in order)
        own = f"its class {_colour(class_to_id(class_id))}" if class_id >= 0 else f"a class 1..{num_classes}"
        raise ValueError(
            f"{path}: the mask holds colours other than background (0, 0, 0), {own} and ignore (232, 3, 0): "
            f"{found}. Each labeled image shows one class, with id = R + G*256; fix the mask (no "
            "anti-aliasing, nearest-neighbour resizing) or remove its entry from the annotation JSON")
    return ids_to_index(code, num_classes, source=path)


def write_mask(path: str | os.PathLike, ids: ArrayLike) -> None:
    """Write an id map (numpy or torch, H x W) as an RGB PNG encoding id = R + G*256."""
    if not isinstance(ids, np.ndarray):
        ids = ids.cpu().numpy()
    Image.fromarray(ids_to_rgb(ids), mode="RGB").save(path, format="PNG", compress_level=1)
