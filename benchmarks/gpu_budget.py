"""The gpu preset on a T4, estimated on a CPU: time per notebook, checkpoint bytes, work lost when killed.

No GPU is used; nothing here is a GPU measurement. Both parts follow `plan()`: every training a
default gpu-preset run of notebooks 01-05 makes on the real data's counts (400 + 100 labeled,
5,000 unlabeled, 752 test; resnet18 and its U-Net at 160 px, batch 64, SimCLR at batch 256,
50 classes; 05's final fit, on in the gpu preset, trains the chosen recipe again on all 500).

`time`: one training step of each kind (classifier, FixMatch, U-Net, SimCLR, and the opt-in
semi-supervised U-Net) runs through the real helpers code on the CPU under
torch.utils.flop_counter (convolution and matmul FLOPs, forward and backward) and an op counter
(aten ops dispatched: each is one or more kernel launches on a GPU). The JPEG decode rate into
the 160 px cache is measured on ~500x375 files. These become T4 seconds with two stated
assumptions (THROUGHPUT and DISPATCH below): `fast` = max(compute, dispatch) at the high
throughput and low overhead, `slow` = compute + dispatch at the low throughput and high overhead.

`checkpoints`: the real trainings (helpers.classification.fit, helpers.selfsup.pretrain,
helpers.segmentation.fit_segmenter; full-size models, AdamW, EMA 0.999 where the preset has it,
a mirror folder) run on stand-in data of 16 images at 32 px, while a simulated clock advances by
the estimated T4 time of one real epoch per epoch. The checkpoint files written are real: their
bytes are counted as written, locally and to the mirror. Work lost when killed = the longest
simulated stretch between two completed saves.

    python benchmarks/gpu_budget.py time
    python benchmarks/gpu_budget.py checkpoints [--speed slow|fast] [--kept 1500]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
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
from helpers.engine import TrainTask, build_optimizer  # noqa: E402
from helpers.models import build_classifier, model_spec  # noqa: E402
from helpers.segmentation import SegmentationTask, fit_segmenter, new_segmenter, validate_segmenter  # noqa: E402
from helpers.selfsup import ContrastiveTask, new_ssl_model, pretrain  # noqa: E402

# T4: 65 TFLOPS fp16 tensor-core peak (NVIDIA's specification). The share of it a training reaches
# is ASSUMED: NVIDIA's single-V100 ResNet-50 record, 1,350 img/s x 24.6 GFLOP = 33 TFLOPS, is 27 % of
# that GPU's 125 TFLOPS peak with MXNet + DALI; PyTorch eager at batch 64 on a 70 W card gets less.
THROUGHPUT = {"fast": 0.20 * 65e12, "slow": 0.08 * 65e12}
DISPATCH = {"fast": 10e-6, "slow": 25e-6}  # ASSUMED host seconds per dispatched op (2-core Colab/Kaggle host)
CLASSES, LABELED, VAL, UNLABELED, TEST = 50, 400, 100, 5000, 752
COUNT_BATCH = 16  # FLOPs are counted at this batch and scaled to the preset's (they grow linearly)


@dataclass
class Training:
    """One training of the run: which step, how many images per epoch, epochs, validation FLOPs per epoch."""

    notebook: str
    run: str
    kind: str  # classifier | fixmatch | ssl | unet | unet_semi
    images: int
    batch: int
    epochs: int
    val_flops: float = 0.0


def plan(cfg: Config, kept: int, fwd: dict[str, float]) -> tuple[list[Training], dict[str, float]]:
    """The trainings of a default gpu-preset run and the FLOPs of each notebook's predictions."""
    cls, unet = fwd["classifier"], fwd["unet"]
    b, all_labeled = cfg.batch_size, LABELED + VAL
    trainings = [
        Training("01", "classifier_baseline", "classifier", LABELED, b, cfg.epochs, VAL * cls),
        Training("01", "classifier_no_augmentation", "classifier", LABELED, b, cfg.epochs, VAL * cls),
        # SimCLR learns from the training split and the unlabeled images; the kNN monitor embeds 400 + 100
        Training("02", "ssl_encoder", "ssl", LABELED + UNLABELED, cfg.ssl_batch_size, cfg.ssl_epochs,
                 all_labeled * cls),
        Training("02", "classifier_ssl", "classifier", LABELED, b, cfg.epochs, VAL * cls),
        Training("03", "classifier_pseudo_r1", "fixmatch", LABELED + kept, b, cfg.pseudo_epochs, VAL * cls),
        *[Training("04", name, "unet", LABELED, b, cfg.seg_epochs, VAL * unet)
          for name in ("unet_scratch", "unet_from_ssl", "unet_from_classifier")],
        # 05's final fit of the recipe 03 and 04 usually choose: its teacher, the round, one U-Net
        Training("05", "final_classifier_ssl", "classifier", all_labeled, b, cfg.epochs),
        Training("05", "final_classifier_pseudo_r1", "fixmatch", all_labeled + kept, b, cfg.pseudo_epochs),
        Training("05", "final_unet_from_classifier", "unet", all_labeled, b, cfg.seg_epochs),
    ]
    predictions = {  # flip TTA: 2 forward passes per image
        "01": 2 * 2 * VAL * cls, "02": 2 * VAL * cls, "03": 2 * (UNLABELED + VAL) * cls,
        "04": 2 * VAL * cls + 3 * 2 * VAL * unet, "05": 2 * UNLABELED * cls + 2 * TEST * (cls + unet)}
    return trainings, predictions


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


