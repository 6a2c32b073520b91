"""Tests for helpers.pseudo: threshold and per-class cap selection, stats, precision/coverage, sweeps."""
from __future__ import annotations

import math

import pytest
import torch

from helpers.cache import CachedImages
from helpers.pseudo import (
    default_max_per_class,
    per_class_quality,
    precision_coverage,
    pseudo_label_stats,
    pseudo_labeled,
    select_pseudo_labels,
    threshold_sweep,
)

# rows: max prob and argmax chosen by hand
PROBS = torch.tensor([
    [0.95, 0.03, 0.02],  # 0: class 0, 0.95
    [0.10, 0.85, 0.05],  # 1: class 1, 0.85
    [0.50, 0.40, 0.10],  # 2: class 0, 0.50 (below 0.8)
    [0.90, 0.05, 0.05],  # 3: class 0, 0.90
    [0.05, 0.05, 0.90],  # 4: class 2, 0.90
    [0.97, 0.02, 0.01],  # 5: class 0, 0.97
    [0.20, 0.79, 0.01],  # 6: class 1, 0.79 (below 0.8)
    [0.02, 0.98, 0.00],  # 7: class 1, 0.98
])


def test_threshold_keeps_confident_argmax_sorted():
    idx, labels = select_pseudo_labels(PROBS, 0.8)
    assert idx.tolist() == [0, 1, 3, 4, 5, 7]
    assert labels.tolist() == [0, 1, 0, 2, 0, 1]
    assert idx.dtype == torch.long and labels.dtype == torch.long


def test_threshold_is_inclusive():
    idx, _ = select_pseudo_labels(PROBS, 0.85)
    assert idx.tolist() == [0, 1, 3, 4, 5, 7]
    idx, _ = select_pseudo_labels(PROBS, 0.851)
    assert idx.tolist() == [0, 3, 4, 5, 7]


def test_per_class_cap_keeps_most_confident():
    idx, labels = select_pseudo_labels(PROBS, 0.8, max_per_class=1)
    # class 0: 5 (0.97) beats 0 (0.95) and 3 (0.90); class 1: 7 (0.98) beats 1; class 2: 4
    assert idx.tolist() == [4, 5, 7]
    assert labels.tolist() == [2, 0, 1]
    idx, labels = select_pseudo_labels(PROBS, 0.8, max_per_class=2)
    assert idx.tolist() == [0, 1, 4, 5, 7]
    idx, _ = select_pseudo_labels(PROBS, 0.0, max_per_class=2)
    assert idx.tolist() == [0, 1, 4, 5, 7]  # 2 and 3 lose to 0 and 5 in class 0; 6 loses in class 1


def test_cap_ties_keep_lower_index():
    probs = torch.tensor([[0.9, 0.1]] * 4)
    idx, _ = select_pseudo_labels(probs, 0.5, max_per_class=2)
    assert idx.tolist() == [0, 1]


def test_nothing_confident_and_bad_inputs():
    idx, labels = select_pseudo_labels(PROBS, 0.99)
    assert idx.numel() == 0 and labels.numel() == 0
    with pytest.raises(ValueError, match="max_per_class"):
        select_pseudo_labels(PROBS, 0.5, max_per_class=0)
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        select_pseudo_labels(PROBS[0], 0.5)


def test_default_max_per_class():
    assert default_max_per_class(5000, 50) == 200
    assert default_max_per_class(5000, 50, factor=1.0) == 100
    assert default_max_per_class(10, 3) == 7  # ceil(2 * 10 / 3)
    assert default_max_per_class(0, 3) == 1


def test_stats_and_precision_coverage():
    idx, labels = select_pseudo_labels(PROBS, 0.8)
    assert pseudo_label_stats(labels, 4).tolist() == [3, 2, 1, 0]
    truth = torch.tensor([0, 1, 0, 2, 2, 0, 1, -1])  # 3 is wrong (true 2), 7 unknown
    out = precision_coverage(idx, labels, truth)
    assert out["kept"] == 6
    assert out["coverage"] == pytest.approx(6 / 8)
    assert out["precision"] == pytest.approx(4 / 5)  # among the 5 kept with a known truth
    empty = precision_coverage(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), truth)
    assert empty["kept"] == 0 and math.isnan(empty["precision"])
    with pytest.raises(ValueError):
        pseudo_label_stats(torch.tensor([0, 3]), 3)


