"""Label-based checks of frozen features: kNN accuracy, a linear probe, a 2-D PCA picture.

Self-supervised pretraining (helpers.selfsup) never sees a label, so its progress is measured from
outside: embed the labeled images with the frozen encoder, then ask how well a simple classifier on
those features does. `knn_accuracy` (cosine similarity, the k nearest training images vote with
weight exp(similarity / temperature), as in Wu et al. 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination") is cheap enough to run after every epoch;
`linear_probe` (a logistic regression on the frozen features) is the standard end-of-run check.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .augment import center_resize, normalize
from .cache import CachedImages
from .config import Config
from .hardware import amp_dtype, autocast, resolve, to_layout, use_channels_last


@torch.no_grad()
def features(encoder: nn.Module, images: CachedImages | Tensor, cfg: Config, size: int | None = None,
             batch_size: int | None = None) -> Tensor:
    """The encoder's outputs [N, D] (CPU float32) for uint8 images resized to `size` (default cfg.image_size).

    Runs where the encoder's weights are, with the mixed precision and layout cfg asks for there.
    """
    data = images.images if isinstance(images, CachedImages) else images
    size = int(size or cfg.image_size)
    weight = next(encoder.parameters(), None)
    device = weight.device if weight is not None else resolve(cfg)[0]
    amp, channels_last = amp_dtype(cfg, device), use_channels_last(cfg, device)
    batch_size = batch_size or max(1, 2 * int(cfg.batch_size))
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for start in range(0, data.shape[0], batch_size):
            x = normalize(center_resize(data[start:start + batch_size].to(device), None, size)[0])
            with autocast(device, amp):
                out.append(encoder(to_layout(x, channels_last)).float().flatten(1).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def knn_predict(train_features: Tensor, train_labels: Tensor, query_features: Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> Tensor:
    """Class scores [Q, C] of a weighted kNN vote: cosine similarity, the k nearest vote exp(sim / temperature)."""
    if train_features.shape[0] == 0:
        raise ValueError("knn_predict: no training features")
    train = F.normalize(train_features.float(), dim=1)
    query = F.normalize(query_features.float(), dim=1)
    sim = query @ train.T
    k = min(int(k), train.shape[0])
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(query.shape[0], int(num_classes))
    votes.scatter_add_(1, train_labels.long()[top_idx], (top_sim / temperature).exp())
    return votes


def knn_accuracy(train_features: Tensor, train_labels: Tensor, query_features: Tensor, query_labels: Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Share of query images whose weighted kNN vote (see `knn_predict`) is their true class."""
    num_classes = int(max(train_labels.max(), query_labels.max())) + 1
    predicted = knn_predict(train_features, train_labels, query_features, num_classes, k, temperature).argmax(1)
    return float((predicted == query_labels.long()).float().mean())


def knn_leave_one_out(features: Tensor, labels: Tensor, k: int = 20, temperature: float = 0.07) -> Tensor:
    """Per image [N] (bool): is the weighted kNN vote of all the *other* images its class (leave-one-out)?

    Every labeled image is a query once, so a few hundred labels give a few hundred votes instead of
    the handful a validation split holds; the labels are only read.
    """
    x = F.normalize(features.float(), dim=1)
    sim = (x @ x.T).fill_diagonal_(-float("inf"))  # an image is not its own neighbour
    k = min(int(k), max(1, x.shape[0] - 1))
    top_sim, top_idx = sim.topk(k, dim=1)
    votes = torch.zeros(x.shape[0], int(labels.max()) + 1)
    votes.scatter_add_(1, labels.long()[top_idx], (top_sim / temperature).exp())
    return votes.argmax(1) == labels.long()


def paired_gain(correct: Tensor, baseline_correct: Tensor, z: float = 2.0) -> dict:
    """Is `correct` clearly better than `baseline_correct` on the same images? Mean gain, its standard error.

    "Clearly": the mean of the per-image differences exceeds `z` standard errors of that mean (a
    paired test, as McNemar's), so that a gain of a few lucky images on a small set does not count.
    """
    diff = correct.float() - baseline_correct.float()
    n = diff.numel()
    gain = float(diff.mean()) if n else 0.0
    se = float(diff.std(unbiased=True) / n ** 0.5) if n > 1 else float("inf")
    return {"gain": gain, "se": se, "n": n, "clearly_better": bool(n > 1 and gain > 0 and gain > z * se)}


def linear_probe(train_features: Tensor, train_labels: Tensor, val_features: Tensor, val_labels: Tensor,
                 num_classes: int, weight_decay: float = 1e-3, steps: int = 100) -> dict:
    """Logistic regression on frozen, standardised features (full-batch L-BFGS, L2 penalty): train and val accuracy.

    The penalty is fixed, not tuned on the validation images, so the validation accuracy stays an
    honest measurement. Deterministic: the weights start at zero.
    """
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_val = (train_features - mean) / std, (val_features - mean) / std
    y_train = train_labels.long()
    layer = nn.Linear(x_train.shape[1], int(num_classes))
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=int(steps), line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(layer(x_train), y_train) + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_acc = float((layer(x_train).argmax(1) == y_train).float().mean())
        val_acc = float((layer(x_val).argmax(1) == val_labels.long()).float().mean()) if len(x_val) else float("nan")
    return {"train_acc": train_acc, "val_acc": val_acc}


def pca_2d(features: Tensor) -> Tensor:
    """The first two principal components [N, 2] of features [N, D] (exact SVD of the centred features)."""
    x = features.float()
    x = x - x.mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    axes = vh[:2]
    # an SVD axis has no preferred sign: fix it so that the same features always give the same picture
    flip = axes.gather(1, axes.abs().argmax(1, keepdim=True)).sign()
    return x @ (axes * flip).T
