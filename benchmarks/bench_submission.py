"""Benchmark: write (and validate) a full-size submission of 752 masks, as 05_submission does.

    python benchmarks/bench_submission.py [--images 752] [--height 375] [--width 500]

Masks are blob-shaped (one object per image, like real predictions), not noise; the test images are
small JPEG stand-ins of the right size written to a temporary folder first (not timed).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.submission import validate_submission, write_submission


def main() -> None:
    """Time write_submission with and without validation on synthetic masks."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=752)
    parser.add_argument("--height", type=int, default=375)
    parser.add_argument("--width", type=int, default=500)
    parser.add_argument("--classes", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:args.height, :args.width]
    with tempfile.TemporaryDirectory() as tmp:
        test_dir = Path(tmp) / "test"
        test_dir.mkdir()
        names = [f"{i:05d}.JPEG" for i in range(args.images)]
        Image.new("RGB", (args.width, args.height)).save(test_dir / names[0], "JPEG")
        for name in names[1:]:
            (test_dir / name).write_bytes((test_dir / names[0]).read_bytes())

        def entries():
            for name in names:
                cy, cx = rng.uniform(0.3, 0.7) * args.height, rng.uniform(0.3, 0.7) * args.width
                r = rng.uniform(0.15, 0.35) * min(args.height, args.width)
                k = int(rng.integers(args.classes))
                yield name, k, np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, k + 1, 0).astype(np.int32)

        rows = []
        for validate in (False, True):
            out = Path(tmp) / f"submission_{validate}"
            start = time.perf_counter()
            write_submission(out, entries(), test_dir=test_dir if validate else None,
                             num_classes=args.classes if validate else None)
            rows.append((f"write {args.images} masks" + (" + validate" if validate else ""),
                         time.perf_counter() - start))
        start = time.perf_counter()
        problems = validate_submission(out, test_dir, args.classes)
        rows.append(("validate alone", time.perf_counter() - start))
        assert problems == [], problems[:5]
    print(f"{args.images} masks of {args.width}x{args.height} (ids + zip), includes building the masks:")
    for label, seconds in rows:
        print(f"  {label:<32} {seconds:6.2f} s")


if __name__ == "__main__":
    main()
