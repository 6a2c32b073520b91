"""Score every model of a finished run on the demo's hidden TEST truth (a report, never a choice).

    python benchmarks/eval_run.py --run-dir runs/cpu [--preset cpu] [--data-root DIR] [--json OUT]

The notebooks choose on the validation split only (2 images per class); this shows how every
classifier checkpoint (validation and test accuracy, flip TTA) and every U-Net checkpoint (test mIoU
of each mask method at the original size, image classes from the run's chosen classifier) does on
the demo's test images, which no choice sees. `--json` writes the numbers for benchmarks/seed_study.py.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import helpers
from helpers import classification, mask_prediction, pipeline, segmentation
from helpers.checkpoints import STATE_SUFFIX
from helpers.data import Sample


def test_samples(cfg: helpers.Config, samples: list[Sample]) -> list[SimpleNamespace]:
    """The test samples with their hidden truth mask files (demo only)."""
    folder = Path(cfg.truth_root) / "test" / "segmentation"
    return [SimpleNamespace(key=s.key, mask=folder / f"{s.key}.png") for s in samples]


def _weights(cfg: helpers.Config, prefix: str) -> list[Path]:
    """The weights files of a run folder whose names start with prefix (resume files left out)."""
    return [p for p in sorted(Path(cfg.run_dir).glob(f"{prefix}*.pt")) if not p.name.endswith(STATE_SUFFIX)]


def evaluate_run(cfg: helpers.Config) -> dict:
    """{"classifiers": {run: {val_acc, test_acc}}, "segmenters": {run: {method: test mIoU}}, "chosen": ...}."""
    data = pipeline.load_run_data(cfg, unlabeled=False, test=True, progress=False)
    truth = pipeline.truth_labels(cfg, data.test.keys, split="test")
    if truth is None:
        raise SystemExit(f"{cfg.data_root}: no hidden test truth (only the demo data has it)")
    k = data.index.num_classes
    out: dict = {"classifiers": {}, "segmenters": {}, "chosen": pipeline.load_record(cfg)}
    for path in _weights(cfg, "classifier_") + _weights(cfg, "final_classifier_"):
        model = pipeline.load_classifier(cfg, path.stem, k)
        val = classification.evaluate(model, data.val, cfg, tta=True)["accuracy"]
        test = float((classification.evaluate(model, data.test, cfg, tta=True)["predictions"] == truth).float().mean())
        out["classifiers"][path.stem] = {"val_acc": val, "test_acc": test}  # a final fit's val_acc: seen images
    samples = test_samples(cfg, data.index.test)
    # U-Nets take the image class from the run's chosen classifier; the final fits from the final classifier
    for prefix, classifier_run in (("unet_", pipeline.chosen_classifier(cfg)),
                                   ("final_unet_", out["chosen"].get("final_classifier"))):
        if not classifier_run or not (Path(cfg.run_dir) / f"{classifier_run}.pt").is_file():
            continue
        probs = classification.predict_proba(pipeline.load_classifier(cfg, classifier_run, k), data.test, cfg, tta=True)
        for path in _weights(cfg, prefix):
            model = segmentation.load_segmenter(cfg, path.stem, k)
            scores = mask_prediction.evaluate_segmentation(model, data.test, samples, cfg, probs)
            out["segmenters"][path.stem] = {m: s["miou"] for m, s in scores.items()}
    return out


def main() -> None:
    """Print (and optionally save) the test scores of every checkpoint in a run folder."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--run-dir", default=None)
    parser.add_argument("--json", default=None, help="write the numbers to this file")
    args = parser.parse_args()
    overrides = {k: v for k, v in (("data_root", args.data_root), ("run_dir", args.run_dir)) if v}
    cfg = helpers.get_config(args.preset, **overrides)
    result = evaluate_run(cfg)
    print(f"{'classifier':<30} {'val acc':>8} {'test acc':>9}")
    for name, r in result["classifiers"].items():
        print(f"{name:<30} {r['val_acc']:>8.3f} {r['test_acc']:>9.3f}")
    print(f"\n{'U-Net (test mIoU)':<30} " + " ".join(f"{m:>9}" for m in mask_prediction.METHODS))
    for name, by_method in result["segmenters"].items():
        print(f"{name:<30} " + " ".join(f"{by_method[m]:>9.3f}" for m in mask_prediction.METHODS))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
