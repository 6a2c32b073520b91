"""Decoded-image cache: decode every image once, keep uint8 tensors in one file per split and size.

Training then reads batches from memory instead of decoding JPEGs every epoch.

Images are squashed to size x size (aspect ratio NOT kept, nothing cropped), so every pixel of
the original is in the cached image. Masks are squashed the same way with NEAREST (no blended
class values). At prediction time, outputs at size x size are resized back to the original
(H, W) stored in `CachedImages.sizes`.

One file per split and size: `cache_dir / f"{name}_{size}.pt"`, holding a fingerprint of the
inputs (files' paths, sizes, mtimes, labels, mask files, size, num_classes, ...). A file whose
fingerprint differs, or that cannot be read, is rebuilt.

Decoding runs in threads (PIL releases the GIL): one per core on local disk, more on a network
mount (Drive, /kaggle/input, FUSE/NFS/SMB), where each file read waits on the network.
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from . import discovery
from .checkpoints import save_checkpoint
from .images import load_image_with_size
from .masks import IGNORE_INDEX, read_label_mask

CACHE_VERSION = 1  # bump when the content of a cache file changes meaning
NETWORK_FS = ("fuse", "nfs", "cifs", "smb", "9p", "sshfs", "gcsfuse", "afs", "ceph", "lustre")


def _mount_table() -> list[tuple[str, str]]:
    """(mount point, file-system type) of every mount, from /proc/mounts (empty where there is none)."""
    try:
        lines = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return []
    return [(parts[1].replace("\\040", " "), parts[2]) for parts in map(str.split, lines) if len(parts) > 2]


def on_network_mount(path: str | os.PathLike) -> bool:
    """Whether a file sits on Drive, /kaggle/input or a network/FUSE file system (slow per-file reads)."""
    path = Path(os.path.abspath(path))
    if any(path.is_relative_to(base) for base in (discovery.COLAB_DRIVE.parent, discovery.KAGGLE_INPUT)):
        return True
    mounts = [(m, fs) for m, fs in _mount_table() if path.is_relative_to(m)]
    return bool(mounts) and max(mounts, key=lambda m: len(m[0]))[1].lower().startswith(NETWORK_FS)


def io_workers(path: str | os.PathLike | None) -> int:
    """Decoding threads for files like `path`: the core count, at least 16 (4 per core) on a network mount."""
    cores = os.cpu_count() or 1
    return max(16, 4 * cores) if path is not None and on_network_mount(path) else cores


@dataclass
class CachedImages:
    """Decoded split: images uint8 [N,3,S,S], masks uint8 [N,S,S] or None, labels int64 [N]."""

    images: torch.Tensor
    masks: torch.Tensor | None
    labels: torch.Tensor
    keys: list[str]
    sizes: list[tuple[int, int]]  # original (height, width) of each image
    files: list[str]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out at build time

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    @property
    def size(self) -> int:
        """Side S of the cached square images."""
        return int(self.images.shape[-1])

    def subset(self, indices: Sequence[int] | torch.Tensor) -> CachedImages:
        """A new CachedImages holding only `indices` (ints or a bool mask), in that order."""
        idx = torch.as_tensor(indices)
        if idx.dtype == torch.bool:
            if idx.numel() != len(self):
                raise ValueError(f"bool mask has {idx.numel()} entries for {len(self)} images")
            idx = idx.nonzero().flatten()
        idx = idx.to(torch.long).flatten()
        if idx.numel() and (int(idx.min()) < -len(self) or int(idx.max()) >= len(self)):
            raise IndexError(f"subset indices out of range for {len(self)} images")
        cpu_idx = idx.tolist()
        dev_idx = idx.to(self.images.device)
        return CachedImages(
            images=self.images[dev_idx],
            masks=None if self.masks is None else self.masks[dev_idx],
            labels=self.labels[dev_idx],
            keys=[self.keys[i] for i in cpu_idx],
            sizes=[self.sizes[i] for i in cpu_idx],
            files=[self.files[i] for i in cpu_idx],
            skipped=list(self.skipped),
        )

    @classmethod
    def concat(cls, *parts: CachedImages) -> CachedImages:
        """Join several CachedImages of the same size; parts without masks get all-ignore masks."""
        if not parts:
            raise ValueError("concat needs at least one CachedImages")
        sizes = {p.size for p in parts}
        if len(sizes) != 1:
            raise ValueError(f"cannot concat caches of different image sizes {sorted(sizes)}")
        if all(p.masks is None for p in parts):
            masks = None
        else:
            masks = torch.cat([
                p.masks if p.masks is not None
                else torch.full((len(p), p.size, p.size), IGNORE_INDEX, dtype=torch.uint8,
                                device=p.images.device)
                for p in parts])
        return cls(
            images=torch.cat([p.images for p in parts]),
            masks=masks,
            labels=torch.cat([p.labels for p in parts]),
            keys=[k for p in parts for k in p.keys],
            sizes=[s for p in parts for s in p.sizes],
            files=[f for p in parts for f in p.files],
            skipped=[s for p in parts for s in p.skipped],
        )

    def to(self, device: str | torch.device, non_blocking: bool = False) -> CachedImages:
        """A copy with the tensors on `device` (lists are shared)."""
        return CachedImages(
            images=self.images.to(device, non_blocking=non_blocking),
            masks=None if self.masks is None else self.masks.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            keys=self.keys, sizes=self.sizes, files=self.files, skipped=self.skipped,
        )


def concat(*parts: CachedImages) -> CachedImages:
    """Join several CachedImages (see `CachedImages.concat`)."""
    return CachedImages.concat(*parts)


def cache_path(cache_dir: str | os.PathLike, name: str, size: int) -> Path:
    """File of the cache of split `name` at `size`."""
    if not name or any(c in name for c in "/\\") or name in (".", ".."):
        raise ValueError(f"cache name {name!r} must be a plain file name (no folders)")
    return Path(cache_dir) / f"{name}_{size}.pt"


def _stat(path: Any) -> tuple[int, int]:
    """(size, mtime_ns) of a file, (-1, -1) if it is missing (it then fails at decoding)."""
    if path is None:
        return (-2, -2)
    try:
        st = os.stat(path)
    except OSError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def fingerprint(samples: Sequence[Any], size: int, with_masks: bool, num_classes: int,
                skip_broken: bool = False) -> str:
    """Hash of everything a cache file depends on: settings and each sample's files and label."""
    h = hashlib.sha256()
    h.update(repr((CACHE_VERSION, int(size), bool(with_masks), int(num_classes),
                   bool(skip_broken), len(samples))).encode())
    for s in samples:
        mask = s.mask if with_masks else None
        entry = (s.key, str(s.image), _stat(s.image), int(s.label),
                 str(mask) if mask is not None else None, _stat(mask))
        h.update(repr(entry).encode())
        h.update(b"\n")
    return h.hexdigest()


