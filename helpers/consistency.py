"""Learning from unlabeled images by consistency: a model's confident guess on one view supervises another.

FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685): for each unlabeled image the model predicts
a weakly augmented view; where it is confident (max probability >= threshold), that class is the
target for a strongly augmented view of the same image. `fixmatch_loss` is that loss from logits;
helpers.classification's training step calls its second half, `consistency_loss`, on the
(distribution-aligned) weak-view probabilities. Notebook 03 writes `fixmatch_loss` out and checks
it against this one.

Two refinements from the literature, both per class and so right at any class count:
- `AdaptiveThreshold`: FreeMatch's self-adaptive thresholds (Wang et al., ICLR 2023,
  arXiv:2205.07246). A global level (an EMA of the mean top probability on unlabeled images)
  scaled per class by that class's EMA share of the predictions. A fixed threshold such as 0.95 is
  out of reach for a model trained with label smoothing (its confidence saturates near
  1 - smoothing) and means something else at 10 classes than at 50; this one follows the model.
- `DistributionAlignment`: the weak-view probabilities multiplied by target / running mean of the
  model's predictions and renormalised (ReMixMatch, Berthelot et al., ICLR 2020), so that pseudo-labels
  do not drift towards the classes the model already favours.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fixmatch_loss(logits_weak: Tensor, logits_strong: Tensor, threshold: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, mask, pseudo-labels): cross-entropy of the strong view against the weak view's confident argmax."""
    probs = logits_weak.detach().float().softmax(dim=1)
    return consistency_loss(probs, logits_strong, threshold)


def consistency_loss(probs_weak: Tensor, logits_strong: Tensor,
                     threshold: float | Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """FixMatch's loss from the weak view's probabilities; `threshold` a number or one per class [C]."""
    confidence, pseudo = probs_weak.max(dim=1)
    if isinstance(threshold, Tensor) and threshold.ndim == 1:
        threshold = threshold.to(confidence.device)[pseudo]  # each image meets its guessed class's threshold
    mask = (confidence >= threshold).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo


class AdaptiveThreshold:
    """FreeMatch's self-adaptive thresholds: tau_c = tau * p_c / max(p), tau and p EMAs of the weak-view predictions.

    Both start at 1 / C (the paper's initialisation), so early pseudo-labels are plentiful and the
    thresholds rise as the model grows confident. `momentum` sets the EMA's memory: the paper's
    0.999 suits its ~10^6 steps; a run of a few hundred steps needs a shorter memory (~0.99).
    """

    def __init__(self, num_classes: int, momentum: float = 0.99):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"threshold momentum must lie in [0, 1), got {momentum}")
        self.momentum = float(momentum)
        self.level = torch.tensor(1.0 / num_classes)
        self.class_share = torch.full((num_classes,), 1.0 / num_classes)

    @torch.no_grad()
    def update(self, probs: Tensor) -> Tensor:
        """Fold a batch of weak-view probabilities [B, C] into the EMAs; return the per-class thresholds [C]."""
        m = self.momentum
        probs = probs.detach().float()
        self.level = self.level.to(probs.device) * m + (1 - m) * probs.max(dim=1).values.mean()
        self.class_share = self.class_share.to(probs.device) * m + (1 - m) * probs.mean(dim=0)
        return self.thresholds()

    def thresholds(self) -> Tensor:
        """The current per-class thresholds [C]."""
        return self.level * self.class_share / self.class_share.max()

    def state_dict(self) -> dict:
        """Plain-data state (weights_only-safe), for exact resume."""
        return {"momentum": self.momentum, "level": self.level.cpu(), "class_share": self.class_share.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        self.momentum = float(state["momentum"])
        self.level, self.class_share = state["level"].clone(), state["class_share"].clone()


class DistributionAlignment:
    """ReMixMatch's distribution alignment: probs * target / EMA(mean prediction), renormalised."""

    def __init__(self, num_classes: int, target: Tensor | None = None, momentum: float = 0.99):
        self.momentum = float(momentum)
        self.target = (torch.full((num_classes,), 1.0 / num_classes) if target is None
                       else target.float() / target.float().sum())
        self.running = self.target.clone()

    @torch.no_grad()
    def __call__(self, probs: Tensor) -> Tensor:
        """Update the running mean with this batch and return the aligned probabilities [B, C]."""
        probs = probs.detach().float()
        m = self.momentum
        self.running = self.running.to(probs.device) * m + (1 - m) * probs.mean(dim=0)
        aligned = probs * (self.target.to(probs.device) / self.running.clamp_min(1e-6))
        return aligned / aligned.sum(dim=1, keepdim=True)

    def state_dict(self) -> dict:
        """Plain-data state, for exact resume."""
        return {"momentum": self.momentum, "target": self.target.cpu(), "running": self.running.cpu()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        self.momentum = float(state["momentum"])
        self.target, self.running = state["target"].clone(), state["running"].clone()


def unlabeled_order(n: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` indices into n unlabeled images: concatenated fresh permutations (each image once per pass)."""
    reps = max(1, math.ceil(count / n))
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:count]
