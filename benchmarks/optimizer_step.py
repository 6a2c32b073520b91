"""AdamW's update, fused (one kernel, as helpers.engine.build_optimizer builds it on CPU and CUDA) vs per tensor.

Times the preset's classifier (resnet18 at the cpu preset: 64 px, batch 32): forward + backward
once, then the optimizer step alone and a whole training step, each the median of --steps. Both
optimizers make the same update: at the end, the distance between the two models' weights after
the same steps is printed relative to the distance the weights moved (float rounding, amplified
a little by the steps, is all that differs).

    python benchmarks/optimizer_step.py --preset cpu --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from helpers.config import PRESETS  # noqa: E402
from helpers.engine import _param_groups  # noqa: E402
from helpers.models import build_classifier  # noqa: E402


def timed_steps(fused: bool, size: int, batch: int, steps: int, seed: int = 0) -> tuple[float, float, torch.nn.Module]:
    """Median seconds of the update alone and of a whole step; the model after `steps` steps."""
    torch.manual_seed(seed)
    model = build_classifier("resnet18", 10)
    optimizer = torch.optim.AdamW(_param_groups(model, 0.05), lr=1e-3, fused=fused)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    updates, whole = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        t1 = time.perf_counter()
        optimizer.step()
        t2 = time.perf_counter()
        updates.append(t2 - t1)
        whole.append(t2 - t0)
    return statistics.median(updates), statistics.median(whole), model


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = PRESETS[args.preset]
    size, batch = preset.get("image_size", 64), preset.get("batch_size", 64)
    print(f"resnet18, {size} px, batch {batch}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    torch.manual_seed(0)
    start = torch.nn.utils.parameters_to_vector(build_classifier("resnet18", 10).parameters()).detach()
    results = {}
    for fused in (False, True):
        update, whole, model = timed_steps(fused, size, batch, args.steps)
        results[fused] = model
        print(f"  {'fused     ' if fused else 'per tensor'}: update {update * 1000:7.1f} ms, whole step {whole * 1000:7.1f} ms")
    a, b = (torch.nn.utils.parameters_to_vector(results[f].parameters()).detach() for f in (False, True))
    print(f"after {args.steps} steps, |fused - per tensor| / |distance moved| = "
          f"{((a - b).norm() / (a - start).norm()).item():.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
