"""Score every classifier checkpoint of a run on the demo's hidden TEST truth (a report, not a choice).

    python benchmarks/eval_classifiers.py [--preset cpu] [--data-root DIR] [--run-dir DIR]

The notebooks choose between models on the validation split only (20 images on the default demo);
this script shows how the same models do on the 150 demo test images, which the choice never sees.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import helpers
from helpers import classification, pipeline
from helpers.checkpoints import STATE_SUFFIX


def main() -> None:
    """Print validation and demo-test accuracy (flip TTA) of each classifier checkpoint."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args()
    overrides = {k: v for k, v in (("data_root", args.data_root), ("run_dir", args.run_dir)) if v}
    cfg = helpers.get_config(args.preset, **overrides)
    data = pipeline.load_run_data(cfg, unlabeled=False, test=True, progress=False)
    truth = pipeline.truth_labels(cfg, data.test.keys, split="test")
    if truth is None:
        raise SystemExit(f"{cfg.data_root}: no hidden test truth (only the demo data has it)")
    print(f"{'checkpoint':<28} {'val acc':>8} {'test acc':>9}")
    for path in sorted(Path(cfg.run_dir).glob("classifier_*.pt")):
        if path.name.endswith(STATE_SUFFIX):  # the resume state next to the best weights
            continue
        model = pipeline.load_classifier(cfg, path.stem, data.index.num_classes)
        val = classification.evaluate(model, data.val, cfg, tta=True)["accuracy"]
        test = (classification.evaluate(model, data.test, cfg, tta=True)["predictions"] == truth).float().mean()
        print(f"{path.stem:<28} {val:>8.3f} {float(test):>9.3f}")


if __name__ == "__main__":
    main()
