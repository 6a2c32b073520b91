"""Tests for helpers.analysis and helpers.metrics.per_class_report: the numbers behind the notebooks' analyses."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import analysis
from helpers.metrics import per_class_report
from helpers.models import UNet


def test_per_class_report_by_hand():
    true = [0, 0, 0, 1, 1, 2]
    pred = [0, 0, 1, 1, 2, 2]
    r = per_class_report(pred, true, 4)
    # class 0: tp 2, predicted 2, true 3; class 1: tp 1, predicted 2, true 2; class 2: tp 1, predicted 2, true 1
    np.testing.assert_allclose(r["precision"], [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(r["recall"], [2 / 3, 0.5, 1.0, 0.0])
    np.testing.assert_allclose(r["f1"], [0.8, 0.5, 2 / 3, 0.0])
    np.testing.assert_array_equal(r["support"], [3, 2, 1, 0])
    table = analysis.format_class_report(r, ["a", "b", "c", "d"])
    lines = table.splitlines()
    assert lines[1].split()[0] == "d" and lines[-2].split()[0] == "a"  # worst F1 first
    assert lines[-1].startswith("macro average") and "0.49" in lines[-1]  # mean F1 (0.8+0.5+0.667+0)/4


def test_mistake_distances_and_nearest():
    means = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    feats = torch.tensor([[2.0, 0.0], [0.1, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    preds = torch.tensor([0, 1, 1])
    rows = analysis.mistake_distances(feats, labels, preds, means)
    assert [r["index"] for r in rows] == [1]
    assert rows[0]["true"] == 0 and rows[0]["predicted"] == 1
    assert rows[0]["to_predicted_mean"] < rows[0]["to_true_mean"]
    assert rows[0]["to_true_mean"] == pytest.approx(1 - 0.1 / np.hypot(0.1, 1.0), abs=1e-6)
    computed = analysis.class_means(torch.tensor([[3.0, 0.0], [1.0, 0.0], [0.0, 5.0]]), torch.tensor([0, 0, 1]), 3)
    torch.testing.assert_close(computed, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7], [-1.0, 0.0]])
    assert analysis.nearest(torch.tensor([[1.0, 0.1]]), ref, k=2).tolist() == [[0, 2]]


def test_object_iou_counts_the_true_class_only():
    truth = torch.zeros(3, 4, 4, dtype=torch.uint8)
    truth[:, :2, :2] = 2  # class 1 (index 2) in every image
    truth[0, 3, 3] = 255  # an ignored pixel, predicted as the object: dropped
    pred = truth.clone().long()
    pred[0, 3, 3] = 2
    pred[1, :2, :1] = 0  # half the object missed: IoU 2 / 4
    pred[2][pred[2] == 2] = 1  # right shape, wrong class: IoU 0
    iou = analysis.object_iou(pred, truth, torch.tensor([1, 1, 1]))
    torch.testing.assert_close(iou, torch.tensor([1.0, 0.5, 0.0]))


def test_layer_table_shows_each_stage():
    unet = UNet("resnet18", 3, decoder_channels=(16, 16, 8, 8))
    table = analysis.layer_table(unet, (1, 3, 64, 64), depth=2)
    assert "encoder.layer4" in table and "[1, 512, 2, 2]" in table  # 64 px / 32
    assert "decoder.3" in table and "[1, 8, 32, 32]" in table
    assert "seg_head" in table and "[1, 4, 32, 32]" in table  # the heads run at half size ...
    last = table.splitlines()[-1]  # ... and the model's output is upsampled to the input's
    total = sum(p.numel() for p in unet.parameters())
    assert last.startswith("(model output)") and f"{total:,}" in last and "seg: [1, 4, 64, 64]" in last
    assert unet.training  # restored
    small = analysis.layer_table(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), (2, 3, 8, 8))
    assert "[2, 4, 6, 6]" in small