def _resize_image(img: Image.Image, size: int) -> np.ndarray:
    """Squash an RGB image to size x size (antialiased bilinear) as a uint8 [3,S,S] array."""
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _load_mask(sample: Any, hw: tuple[int, int], size: int, num_classes: int) -> np.ndarray:
    """Read a sample's mask as a class-index map squashed (NEAREST) to size x size."""
    index = read_label_mask(sample.mask, sample.label, num_classes)
    if index.shape != hw:
        raise ValueError(
            f"{sample.mask}: mask is {index.shape[1]}x{index.shape[0]} (WxH) but its image "
            f"{sample.image} is {hw[1]}x{hw[0]}; masks must follow the image's stored pixel grid "
            f"(no EXIF rotation). Fix or regenerate the mask.")
    if index.shape != (size, size):
        index = np.asarray(Image.fromarray(index, mode="L").resize(
            (size, size), Image.Resampling.NEAREST))
    return index


def _build(samples: Sequence[Any], size: int, num_classes: int, with_masks: bool,
           skip_broken: bool, progress: bool, workers: int | None, desc: str) -> dict:
    """Decode all samples in parallel threads into preallocated uint8 tensors."""
    n = len(samples)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    masks = torch.full((n, size, size), IGNORE_INDEX, dtype=torch.uint8) if with_masks else None
    images_np = images.numpy()
    masks_np = masks.numpy() if masks is not None else None
    sizes: list[tuple[int, int] | None] = [None] * n
    broken: dict[int, str] = {}
    lock = threading.Lock()

    def work(i: int) -> None:
        s = samples[i]
        try:
            img, hw = load_image_with_size(s.image, draft_size=size)
        except (FileNotFoundError, ValueError) as e:  # ImageLoadError is a ValueError
            if not skip_broken:
                raise
            with lock:
                broken[i] = f"{s.image} ({e})"
            return
        images_np[i] = _resize_image(img, size)
        sizes[i] = hw
        if masks_np is not None and s.mask is not None:
            masks_np[i] = _load_mask(s, hw, size, num_classes)

    workers = max(1, workers or os.cpu_count() or 1)
    bar = tqdm(total=n, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(work, i) for i in range(n)]
            for f in futures:
                f.add_done_callback(lambda _f: bar.update(1))
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = [f for f in futures if f.done() and not f.cancelled() and f.exception()]
            if failed:
                for f in futures:
                    f.cancel()
                raise failed[0].exception()
    finally:
        bar.close()

    keep = [i for i in range(n) if i not in broken]
    if len(keep) < n:
        idx = torch.tensor(keep, dtype=torch.long)
        images = images[idx]  # advanced indexing copies: the saved file holds only kept rows
        masks = masks[idx] if masks is not None else None
    return {
        "images": images,
        "masks": masks,
        "labels": torch.tensor([int(samples[i].label) for i in keep], dtype=torch.int64),
        "keys": [str(samples[i].key) for i in keep],
        "sizes": torch.tensor([sizes[i] for i in keep], dtype=torch.int64).reshape(-1, 2),
        "files": [str(samples[i].image) for i in keep],
        "skipped": [broken[i] for i in sorted(broken)],
    }


