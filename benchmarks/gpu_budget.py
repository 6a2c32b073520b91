"""The gpu preset on a T4, estimated on a CPU: time per notebook, checkpoint bytes, work lost when killed.

No GPU is used; nothing here is a GPU measurement. Two parts:

`time`: per training step of each training the gpu preset runs (resnet18 and its U-Net at 160 px,
batch 64, 50 classes, the real data's counts: 400 + 100 labeled, 5000 unlabeled, 752 test), the real
helpers code is run on the CPU under torch.utils.flop_counter (convolution and matmul FLOPs, forward
and backward) and an op counter (aten ops dispatched: each is one or more kernel launches on a GPU).
The JPEG decode rate into the 160 px cache is measured on ~500x375 files. These are turned into T4
seconds with two stated assumptions (THROUGHPUT and DISPATCH below): `fast` = max(compute, dispatch)
at the high throughput and low overhead, `slow` = compute + dispatch at the low throughput and
high overhead.

`checkpoints`: the real fit_task (AdamW, EMA 0.999, checkpoint_seconds=90, a mirror folder) trains
the gpu preset's models (full size: same parameters, optimizer and EMA state) on stand-in data of 16
images at 32 px, while a simulated clock advances by the `slow` T4 time of one real epoch per epoch.
The checkpoint files written are real: their bytes are counted as written, locally and to the mirror.
Work lost when killed = the longest simulated stretch between two completed saves.

    python benchmarks/gpu_budget.py time
    python benchmarks/gpu_budget.py checkpoints
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import helpers.checkpoints as checkpoints  # noqa: E402
from helpers.cache import CachedImages, load_cached  # noqa: E402
from helpers.classification import ClassificationTask, fit, predict_proba  # noqa: E402
from helpers.config import PRESETS, Config  # noqa: E402
from helpers.ema import EMA  # noqa: E402
from helpers.engine import build_optimizer  # noqa: E402
from helpers.models import build_classifier, model_spec  # noqa: E402
from helpers.segmentation import SegmentationTask, fit_segmenter, new_segmenter, validate_segmenter  # noqa: E402

# T4: 65 TFLOPS fp16 tensor-core peak (NVIDIA's specification). The share of it a training reaches
# is ASSUMED: NVIDIA's single-V100 ResNet-50 record, 1,350 img/s x 24.6 GFLOP = 33 TFLOPS, is 27 % of
# that GPU's 125 TFLOPS peak with MXNet + DALI; PyTorch eager at batch 64 on a 70 W card gets less.
THROUGHPUT = {"fast": 0.20 * 65e12, "slow": 0.08 * 65e12}
DISPATCH = {"fast": 10e-6, "slow": 25e-6}  # ASSUMED host seconds per dispatched op (2-core Colab/Kaggle host)
CLASSES, LABELED, VAL, UNLABELED, TEST = 50, 400, 100, 5000, 752
COUNT_BATCH = 16  # FLOPs are counted at this batch and scaled to the preset's (they grow linearly)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched (forward, backward, optimizer) while active."""

    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def gpu_config(**kw) -> Config:
    """The gpu preset's settings on the CPU (fp32 here: FLOPs do not depend on the dtype)."""
    return Config(**{**PRESETS["gpu"], "preset": "gpu", "device": "cpu", **kw})


def fake_images(n: int, size: int, masks: bool = False, seed: int = 0) -> CachedImages:
    """Random uint8 images with labels (and masks) in the cache's layout."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    m = None
    if masks:
        m = torch.zeros(n, size, size, dtype=torch.uint8)
        m[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = (labels + 1).to(torch.uint8)[:, None, None]
    return CachedImages(images=torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                        masks=m, labels=labels, keys=[f"f{seed}_{i}" for i in range(n)],
                        sizes=[(size, size)] * n, files=[""] * n)


def measure(fn) -> tuple[float, int]:
    """(FLOPs, ops) of one call of fn."""
    with FlopCounterMode(display=False) as flops, OpCounter() as ops:
        fn()
    return float(flops.get_total_flops()), ops.ops


def step_cost(model: nn.Module, task, cfg: Config) -> tuple[float, int]:
    """FLOPs (scaled to cfg.batch_size) and ops of one training step as helpers.engine runs it on CUDA."""
    optimizer = build_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["foreach"] = True  # CUDA's default: one kernel per op for all parameters
    ema = EMA(model, cfg.ema_decay)
    g = torch.Generator().manual_seed(0)
    task.to_device(torch.device("cpu"))
    task.start_epoch(1, COUNT_BATCH, g)

    def step():
        data = task.next_batch(0, COUNT_BATCH, g)
        loss, stats = task.step_loss(model, data, False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip, foreach=True)
        optimizer.step()
        ema.update(model)

    model.train()
    step()  # warm up (lazy optimizer state)
    flops, ops = measure(step)
    return flops * cfg.batch_size / COUNT_BATCH, ops


def forward_flops(fn, n: int) -> float:
    """FLOPs per image of a prediction call on n images."""
    return measure(fn)[0] / n


def decode_rate(tmp: Path, n: int = 96) -> dict:
    """Images/s decoding ~500x375 JPEGs into the 160 px cache, with 1 and 2 threads (this CPU)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_training import synthetic_jpegs

    samples = synthetic_jpegs(tmp / "jpegs", n, CLASSES)
    rates = {}
    for workers in (1, 2):
        t = time.perf_counter()
        load_cached(samples, 160, tmp / f"cache{workers}", "d", CLASSES, progress=False, workers=workers)
        rates[workers] = n / (time.perf_counter() - t)
    return rates


