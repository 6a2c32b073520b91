"""Does SimCLR pretraining help the classifier? From scratch vs fine-tuned from the pretrained encoder, per seed.

For each seed (another validation split and other initial weights on the same data): notebook 02's
pretraining (kNN accuracy before and after every epoch, linear probe at the end), then two
classifiers trained exactly like notebook 01's baseline (`classification.fit`, cfg.epochs, same
recipe), one from random weights and one whose trunk starts from the pretrained encoder. Both are
scored with flip TTA on the validation split and, on the demo data, on the hidden test truth.

    python benchmarks/bench_selfsup.py --seeds 0 1 2 --out /tmp/bench_selfsup
    IMSUB_SSL_EPOCHS=80 python benchmarks/bench_selfsup.py --seeds 0      # any IMSUB_* setting applies

Checkpoints go to OUT/seed<N>/ (an interrupted run resumes); results to OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import helpers
from helpers import classification, pipeline, probes, selfsup


def _test_accuracy(model, data, truth, cfg) -> float:
    """Accuracy on the demo's hidden test truth with flip TTA (NaN without a truth)."""
    if truth is None:
        return float("nan")
    return float((classification.predict_proba(model, data.test, cfg).argmax(1) == truth).float().mean())


def run_seed(preset: str, seed: int, out: Path) -> dict:
    """Pretrain, then train the classifier from scratch and from the encoder; return the scores and times."""
    cfg = helpers.get_config(preset, seed=seed, run_dir=out / f"seed{seed}")
    data = pipeline.load_run_data(cfg, unlabeled=True, test=True)
    truth = pipeline.truth_labels(cfg, data.test.keys, split="test") if data.test is not None else None
    size = selfsup.ssl_size(cfg)
    row: dict = {"seed": seed, "preset": preset, "ssl_epochs": cfg.ssl_epochs, "ssl_image_size": size,
                 "ssl_batch_size": cfg.ssl_batch_size, "ssl_temperature": cfg.ssl_temperature,
                 "epochs": cfg.epochs, "num_pretraining_images": 0}

    helpers.seed_everything(seed)
    model = selfsup.new_ssl_model(cfg, data.index)
    images = selfsup.pretraining_images(data.train, data.unlabeled)
    row["num_pretraining_images"] = len(images)
    before_train = probes.features(model.encoder, data.train, cfg, size)
    before_val = probes.features(model.encoder, data.val, cfg, size)
    row["knn_before"] = probes.knn_accuracy(before_train, data.train.labels, before_val, data.val.labels)
    row["probe_before"] = probes.linear_probe(before_train, data.train.labels, before_val, data.val.labels,
                                              data.index.num_classes)["val_acc"]
    t0 = time.perf_counter()
    result = selfsup.pretrain(model, images, cfg, knn_train=data.train, knn_val=data.val)
    row["pretrain_seconds_this_call"] = time.perf_counter() - t0
    row["pretrain_seconds"] = sum(h["seconds"] for h in result.history)
    row["knn_curve"] = [h["knn_acc"] for h in result.history]
    row["ssl_loss_curve"] = [h["train_loss"] for h in result.history]
    after_train = probes.features(model.encoder, data.train, cfg, size)
    after_val = probes.features(model.encoder, data.val, cfg, size)
    row["knn_after"] = probes.knn_accuracy(after_train, data.train.labels, after_val, data.val.labels)
    row["probe_after"] = probes.linear_probe(after_train, data.train.labels, after_val, data.val.labels,
                                             data.index.num_classes)["val_acc"]

    for name, start in (("scratch", None), ("ssl", selfsup.ssl_checkpoint(cfg))):
        helpers.seed_everything(seed)
        classifier = pipeline.new_classifier(cfg, data.index, encoder_from=start)
        t0 = time.perf_counter()
        fit = classification.fit(classifier, data.train, data.val, cfg, run_name=f"classifier_{name}")
        row[f"{name}_seconds_this_call"] = time.perf_counter() - t0
        row[f"{name}_seconds"] = sum(h["seconds"] for h in fit.history)
        row[f"{name}_val_acc"] = classification.evaluate(fit.model, data.val, cfg, tta=True)["accuracy"]
        row[f"{name}_test_acc"] = _test_accuracy(fit.model, data, truth, cfg)
        row[f"{name}_val_curve"] = [h["val_acc"] for h in fit.history]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_selfsup"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args.preset, seed, args.out))
        (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    keys = ["knn_before", "knn_after", "probe_before", "probe_after", "scratch_val_acc", "ssl_val_acc",
            "scratch_test_acc", "ssl_test_acc", "pretrain_seconds", "scratch_seconds", "ssl_seconds"]
    header = ["seed", "kNN before", "kNN after", "probe before", "probe after", "val scratch", "val ssl",
              "test scratch", "test ssl", "pretrain s", "scratch s", "from ssl s"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join([str(r["seed"])] + [f"{r[k]:.0f}" if k.endswith("seconds") else f"{r[k]:.3f}"
                                             for k in keys]))
    if len(rows) > 1:
        print(" | ".join(["mean"] + [f"{statistics.mean(r[k] for r in rows):.3f}" for k in keys[:8]]))
    print(f"results: {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