def _from_payload(payload: dict) -> CachedImages:
    """CachedImages from a saved or freshly built payload dict."""
    return CachedImages(
        images=payload["images"],
        masks=payload["masks"],
        labels=payload["labels"],
        keys=list(payload["keys"]),
        sizes=[(int(h), int(w)) for h, w in payload["sizes"].tolist()],
        files=list(payload["files"]),
        skipped=list(payload["skipped"]),
    )


def _read(path: Path, fp: str, size: int, with_masks: bool) -> tuple[CachedImages | None, str]:
    """Load a cache file; (None, reason) if it is missing, unreadable or stale."""
    if not path.exists():
        return None, "no cache file yet"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(payload, dict) or payload.get("version") != CACHE_VERSION:
            return None, "cache file has another format version"
        if payload.get("fingerprint") != fp:
            return None, "the images, labels, masks or settings changed since it was built"
        cached = _from_payload(payload)
        n = len(cached.keys)
        ok = (cached.images.dtype == torch.uint8 and tuple(cached.images.shape) == (n, 3, size, size)
              and cached.labels.shape == (n,) and len(cached.sizes) == n and len(cached.files) == n
              and (cached.masks is None) != with_masks
              and (cached.masks is None or tuple(cached.masks.shape) == (n, size, size)))
        if not ok:
            return None, "cache file content is inconsistent"
        return cached, ""
    except Exception as e:  # truncated zip, pickle errors, missing keys, ...
        return None, f"cache file is unreadable ({type(e).__name__}: {e})"


def load_cached(samples: Sequence[Any], size: int, cache_dir: str | os.PathLike, name: str,
                num_classes: int, with_masks: bool = False, progress: bool = True,
                skip_broken: bool = False, workers: int | None = None) -> CachedImages:
    """Decoded images of `samples` at size x size, from `cache_dir/{name}_{size}.pt` or built.

    samples: objects with .key, .image, .mask (Path or None) and .label (-1 unknown).
    with_masks: also cache class-index masks (0 bg, k+1 class k, 255 ignore); samples without a
      mask get an all-255 (ignore) mask.
    skip_broken: leave out files that are missing or cannot be decoded, and report them (use it
      for the unlabeled split); False (labeled and test splits) raises an error naming the file.
    workers: decoding threads (PIL releases the GIL); default `io_workers`: os.cpu_count(), at
      least 16 on a network mount.
    """
    size = int(size)
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    path = cache_path(cache_dir, name, size)
    fp = fingerprint(samples, size, with_masks, num_classes, skip_broken)
    cached, reason = _read(path, fp, size, with_masks)
    if cached is not None:
        if cached.skipped:
            print(f"{path.name}: {len(cached.skipped)} unreadable files were left out when it was built")
        return cached

    print(f"building {path} ({len(samples)} images at {size}x{size}): {reason}")
    if not workers and samples and on_network_mount(samples[0].image):
        workers = io_workers(samples[0].image)
        print(f"  {Path(samples[0].image).parent} is on a network mount: reading with {workers} threads")
    payload = _build(samples, size, num_classes, with_masks, skip_broken, progress, workers,
                     desc=f"caching {name}")
    if payload["skipped"]:
        shown = "; ".join(payload["skipped"][:5])
        more = f" and {len(payload['skipped']) - 5} more" if len(payload["skipped"]) > 5 else ""
        print(f"skipped {len(payload['skipped'])} unreadable files: {shown}{more}")
    payload.update(version=CACHE_VERSION, fingerprint=fp, size=size, num_classes=int(num_classes))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, payload)
    return _from_payload(payload)
