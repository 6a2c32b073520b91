"""Training throughput: the on-device cache engine (helpers.classification.fit) vs a conventional JPEG pipeline.

Both train the preset's model (at the cpu preset: resnet18 at 64 px, batch 32, AdamW) for the same
epochs over the same JPEG files, in the same precision and memory format (helpers.hardware: fp32 on
the CPU; `--bf16` for bf16 autocast + channels_last on CPUs with bf16 instructions):

  fast:          decode once into the uint8 cache (timed separately), then fit(): batches indexed
                 from the cache on the device, batched augmentation on the device, no DataLoader
  conventional:  a torch Dataset that opens each JPEG with PIL every epoch + torchvision transforms
                 (RandomResizedCrop, flip, ColorJitter, ToTensor, Normalize) in DataLoader workers

Images/s of the best epoch of each (least disturbed by other load) is printed, with the ratio and the share of step time spent
outside forward/backward/optimizer; then the data pipelines alone (no model), which bound what a
fast GPU can be fed. Files: N synthetic JPEGs of the real data's typical size (about 500x375,
CHALLENGE.md) written to a temporary folder, or the images of `--data-root` (the demo's images are
smaller, 160x120 to 400x320, so they flatter the conventional pipeline).

    python benchmarks/bench_training.py --preset cpu --epochs 3 --images 512
    python benchmarks/bench_training.py --preset cpu --epochs 3 --data-root data/demo/ImageNet-Subset
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.cache import load_cached  # noqa: E402
from helpers.classification import fit  # noqa: E402
from helpers.config import get_config, seed_everything  # noqa: E402
from helpers.data import Sample, load_index  # noqa: E402
from helpers.engine import build_optimizer  # noqa: E402
from helpers.hardware import autocast, describe, resolve, to_layout  # noqa: E402
from helpers.images import load_image  # noqa: E402
from helpers.models import build_classifier, model_spec  # noqa: E402


def synthetic_jpegs(folder: Path, n: int, num_classes: int, seed: int = 0) -> list[Sample]:
    """Write n random ~500x375 JPEGs (smooth colour blobs + noise, class = dominant tint)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(n):
        w, h = int(rng.integers(450, 551)), int(rng.integers(335, 416))
        label = i % num_classes
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-20, 21, (h, w, 3))
        arr[..., label % 3] += 40
        path = folder / f"img_{i:05d}.JPEG"
        Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        samples.append(Sample(key=f"img_{i:05d}", image=path, mask=None, label=label))
    return samples


def demo_samples(root: Path, n: int) -> tuple[list[Sample], int]:
    """Up to n demo files: the labeled ones, then unlabeled ones with stand-in labels."""
    index = load_index(root)
    samples = list(index.labeled)
    for i, s in enumerate(index.unlabeled):
        samples.append(Sample(key=s.key, image=s.image, mask=None, label=i % index.num_classes))
    return samples[:n], index.num_classes


class JpegDataset(torch.utils.data.Dataset):
    """The conventional pipeline: decode the JPEG with PIL on every access, then torchvision transforms."""

    def __init__(self, samples: list[Sample], size: int):
        from torchvision import transforms as T

        self.samples = samples
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=(0.35, 1.0)),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.2, 0.2, 0.2, 0.02),
            T.ToTensor(),
            T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
        ])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        return self.transform(load_image(s.image)), s.label


def conventional(samples: list[Sample], cfg, num_classes: int, epochs: int, workers: int) -> list[dict]:
    """Train with DataLoader + PIL decoding each epoch; per-epoch images/s and data share."""
    device, dtype, channels_last = resolve(cfg)
    model = build_classifier(cfg.arch, num_classes, cfg.small_stem).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg)
    loader = torch.utils.data.DataLoader(
        JpegDataset(samples, cfg.image_size), batch_size=cfg.batch_size, shuffle=True, drop_last=True,
        num_workers=workers, persistent_workers=workers > 0, pin_memory=device.type == "cuda")
    out = []
    for epoch in range(epochs):
        model.train()
        data_time = seen = 0
        t_epoch = time.perf_counter()
        t0 = time.perf_counter()
        for x, y in loader:
            x, y = to_layout(x.to(device, non_blocking=True), channels_last), y.to(device, non_blocking=True)
            t1 = time.perf_counter()
            data_time += t1 - t0
            with autocast(device, dtype):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seen += x.shape[0]
            t0 = time.perf_counter()
        seconds = time.perf_counter() - t_epoch
        out.append({"epoch": epoch + 1, "images_per_s": seen / seconds, "data_share": data_time / seconds,
                    "seconds": seconds})
        print(f"  conventional epoch {epoch + 1}: {seen / seconds:7.1f} img/s, "
              f"data share {data_time / seconds:.1%}, {seconds:.1f} s")
    return out


