"""Tests for helpers.probes: the kNN vote, the linear probe and the PCA picture on toy features."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import probes
from helpers.config import Config


def _clusters(n_per_class: int, classes: int, dim: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features around one random direction per class (the same directions for every seed)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_knn_finds_the_clusters_and_not_random_labels():
    train_x, train_y = _clusters(10, 5, 16, 0.3, seed=0)
    val_x, val_y = _clusters(4, 5, 16, 0.3, seed=1)
    assert probes.knn_accuracy(train_x, train_y, val_x, val_y) == 1.0
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(0))]
    assert probes.knn_accuracy(train_x, shuffled, val_x, val_y) < 0.6


def test_knn_vote_is_cosine_and_weighted():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    labels = torch.tensor([0, 1, 1])
    query = torch.tensor([[10.0, 9.0]])  # closest in angle to class 0's (1, 0), though farther in distance
    assert probes.knn_predict(train, labels, query, 2, k=1).argmax(1).item() == 0
    # with k=3, two class-1 neighbours outvote one slightly closer class-0 neighbour
    assert probes.knn_predict(train, labels, query, 2, k=3, temperature=1.0).argmax(1).item() == 1
    # a low temperature lets the closest neighbour dominate the weighted vote
    assert probes.knn_predict(train, labels, query, 2, k=3, temperature=0.01).argmax(1).item() == 0
    scores = probes.knn_predict(train, labels, query, 3, k=10)  # k is capped at the training count
    assert scores.shape == (1, 3) and scores[0, 2] == 0
    with pytest.raises(ValueError, match="no training"):
        probes.knn_predict(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), query, 2)


def test_linear_probe_separates_clusters_and_is_deterministic():
    train_x, train_y = _clusters(8, 4, 32, 0.5, seed=2)
    val_x, val_y = _clusters(5, 4, 32, 0.5, seed=3)
    result = probes.linear_probe(train_x, train_y, val_x, val_y, 4)
    assert result == {"train_acc": 1.0, "val_acc": 1.0}
    assert probes.linear_probe(train_x, train_y, val_x, val_y, 4) == result
    noise = torch.randn(20, 32, generator=torch.Generator().manual_seed(4))
    chance = probes.linear_probe(noise, torch.arange(20) % 4, torch.randn(40, 32), torch.arange(40) % 4, 4)
    assert chance["train_acc"] == 1.0 and chance["val_acc"] < 0.5  # memorises noise, learns nothing


def test_pca_2d_keeps_the_two_widest_directions():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g) * torch.tensor([0.1, 5.0, 0.2, 2.0, 0.1]) + 3.0
    xy = probes.pca_2d(x)
    assert xy.shape == (200, 2)
    assert xy[:, 0].var() > xy[:, 1].var() > 1.0
    torch.testing.assert_close(xy[:, 0].abs(), (x[:, 1] - x[:, 1].mean()).abs(), atol=0.3, rtol=0.05)
    torch.testing.assert_close(probes.pca_2d(x), xy)


def test_features_are_the_encoders_outputs_at_the_requested_size(tmp_path):
    seen = []

    class Spy(nn.Module):
        def forward(self, x):
            seen.append(tuple(x.shape))
            return x.mean(dim=(2, 3))

    cfg = Config(preset="smoke", image_size=16, batch_size=2, device="cpu", run_dir=tmp_path)
    images = torch.randint(0, 256, (5, 3, 20, 20), dtype=torch.uint8)
    out = probes.features(Spy(), images, cfg, size=8)
    assert out.shape == (5, 3) and out.dtype == torch.float32
    assert seen == [(4, 3, 8, 8), (1, 3, 8, 8)]


def test_features_run_where_the_encoder_is(tmp_path):
    cfg = Config(preset="smoke", image_size=8, batch_size=4, device="cuda", run_dir=tmp_path)  # asks for a GPU
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # but lives on the CPU
    out = probes.features(encoder, torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8), cfg)
    assert out.shape == (3, 4) and out.device.type == "cpu"
