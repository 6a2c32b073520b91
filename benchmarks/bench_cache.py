"""Benchmark: decoded-image cache vs. decoding the JPEGs with PIL every epoch.

    python benchmarks/bench_cache.py [--data-root DIR] [--size 64] [--epochs 3]

Measures, on the labeled + unlabeled images:
  (1) building the cache from scratch (parallel decode, JPEG draft mode, resize, torch.save);
  (2) one epoch from the cache: load the files, then iterate shuffled batches of 64 as float tensors;
  (3) one epoch decoding every JPEG with PIL (plain Dataset, DataLoader num_workers=2, batch 64).
Without --data-root it uses the demo dataset in <repo>/data/demo, generating it if missing.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from helpers.cache import CachedImages, load_cached  # noqa: E402
from helpers.data import load_index  # noqa: E402

BATCH = 64
DEFAULT_ROOT = REPO / "data" / "demo" / "ImageNet-Subset"


class PlainJpegDataset(Dataset):
    """The naive pipeline: open, convert to RGB, resize and make a tensor on every access."""

    def __init__(self, files: list[Path], labels: list[int], size: int):
        self.files, self.labels, self.size = files, labels, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as im:
            im = im.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(im).transpose(2, 0, 1).copy()), self.labels[i]


def _cache_epoch(data: CachedImages, generator: torch.Generator) -> float:
    """Iterate shuffled float batches once; returns a checksum so nothing is optimised away."""
    total = 0.0
    perm = torch.randperm(len(data), generator=generator)
    for start in range(0, len(data), BATCH):
        idx = perm[start:start + BATCH]
        x = data.images[idx].float().div_(255)
        y = data.labels[idx]
        total += float(x[:, 0, 0, 0].sum()) + float(y.sum())
    return total


def _plain_epoch(loader: DataLoader) -> float:
    """Iterate the DataLoader once, converting batches to float as training would."""
    total = 0.0
    for x, y in loader:
        x = x.float().div_(255)
        total += float(x[:, 0, 0, 0].sum()) + float(y.sum())
    return total


def _resolve_root(arg: Path | None) -> Path:
    """The data root: the argument, or the demo dataset (generated if missing)."""
    if arg is not None:
        return arg
    if DEFAULT_ROOT.is_dir():
        return DEFAULT_ROOT
    try:
        from helpers.demo import ensure_demo
    except ImportError:
        sys.exit(f"{DEFAULT_ROOT} does not exist and helpers.demo is not available; pass --data-root")
    return Path(ensure_demo(DEFAULT_ROOT.parent))


def main(argv: list[str] | None = None) -> None:
    """Run the three measurements and print a table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-root", type=Path, default=None,
                    help=f"dataset in the challenge layout (default: {DEFAULT_ROOT}, generated if missing)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="cache decoding threads (default: all cores)")
    args = ap.parse_args(argv)

    index = load_index(_resolve_root(args.data_root))
    labeled, unlabeled = index.labeled, index.unlabeled
    n = len(labeled) + len(unlabeled)
    print(f"{index.root}: {len(labeled)} labeled + {len(unlabeled)} unlabeled images, "
          f"size {args.size}, {args.epochs} epochs, torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        kw = dict(size=args.size, cache_dir=Path(tmp), num_classes=index.num_classes,
                  progress=False, workers=args.workers)
        t0 = time.perf_counter()
        load_cached(labeled, name="labeled", with_masks=True, **kw)
        load_cached(unlabeled, name="unlabeled", skip_broken=True, **kw)
        t_build = time.perf_counter() - t0
        file_mb = sum(p.stat().st_size for p in Path(tmp).glob("*.pt")) / 2**20

        t0 = time.perf_counter()
        data = CachedImages.concat(
            load_cached(labeled, name="labeled", with_masks=True, **kw),
            load_cached(unlabeled, name="unlabeled", skip_broken=True, **kw))
        t_load = time.perf_counter() - t0

    gen = torch.Generator().manual_seed(0)
    cache_epochs = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        _cache_epoch(data, gen)
        cache_epochs.append(time.perf_counter() - t0)

    files = [s.image for s in labeled] + [s.image for s in unlabeled]
    labels = [max(s.label, 0) for s in labeled] + [0] * len(unlabeled)
    loader = DataLoader(PlainJpegDataset(files, labels, args.size), batch_size=BATCH, shuffle=True,
                        num_workers=2)
    plain_epochs = []
    for _ in range(args.epochs):
        t0 = time.perf_counter()
        _plain_epoch(loader)
        plain_epochs.append(time.perf_counter() - t0)

    t_cache_epoch = float(np.mean(cache_epochs))
    t_cache = t_load + t_cache_epoch
    t_plain = float(np.mean(plain_epochs))
    rows = [
        ("(1) build cache from scratch", t_build, f"{n / t_build:,.0f} img/s, {file_mb:.1f} MiB on disk"),
        ("(2) cache: load files + 1 epoch", t_cache,
         f"load {t_load:.3f} s + epoch {t_cache_epoch:.4f} s ({n / t_cache_epoch:,.0f} img/s)"),
        ("(3) PIL decode, 1 epoch", t_plain,
         f"{n / t_plain:,.0f} img/s (epochs: {', '.join(f'{t:.2f}' for t in plain_epochs)} s)"),
    ]
    print(f"\n{'measurement':34s} {'seconds':>9s}  notes")
    for name, t, note in rows:
        print(f"{name:34s} {t:9.3f}  {note}")
    print(f"\nratio (3)/(2): {t_plain / t_cache:.1f}x   "
          f"(per epoch once loaded, (3)/epoch: {t_plain / t_cache_epoch:.0f}x)")


if __name__ == "__main__":
    main()
