"""Robust image loading: open by content, convert any mode to RGB, never rotate by EXIF.

The challenge data holds files that are not what their name says (grayscale and CMYK JPEGs,
PNGs named .JPEG, RGBA PNGs and GIFs named .jpg). `load_image` handles all of them:

- the format is detected from the bytes, never from the extension;
- EXIF orientation is ignored on purpose: the masks follow the stored pixel grid;
- grayscale (1, L, I, I;16) is replicated to 3 channels, 16-bit values scaled to 8 bits;
- CMYK, YCbCr, ... are converted by PIL;
- images with alpha (RGBA, LA, PA, P with a transparent colour) are composited on black:
  fully transparent pixels become (0, 0, 0) whatever colour the file stores under them;
- animated GIFs give their first frame;
- a truncated file loads with its missing part filled in, and a warning naming it;
- an empty file, a file that is no image, or one over PIL's decompression-bomb limit raises
  ImageLoadError naming the file and what to do.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"})

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_truncated_lock = threading.Lock()
_truncated_users = 0
_truncated_saved = False


class ImageLoadError(ValueError):
    """An image file exists but cannot be decoded."""


def is_image_file(path: str | os.PathLike) -> bool:
    """True if the name ends with one of IMAGE_EXTENSIONS (any case) and is not hidden (macOS `._x.JPEG`)."""
    name = Path(path).name
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS


def _not_found(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"{path}: image file not found; check that the data folder is complete "
        f"(re-download or re-extract it) or remove the entry that points to it"
    )


def _undecodable(path: Path, err: BaseException) -> ImageLoadError:
    """The error for a file that is not a decodable image, with what to do about it."""
    if isinstance(err, Image.DecompressionBombError):
        return ImageLoadError(
            f"{path}: refused as a possible decompression bomb ({err}). If the image is genuine, allow "
            "it with `PIL.Image.MAX_IMAGE_PIXELS = None` before loading; else replace the file")
    try:
        empty = path.is_file() and path.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        return ImageLoadError(f"{path}: the file is empty (0 bytes), an incomplete download or extraction; "
                              "replace it with a good copy")
    return ImageLoadError(
        f"{path}: cannot be decoded as an image ({type(err).__name__}: {err}); replace it with a good "
        "copy, or delete it if it is not an image of the dataset"
    )


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """Original (height, width) of an image, read from its header only (no decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise _not_found(path) from None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise _undecodable(path, e) from None
    return height, width


class _LoadTruncated:
    """Context that enables PIL's global LOAD_TRUNCATED_IMAGES, safe across threads.

    The flag is module-global in PIL; a counter makes sure that overlapping uses from several
    threads restore the caller's original value only when the last one leaves.
    """

    def __enter__(self) -> None:
        global _truncated_users, _truncated_saved
        with _truncated_lock:
            if _truncated_users == 0:
                _truncated_saved = ImageFile.LOAD_TRUNCATED_IMAGES
            _truncated_users += 1
            ImageFile.LOAD_TRUNCATED_IMAGES = True

    def __exit__(self, *exc) -> None:
        global _truncated_users
        with _truncated_lock:
            _truncated_users -= 1
            if _truncated_users == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES = _truncated_saved


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert a loaded PIL image of any mode to a new RGB image (see the module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode.startswith("I;16"):
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        elif mode == "F":
            arr8 = np.clip(np.nan_to_num(arr), 0, 255).astype(np.uint8)
        else:
            # 32-bit "I": older PIL opens 16-bit PNGs this way; 8-bit data stays as it is.
            arr = arr.astype(np.int64)
            if arr.size and arr.max() > 255:
                arr = arr // 257
            arr8 = np.clip(arr, 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(arr8[..., None], 3, axis=2), mode="RGB")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def _decode(path: Path, draft_size: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Open, draft, load and convert one file; PIL exceptions pass through."""
    with Image.open(path) as im:
        width, height = im.size
        if draft_size is not None and im.format in ("JPEG", "MPO"):  # MPO: multi-picture JPEG
            im.draft("RGB", (draft_size, draft_size))
        im.load()
        return _to_rgb(im), (height, width)


def load_image_with_size(
    path: str | os.PathLike, draft_size: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """Load an image as RGB (see `load_image`) and also return its original (height, width)."""
    path = Path(path)
    try:
        return _decode(path, draft_size)
    except FileNotFoundError:
        raise _not_found(path) from None
    except IsADirectoryError as e:
        raise _undecodable(path, e) from None
    except MemoryError:
        raise
    except OSError as first:
        # Decoding errors (typically "image file is truncated") are OSErrors: retry once
        # accepting a truncated stream; anything that still fails is not an image.
        try:
            with _LoadTruncated():
                result = _decode(path, draft_size)
        except Exception:
            raise _undecodable(path, first) from None
        warnings.warn(
            f"{path}: image file is truncated or damaged ({first}); loaded with the missing "
            f"part filled in. Replace the file if you can.",
            stacklevel=2,
        )
        return result
    except Exception as e:  # SyntaxError, ValueError, EOFError, DecompressionBombError, ...
        raise _undecodable(path, e) from None


def load_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """Load any image file as a PIL RGB image, by content, without EXIF rotation.

    `draft_size`: for JPEGs, let the decoder work at a reduced DCT scale (1/2, 1/4, 1/8) that
    still gives at least draft_size pixels on each side; much faster when the image is going
    to be shrunk anyway. The returned image is then smaller than the file's original size; use
    `image_size` or `load_image_with_size` for the original size.
    Raises FileNotFoundError or ImageLoadError (a ValueError), both naming the file.
    """
    return load_image_with_size(path, draft_size)[0]