def data_only(samples: list[Sample], cache, cfg, workers: int, repeats: int = 3) -> tuple[float, float]:
    """Best-of-`repeats` images/s of producing augmented batches alone (no model): (fast, conventional)."""
    from helpers.augment import weak_augment

    device = torch.device(cfg.device)
    images = cache.images.to(device)
    gen = torch.Generator().manual_seed(0)
    batch, n = cfg.batch_size, len(samples)
    steps = n // batch
    loader = torch.utils.data.DataLoader(JpegDataset(samples, cfg.image_size), batch_size=batch, shuffle=True,
                                         drop_last=True, num_workers=workers, persistent_workers=workers > 0)
    fast, conv = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        perm = torch.randperm(n, generator=gen)
        for i in range(steps):
            idx = perm[i * batch:(i + 1) * batch].to(device)
            x, _ = weak_augment(images[idx], None, cfg.image_size, gen)
        if device.type == "cuda":
            torch.cuda.synchronize()
        fast.append(steps * batch / (time.perf_counter() - t))
        t = time.perf_counter()
        seen = 0
        for x, _ in loader:
            seen += x.to(device).shape[0]
        conv.append(seen / (time.perf_counter() - t))
    return max(fast), max(conv)


def main(argv: list[str] | None = None) -> dict:
    """Run both pipelines and print the comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--images", type=int, default=512, help="number of JPEG files to train on")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the conventional pipeline")
    ap.add_argument("--device", default="", help="default: the preset's (cuda if available)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads of the main process (0: default)")
    ap.add_argument("--classes", type=int, default=10, help="classes of the synthetic data")
    ap.add_argument("--data-root", default="", help="an ImageNet-Subset folder (default: synthetic ~500x375 JPEGs)")
    ap.add_argument("--bf16", action="store_true", help="cfg.cpu_bf16: bf16 autocast + channels_last on the CPU")
    args = ap.parse_args(argv)

    overrides = {"device": args.device} if args.device else {}
    if args.bf16:
        overrides["cpu_bf16"] = True
    if args.threads:
        overrides["num_threads"] = args.threads
    cfg = get_config(args.preset, prepare_data=False, **overrides)
    seed_everything(cfg.seed)
    demo = Path(args.data_root) if args.data_root else None
    if demo is not None and not demo.is_dir():
        ap.error(f"--data-root {demo} is not a folder: give an ImageNet-Subset folder, e.g. "
                 f"data/demo/ImageNet-Subset (`python -m helpers.demo` writes it)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if demo is not None:
            samples, num_classes = demo_samples(demo, args.images)
            source = str(demo)
        else:
            t = time.perf_counter()
            num_classes = args.classes
            samples = synthetic_jpegs(tmp / "jpegs", args.images, num_classes)
            source = f"synthetic JPEGs (~500x375, written in {time.perf_counter() - t:.1f} s)"
        cfg.run_dir = tmp / "runs"
        batch = min(cfg.batch_size, len(samples))
        cfg.batch_size = batch
        print(f"{describe(cfg)}; {len(samples)} images from {source}")
        print(f"model {cfg.arch} small_stem={cfg.small_stem} at {cfg.image_size} px, batch {batch}, "
              f"{args.epochs} epochs, optimizer {cfg.optimizer}")

        t = time.perf_counter()
        cache = load_cached(samples, cfg.image_size, tmp / "cache", "bench", num_classes, progress=False)
        decode_s = time.perf_counter() - t
        print(f"  fast: decode once into the cache: {decode_s:.1f} s ({len(samples) / decode_s:.0f} img/s)")
        model = build_classifier(cfg.arch, num_classes, cfg.small_stem)
        model.spec = model_spec(cfg.arch, num_classes, cfg.small_stem, cfg.image_size,
                                [str(k) for k in range(num_classes)])
        result = fit(model, cache, None, cfg, run_name="bench", epochs=args.epochs, resume=False, progress=False)
        for h in result.history:
            print(f"  fast epoch {h['epoch']}: {h['images_per_s']:7.1f} img/s, data share {h['data_share']:.1%}, "
                  f"{h['seconds']:.1f} s")

        seed_everything(cfg.seed)
        conv = conventional(samples, cfg, num_classes, args.epochs, args.workers)
        fast_data, conv_data = data_only(samples, cache, cfg, args.workers)
        print(f"  data only (no model, best of 3 epochs of batches): fast {fast_data:.0f} img/s, "
              f"conventional {conv_data:.0f} img/s ({args.workers} workers)")

    # best epoch of each: the least disturbed by other load on the machine (epoch 1 also warms up)
    fast_best = max(result.history, key=lambda h: h["images_per_s"])
    conv_best = max(conv, key=lambda h: h["images_per_s"])
    fast_ips, conv_ips = fast_best["images_per_s"], conv_best["images_per_s"]
    summary = {
        "images": len(samples), "device": cfg.device, "hardware": describe(cfg), "decode_once_s": decode_s,
        "fast_images_per_s": fast_ips, "fast_data_share": fast_best["data_share"],
        "conventional_images_per_s": conv_ips, "conventional_data_share": conv_best["data_share"],
        "ratio": fast_ips / conv_ips,
        "fast_data_only_images_per_s": fast_data, "conventional_data_only_images_per_s": conv_data,
    }
    print(f"best epoch: fast {fast_ips:.1f} img/s (data share {summary['fast_data_share']:.1%}) vs "
          f"conventional {conv_ips:.1f} img/s (data share {summary['conventional_data_share']:.1%}): "
          f"{summary['ratio']:.2f}x")
    return summary


if __name__ == "__main__":
    main()