def step_cost(model: nn.Module, task: TrainTask, cfg: Config, batch: int) -> tuple[float, int]:
    """FLOPs (scaled to `batch`) and ops of one training step as helpers.engine runs it on CUDA."""
    optimizer = build_optimizer(model, cfg)
    for group in optimizer.param_groups:
        group["foreach"] = True  # CUDA's default: one kernel per op for all parameters
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    task.set_teacher(ema.model if ema is not None else None)
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
        if ema is not None:
            ema.update(model)

    model.train()
    step()  # warm up (lazy optimizer state)
    flops, ops = measure(step)
    return flops * batch / COUNT_BATCH, ops


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


def index() -> SimpleNamespace:
    """What the model builders need to know of the data."""
    return SimpleNamespace(num_classes=CLASSES, class_names=[str(k) for k in range(CLASSES)])


def new_classifier(cfg: Config) -> nn.Module:
    """A fresh resnet18 classifier for 50 classes with its spec."""
    torch.manual_seed(0)
    m = build_classifier(cfg.arch, CLASSES, cfg.small_stem)
    m.spec = model_spec(cfg.arch, CLASSES, cfg.small_stem, cfg.image_size, index().class_names)
    return m


def costs(cfg: Config) -> tuple[dict, dict]:
    """Per-step (FLOPs at the preset's batch, ops) of each kind of training, and forward FLOPs per image."""
    torch.manual_seed(0)
    size = cfg.image_size
    labeled, unl = fake_images(COUNT_BATCH * 2, size, masks=True), fake_images(COUNT_BATCH * 2, size, seed=1)
    semi_cfg = gpu_config(seg_consistency_weight=1.0)
    step = {
        "classifier": step_cost(new_classifier(cfg), ClassificationTask(labeled, None, cfg), cfg, cfg.batch_size),
        "fixmatch": step_cost(new_classifier(cfg), ClassificationTask(
            labeled, None, cfg, unl, 1.0, float(cfg.consistency_threshold), cfg.unlabeled_ratio, num_classes=CLASSES),
            cfg, cfg.batch_size),
        "unet": step_cost(new_segmenter(cfg, index()), SegmentationTask(labeled, None, cfg, CLASSES), cfg,
                          cfg.batch_size),
        "unet_semi": step_cost(new_segmenter(semi_cfg, index()),
                               SegmentationTask(labeled, None, semi_cfg, CLASSES, unlabeled=unl), semi_cfg,
                               cfg.batch_size),
        "ssl": step_cost(new_ssl_model(cfg, index()), ContrastiveTask(unl, cfg), cfg, cfg.ssl_batch_size),
    }
    unet = new_segmenter(cfg, index()).eval()
    fwd = {"classifier": measure(lambda: predict_proba(new_classifier(cfg), unl, cfg, tta=False))[0] / len(unl),
           "unet": measure(lambda: validate_segmenter(unet, labeled, cfg))[0] / len(labeled)}
    return step, fwd


