"""Checkpoint bytes of a finished run, replayed with today's checkpoint code: saves, GB, GB per 15 minutes, work lost.

    python benchmarks/checkpoint_bytes.py runs/<dataset>/cpu              # the cpu preset's checkpoint_seconds
    python benchmarks/checkpoint_bytes.py runs/<dataset>/cpu --every 20   # as it was before (20 s)

Every training of the run folder (its `<run>.history.csv`: epochs and each epoch's measured
seconds) runs again through the real training loop (helpers.classification.fit with or without
unlabeled images, helpers.segmentation.fit_segmenter, helpers.selfsup.pretrain; full-size models
and AdamW, the preset's EMA) on stand-in data of 8 images at 32 px, while a simulated clock
advances by the recorded seconds of each epoch. The checkpoint files are real: their bytes are
counted as written. So the numbers are those the run would write with today's policy, on the
same trainings and epoch times, without training it again. "Per 15 minutes" divides by the run's
wall time (the stage times of its summary.json); work lost when killed is the longest simulated
stretch between two saves of a training.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import helpers.checkpoints as checkpoints  # noqa: E402
from gpu_budget import fake_images, index, new_classifier  # noqa: E402
from helpers.classification import ClassificationTask, fit  # noqa: E402
from helpers.config import PRESETS, Config  # noqa: E402
from helpers.segmentation import SegmentationTask, fit_segmenter, new_segmenter  # noqa: E402
from helpers.selfsup import ContrastiveTask, new_ssl_model, pretrain  # noqa: E402
from helpers.tracking import HISTORY_SUFFIX  # noqa: E402


def trainings(run_dir: Path) -> list[tuple[str, list[float]]]:
    """(run name, per-epoch seconds) of every training of a run folder, in the order they were trained."""
    found = []
    for path in sorted(run_dir.glob(f"*{HISTORY_SUFFIX}"), key=lambda p: p.stat().st_mtime):
        name = path.name.removesuffix(HISTORY_SUFFIX)
        if "@" in name:  # a training set aside: not part of the run as it stands
            continue
        with open(path, newline="") as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
        if seconds:
            found.append((name, seconds))
    return found


def kind(name: str) -> str:
    """Which training loop a run name stands for."""
    if name.startswith(("ssl", "final_ssl")):
        return "ssl"
    if "unet" in name:
        return "unet"
    return "fixmatch" if "pseudo" in name else "classifier"


def replay(plan: list[tuple[str, list[float]]], cfg: Config) -> dict:
    """Run each training with the real checkpoint code and a clock that follows the recorded epoch times."""
    clock, gaps = [0.0], []
    real_clock, real_save = checkpoints._clock, checkpoints.TrainingFiles.save
    last_save = [0.0]

    def timed_save(self, state, weights=None):
        real_save(self, state, weights)
        gaps.append(clock[0] - last_save[0])
        last_save[0] = clock[0]

    size, n = 32, 8
    train, val = fake_images(n, size, masks=True), fake_images(n, size, masks=True, seed=2)
    unl = fake_images(n, size, seed=1)
    loops = {
        "classifier": lambda run, e, v: fit(new_classifier(cfg), train, v, cfg, run_name=run, epochs=e, progress=False),
        "fixmatch": lambda run, e, v: fit(new_classifier(cfg), train, v, cfg, run_name=run, epochs=e, unlabeled=unl,
                                          progress=False),
        "ssl": lambda run, e, v: pretrain(new_ssl_model(cfg, index()), unl, cfg, run_name=run, epochs=e,
                                          progress=False),
        "unet": lambda run, e, v: fit_segmenter(new_segmenter(cfg, index()), train, v, cfg, run_name=run, epochs=e,
                                                method="pixel", progress=False),
    }
    tasks = (ClassificationTask, SegmentationTask, ContrastiveTask)
    real_start = [task.start_epoch for task in tasks]
    checkpoints._clock, checkpoints.TrainingFiles.save = (lambda: clock[0]), timed_save
    results = {}
    try:
        for run, seconds in plan:
            ticks = iter(seconds)

            def ticked(self, *args, _original=None, **kwargs):
                clock[0] += next(ticks, seconds[-1])
                return _original(self, *args, **kwargs)

            for task, original in zip(tasks, real_start):
                task.start_epoch = lambda self, *a, _o=original, **k: ticked(self, *a, _original=_o, **k)
            clock[0] = last_save[0] = 0.0
            gaps.clear()
            result = loops[kind(run)](run, len(seconds), None if run.startswith("final_") else val)
            stats = result.checkpoint_stats
            results[run] = {"epochs": len(seconds), "training_s": round(sum(seconds), 1), "saves": stats.saves,
                            "weights_writes": stats.weights_writes, "mb": round(stats.bytes_local / 1e6, 1),
                            "longest_unsaved_s": round(max(gaps), 1)}
            print(run, json.dumps(results[run]), flush=True)
    finally:
        for task, original in zip(tasks, real_start):
            task.start_epoch = original
        checkpoints._clock, checkpoints.TrainingFiles.save = real_clock, real_save
    return results


def main(argv=None) -> int:
    """Replay a run folder's trainings and print the totals."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--every", type=float, default=None, help="checkpoint_seconds (default: the preset's)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    plan = trainings(args.run_dir)
    if not plan:
        raise SystemExit(f"{args.run_dir}: no <run>.history.csv files; give a finished run folder (runs/<dataset>/<preset>)")
    summary = args.run_dir / "summary.json"
    wall = sum(json.loads(summary.read_text()).get("stage_seconds", {}).values()) if summary.is_file() else 0.0
    torch.set_num_threads(2)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        values = {**PRESETS[args.preset], "preset": args.preset, "device": "cpu", "run_dir": Path(tmp) / "runs",
                  "tensorboard": "off", "image_size": 32, "ssl_image_size": 32}
        if args.every is not None:
            values["checkpoint_seconds"] = args.every
        results = replay(plan, Config(**values))
    total = sum(r["mb"] for r in results.values()) / 1e3
    saves = sum(r["saves"] for r in results.values())
    training = sum(r["training_s"] for r in results.values())
    every = args.every if args.every is not None else PRESETS[args.preset].get("checkpoint_seconds", 0.0)
    print(f"checkpoint_seconds {every:g}: {saves} saves, {total:.2f} GB written over {len(results)} trainings "
          f"({training / 60:.1f} min of training"
          + (f", a {wall / 60:.1f} min run: {total / (wall / 900):.2f} GB per 15 minutes" if wall else "") + "); "
          f"work lost when killed at most {max(r['longest_unsaved_s'] for r in results.values()):.0f} s "
          f"(replayed in {time.perf_counter() - start:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps({"every": every, "gb": total, "saves": saves, "wall_s": wall,
                                         "trainings": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