def time_budget(kept: tuple[int, ...] = (500, 1500, 5000)) -> dict:
    """T4 seconds per notebook (fast, slow) for the gpu preset on the real data's counts."""
    torch.manual_seed(0)
    cfg = gpu_config()
    size, b = cfg.image_size, cfg.batch_size
    names = [str(k) for k in range(CLASSES)]
    index = SimpleNamespace(num_classes=CLASSES, class_names=names)
    labeled, unl = fake_images(COUNT_BATCH * 2, size, masks=True), fake_images(COUNT_BATCH * 2, size, seed=1)

    def classifier():
        m = build_classifier(cfg.arch, CLASSES, cfg.small_stem)
        m.spec = model_spec(cfg.arch, CLASSES, cfg.small_stem, size, names)
        return m

    cost = {
        "classifier": step_cost(classifier(), ClassificationTask(labeled, None, cfg), cfg),
        "fixmatch": step_cost(classifier(), ClassificationTask(labeled, None, cfg, unl, 1.0, 0.8, 1), cfg),
        "unet": step_cost(new_segmenter(cfg, index), SegmentationTask(labeled, None, cfg, CLASSES), cfg),
    }
    cls_fwd = forward_flops(lambda: predict_proba(classifier(), unl, cfg, tta=False), len(unl))
    unet = new_segmenter(cfg, index).eval()
    unet_fwd = forward_flops(lambda: validate_segmenter(unet, labeled, cfg), len(labeled))
    with tempfile.TemporaryDirectory() as tmp:
        rates = decode_rate(Path(tmp))

    steps = LABELED // b
    trainings = {  # notebook: [(training, steps per epoch, epochs, validation forwards per epoch)]
        "01": [("classifier", steps, cfg.epochs, VAL * cls_fwd)],
        "03": [("unet", steps, cfg.seg_epochs, VAL * unet_fwd)] * 2,
    }
    predictions = {"01": 2 * VAL * cls_fwd, "02": (2 * 2 * UNLABELED + 4 * VAL) * cls_fwd,
                   "03": 2 * VAL * cls_fwd + 3 * 2 * VAL * unet_fwd, "04": 2 * TEST * (cls_fwd + unet_fwd)}

    def seconds(runs, extra_flops, speed):
        total, per_epoch = 0.0, []
        for name, n_steps, epochs, val_flops in runs:
            flops, ops = cost[name]
            compute = n_steps * flops / THROUGHPUT[speed] + val_flops / THROUGHPUT[speed]
            dispatch = n_steps * ops * DISPATCH[speed]
            epoch = max(compute, dispatch) if speed == "fast" else compute + dispatch
            per_epoch.append(epoch)
            total += epochs * epoch
        return total + extra_flops / THROUGHPUT[speed], per_epoch

    report = {"step_gflop": {k: v[0] / 1e9 for k, v in cost.items()},
              "step_ops": {k: v[1] for k, v in cost.items()},
              "forward_gflop_per_image": {"classifier": cls_fwd / 1e9, "unet": unet_fwd / 1e9},
              "decode_img_per_s": rates, "notebooks": {}}
    for speed in ("fast", "slow"):
        for nb, runs in trainings.items():
            report["notebooks"].setdefault(nb, {})[speed] = seconds(runs, predictions[nb], speed)
        for k in kept:
            runs = [("fixmatch", (LABELED + k) // b, cfg.pseudo_epochs, VAL * cls_fwd)]
            report["notebooks"].setdefault(f"02 (kept {k})", {})[speed] = seconds(runs, predictions["02"], speed)
        report["notebooks"].setdefault("04", {})[speed] = seconds([], predictions["04"], speed)
    return report


# ----------------------------------------------------------------------------- checkpoints
def simulate_checkpoints(epoch_seconds: dict[str, float], tmp: Path, every: float | None = None) -> dict:
    """Run the gpu preset's trainings with the real checkpoint code and a simulated T4 clock."""
    clock = [0.0]
    checkpoints._clock = lambda: clock[0]
    saves_at: list[float] = []
    real_save = checkpoints.TrainingFiles.save

    def timed_save(self, state, weights=None):
        t = time.perf_counter()
        real_save(self, state, weights)
        saves_at.append((clock[0], time.perf_counter() - t))

    checkpoints.TrainingFiles.save = timed_save
    torch.set_num_threads(2)
    size, n = 32, 16
    cfg = gpu_config(image_size=size, run_dir=tmp / "runs", mirror_dir=tmp / "drive")
    if every is not None:
        cfg.checkpoint_seconds = every
    names = [str(k) for k in range(CLASSES)]
    index = SimpleNamespace(num_classes=CLASSES, class_names=names)
    train, val, unl = fake_images(n, size, masks=True), fake_images(n, size, masks=True, seed=2), fake_images(n, size, seed=1)
    results = {}

    def run(name, seconds, fn):
        saves_at.clear()
        clock[0] = 0.0
        real_start = ClassificationTask.start_epoch, SegmentationTask.start_epoch

        def ticking(original):
            def start_epoch(self, *a, **k):
                clock[0] += seconds
                return original(self, *a, **k)
            return start_epoch

        ClassificationTask.start_epoch = ticking(real_start[0])
        SegmentationTask.start_epoch = ticking(real_start[1])
        t = time.perf_counter()
        try:
            result = fn()
        finally:
            ClassificationTask.start_epoch, SegmentationTask.start_epoch = real_start
        times = [0.0] + [at for at, _ in saves_at]
        gaps = [b - a for a, b in zip(times, times[1:])]
        stats = result.checkpoint_stats
        results[name] = {
            "epochs": len(result.history), "t4_epoch_s": seconds, "t4_training_s": clock[0],
            "saves": stats.saves, "weights_writes": stats.weights_writes,
            "state_mb": result.resume_file.stat().st_size / 1e6,
            "weights_mb": result.checkpoint.stat().st_size / 1e6,
            "bytes_local_mb": stats.bytes_local / 1e6, "bytes_mirrored_mb": stats.bytes_mirrored / 1e6,
            "longest_gap_s": max(gaps), "save_s_max": max(s for _, s in saves_at),
            "cpu_wall_s": time.perf_counter() - t,
        }
        print(name, json.dumps(results[name]), flush=True)

    def classifier():
        torch.manual_seed(0)
        m = build_classifier(cfg.arch, CLASSES, cfg.small_stem)
        m.spec = model_spec(cfg.arch, CLASSES, cfg.small_stem, size, names)
        return m

    run("01 classifier_baseline", epoch_seconds["01"],
        lambda: fit(classifier(), train, val, cfg, run_name="classifier_baseline", progress=False))
    run("02 classifier_pseudo_r1", epoch_seconds["02"],
        lambda: fit(classifier(), train, val, cfg, run_name="classifier_pseudo_r1", epochs=cfg.pseudo_epochs,
                    unlabeled=unl, progress=False))
    for name in ("unet_scratch", "unet_from_classifier"):
        run(f"03 {name}", epoch_seconds["03"],
            lambda: fit_segmenter(new_segmenter(cfg, index), train, val, cfg, run_name=name, progress=False))  # noqa: B023 - called at once
    checkpoints.TrainingFiles.save = real_save
    return results


def main(argv: list[str] | None = None) -> None:
    """Print the estimate as JSON lines (see the module docstring for what is measured and what assumed)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["time", "checkpoints"])
    ap.add_argument("--kept", type=int, default=1500, help="pseudo-labels kept in 02 (checkpoints part)")
    ap.add_argument("--speed", choices=["fast", "slow"], default="slow", help="T4 estimate that drives the clock")
    ap.add_argument("--every", type=float, default=None, help="checkpoint_seconds (default: the gpu preset's)")
    args = ap.parse_args(argv)
    report = time_budget()
    print(json.dumps({k: v for k, v in report.items() if k != "notebooks"}, indent=1))
    for nb, speeds in report["notebooks"].items():
        fast, slow = speeds["fast"][0], speeds["slow"][0]
        print(f"notebook {nb}: GPU work {fast / 60:.1f}-{slow / 60:.1f} min; epoch "
              f"{[round(e, 2) for e in speeds['fast'][1]]}-{[round(e, 2) for e in speeds['slow'][1]]} s")
    if args.part == "checkpoints":
        epoch_s = {nb[:2]: speeds[args.speed][1][0] for nb, speeds in report["notebooks"].items()
                   if speeds[args.speed][1] and (nb[:2] != "02" or nb == f"02 (kept {args.kept})")}
        with tempfile.TemporaryDirectory() as tmp:
            results = simulate_checkpoints(epoch_s, Path(tmp), args.every)
        total_local = sum(r["bytes_local_mb"] for r in results.values())
        total_mirror = sum(r["bytes_mirrored_mb"] for r in results.values())
        every_epoch = sum(r["epochs"] * (r["state_mb"] + r["weights_mb"]) for r in results.values())
        print(f"checkpoint bytes written: {total_local / 1e3:.2f} GB locally + {total_mirror / 1e3:.2f} GB to "
              f"the mirror; the old policy (a full checkpoint every epoch): {every_epoch / 1e3:.0f} GB")
        print(f"work lost when killed, at most: {max(r['longest_gap_s'] for r in results.values()):.0f} s of "
              f"simulated T4 training (+ the save itself, at most "
              f"{max(r['save_s_max'] for r in results.values()):.1f} s here)")
        if not math.isfinite(total_local):
            raise SystemExit(1)


if __name__ == "__main__":
    main()