def epoch_seconds(t: Training, step: dict, speed: str) -> float:
    """Estimated T4 seconds of one epoch of a training (its steps and its validation)."""
    flops, ops = step[t.kind]
    steps = max(1, t.images // t.batch)
    compute = (steps * flops + t.val_flops) / THROUGHPUT[speed]
    dispatch = steps * ops * DISPATCH[speed]
    return max(compute, dispatch) if speed == "fast" else compute + dispatch


def time_budget(kept: tuple[int, ...] = (500, 1500, 5000)) -> tuple[dict, dict, dict]:
    """(report, step costs, forward FLOPs): T4 seconds per notebook and per training (fast, slow) on the real data's counts."""
    cfg = gpu_config()
    step, fwd = costs(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        rates = decode_rate(Path(tmp))
    report = {"step_gflop": {k: v[0] / 1e9 for k, v in step.items()},
              "step_ops": {k: v[1] for k, v in step.items()},
              "forward_gflop_per_image": {k: v / 1e9 for k, v in fwd.items()},
              "decode_img_per_s": rates, "runs": {}, "notebooks": {}}
    for k in kept:
        trainings, predictions = plan(cfg, k, fwd)
        for speed in ("fast", "slow"):
            for t in trainings:
                e = epoch_seconds(t, step, speed)
                report["runs"].setdefault(f"{t.notebook} {t.run} (kept {k})", {})[speed] = (e, e * t.epochs)
            for nb, extra in predictions.items():
                seconds = sum(epoch_seconds(t, step, speed) * t.epochs for t in trainings if t.notebook == nb)
                report["notebooks"].setdefault(f"{nb} (kept {k})", {})[speed] = seconds + extra / THROUGHPUT[speed]
    # the opt-in semi-supervised U-Net of 04 (IMSUB_SEG_CONSISTENCY_WEIGHT > 0), not in the plan
    semi = Training("04", "unet_semi", "unet_semi", LABELED, cfg.batch_size, cfg.seg_epochs, VAL * fwd["unet"])
    for speed in ("fast", "slow"):
        e = epoch_seconds(semi, step, speed)
        report["runs"].setdefault("04 unet_semi (opt-in)", {})[speed] = (e, e * semi.epochs)
    return report, step, fwd


# ----------------------------------------------------------------------------- checkpoints
def _ticking(start_epoch, clock: list[float], seconds: float):
    """A task's start_epoch that first advances the simulated clock by one estimated T4 epoch."""
    def ticked(self, *args, **kwargs):
        clock[0] += seconds
        return start_epoch(self, *args, **kwargs)
    return ticked


def simulate_checkpoints(trainings: list[Training], step: dict, speed: str, tmp: Path,
                         every: float | None = None) -> dict:
    """Run the plan's trainings with the real checkpoint code and a simulated T4 clock."""
    clock = [0.0]
    real_clock, real_save = checkpoints._clock, checkpoints.TrainingFiles.save
    checkpoints._clock = lambda: clock[0]
    saves_at: list[tuple[float, float]] = []

    def timed_save(self, state, weights=None):
        t = time.perf_counter()
        real_save(self, state, weights)
        saves_at.append((clock[0], time.perf_counter() - t))

    checkpoints.TrainingFiles.save = timed_save
    torch.set_num_threads(2)
    size, n = 32, 16
    cfg = gpu_config(image_size=size, ssl_image_size=size, run_dir=tmp / "runs", mirror_dir=tmp / "drive")
    if every is not None:
        cfg.checkpoint_seconds = every
    train, val = fake_images(n, size, masks=True), fake_images(n, size, masks=True, seed=2)
    unl = fake_images(n, size, seed=1)
    kinds = {
        "classifier": lambda t, v: fit(new_classifier(cfg), train, v, cfg, run_name=t.run, epochs=t.epochs,
                                       progress=False),
        "fixmatch": lambda t, v: fit(new_classifier(cfg), train, v, cfg, run_name=t.run, epochs=t.epochs,
                                     unlabeled=unl, progress=False),
        "ssl": lambda t, v: pretrain(new_ssl_model(cfg, index()), unl, cfg, knn_train=train, knn_val=v,
                                     run_name=t.run, epochs=t.epochs, progress=False),
        "unet": lambda t, v: fit_segmenter(new_segmenter(cfg, index()), train, v, cfg, run_name=t.run,
                                           epochs=t.epochs, method="pixel", progress=False),
    }
    tasks = (ClassificationTask, SegmentationTask, ContrastiveTask)
    real_start = [task.start_epoch for task in tasks]
    results = {}
    try:
        for t in trainings:
            seconds = epoch_seconds(t, step, speed)
            saves_at.clear()
            clock[0] = 0.0
            for task, original in zip(tasks, real_start):
                task.start_epoch = _ticking(original, clock, seconds)
            wall = time.perf_counter()
            result = kinds[t.kind](t, val if t.notebook != "05" else None)
            times = [0.0] + [at for at, _ in saves_at]
            stats = result.checkpoint_stats
            results[f"{t.notebook} {t.run}"] = r = {
                "epochs": len(result.history), "t4_epoch_s": seconds, "t4_training_s": clock[0],
                "saves": stats.saves, "weights_writes": stats.weights_writes,
                "state_mb": result.resume_file.stat().st_size / 1e6,
                "weights_mb": result.checkpoint.stat().st_size / 1e6,
                "bytes_local_mb": stats.bytes_local / 1e6, "bytes_mirrored_mb": stats.bytes_mirrored / 1e6,
                "longest_gap_s": max(b - a for a, b in zip(times, times[1:])),
                "save_s_max": max(s for _, s in saves_at), "cpu_wall_s": time.perf_counter() - wall,
            }
            print(f"{t.notebook} {t.run}", json.dumps(r), flush=True)
    finally:
        for task, original in zip(tasks, real_start):
            task.start_epoch = original
        checkpoints._clock, checkpoints.TrainingFiles.save = real_clock, real_save
    return results


def main(argv: list[str] | None = None) -> None:
    """Print the estimate (see the module docstring for what is measured and what assumed)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", choices=["time", "checkpoints"])
    ap.add_argument("--kept", type=int, default=1500, help="pseudo-labels kept in 03 (checkpoints part)")
    ap.add_argument("--speed", choices=["fast", "slow"], default="slow", help="T4 estimate that drives the clock")
    ap.add_argument("--every", type=float, default=None, help="checkpoint_seconds (default: the gpu preset's)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    report, step, fwd = time_budget()
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "notebooks")}, indent=1))
    for name, speeds in report["runs"].items():
        if "(kept" in name and f"(kept {args.kept})" not in name:
            continue
        (ef, tf), (es, ts) = speeds["fast"], speeds["slow"]
        print(f"{name}: {tf / 60:.1f}-{ts / 60:.1f} min, epoch {ef:.2f}-{es:.2f} s")
    for nb, speeds in report["notebooks"].items():
        print(f"notebook {nb}: GPU work {speeds['fast'] / 60:.1f}-{speeds['slow'] / 60:.1f} min")
    out = {"time": report}
    if args.part == "checkpoints":
        trainings, _ = plan(gpu_config(), args.kept, fwd)
        with tempfile.TemporaryDirectory() as tmp:
            results = simulate_checkpoints(trainings, step, args.speed, Path(tmp), args.every)
        total_local = sum(r["bytes_local_mb"] for r in results.values())
        total_mirror = sum(r["bytes_mirrored_mb"] for r in results.values())
        print(f"checkpoint bytes written: {total_local / 1e3:.2f} GB locally + {total_mirror / 1e3:.2f} GB to "
              f"the mirror; {sum(r['saves'] for r in results.values())} saves; the finished run's files "
              f"{sum(r['state_mb'] + r['weights_mb'] for r in results.values()) / 1e3:.2f} GB")
        print(f"work lost when killed, at most: {max(r['longest_gap_s'] for r in results.values()):.0f} s of "
              f"simulated T4 training (+ the save itself, at most "
              f"{max(r['save_s_max'] for r in results.values()):.1f} s here)")
        out["checkpoints"] = results
        if not math.isfinite(total_local):
            raise SystemExit(1)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