def test_threshold_sweep_is_monotone_in_kept():
    truth = torch.tensor([0, 1, 0, 2, 2, 0, 1, 1])
    rows = threshold_sweep(PROBS, truth, [0.0, 0.8, 0.9, 0.99])
    assert [r["threshold"] for r in rows] == [0.0, 0.8, 0.9, 0.99]
    assert [r["kept"] for r in rows] == [8, 6, 5, 0]  # 0.90 (float32) passes 0.9
    assert rows[0]["precision"] == pytest.approx(7 / 8)  # only 3 is wrong
    assert rows[1]["precision"] == pytest.approx(5 / 6)


def test_pseudo_labeled_subset_replaces_labels():
    n = 5
    data = CachedImages(images=torch.arange(n * 3 * 2 * 2, dtype=torch.uint8).view(n, 3, 2, 2), masks=None,
                        labels=torch.full((n,), -1), keys=[str(i) for i in range(n)],
                        sizes=[(2, 2)] * n, files=[f"{i}.jpg" for i in range(n)])
    part = pseudo_labeled(data, torch.tensor([1, 4]), torch.tensor([2, 0]))
    assert part.keys == ["1", "4"] and part.labels.tolist() == [2, 0]
    assert torch.equal(part.images, data.images[[1, 4]])
    assert data.labels.tolist() == [-1] * n  # the source is untouched


def test_per_class_cap_binds_when_balanced():
    from helpers.pseudo import per_class_cap

    # 8 images, 3 classes; 6 above 0.8: 3 of class 0, 2 of class 1, 1 of class 2
    assert per_class_cap(PROBS, 0.8, explicit=5) == 5
    assert per_class_cap(PROBS, 0.8) == default_max_per_class(8, 3) == 6  # loose: does not bind here
    cap = per_class_cap(PROBS, 0.8, balance=1.0)
    assert cap == 2  # ceil(6 / 3)
    idx, labels = select_pseudo_labels(PROBS, 0.8, cap)
    assert pseudo_label_stats(labels, 3).tolist() == [2, 2, 1]  # class 0 trimmed to the cap
    assert 3 not in idx.tolist()  # its least confident image (0.90) goes


def test_stored_pseudo_labels_are_reused_while_the_teacher_is_the_same(tmp_path):
    from helpers import pipeline
    from helpers.config import Config

    cfg = Config(run_dir=tmp_path)
    (tmp_path / "teacher.pt").write_bytes(b"weights v1")
    calls = []

    def select():
        calls.append(1)
        return torch.tensor([0, 3]), torch.tensor([2, 1])

    keys = ["a", "b", "c", "d"]
    first = pipeline.stored_pseudo_labels(cfg, "pseudo_r1", "teacher", keys, select)
    again = pipeline.stored_pseudo_labels(cfg, "pseudo_r1", "teacher", keys, lambda: (torch.tensor([1]), torch.tensor([0])))
    assert len(calls) == 1 and all(torch.equal(a, b) for a, b in zip(first, again))
    (tmp_path / "teacher.pt").write_bytes(b"weights v2")  # another teacher: selected again
    pipeline.stored_pseudo_labels(cfg, "pseudo_r1", "teacher", keys, select)
    assert len(calls) == 2
    pipeline.stored_pseudo_labels(cfg, "pseudo_r1", "teacher", keys[:3], select)  # other images: again
    assert len(calls) == 3 and not list(tmp_path.glob("*.tmp"))
    pipeline.stored_pseudo_labels(cfg, "pseudo_r1", "teacher", keys[:3], select, {"threshold": 0.9})  # other settings
    assert len(calls) == 4


def test_per_class_quality_counts_by_pseudo_label_against_the_truth():
    indices = torch.tensor([0, 1, 3, 4])
    labels = torch.tensor([0, 0, 1, 1])  # image 1 is truly class 1: a wrong class-0 pseudo-label
    truth = torch.tensor([0, 1, 0, 1, 1, 2])  # class 0: images 0 and 2; class 1: images 1, 3, 4; class 2: image 5
    q = per_class_quality(indices, labels, truth, 3)
    assert q["kept"].tolist() == [2, 2, 0]
    assert q["precision"][:2].tolist() == [0.5, 1.0] and math.isnan(q["precision"][2])
    assert q["coverage"].tolist() == pytest.approx([0.5, 2 / 3, 0.0])
