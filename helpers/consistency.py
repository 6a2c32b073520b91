"""Learning from unlabeled images by consistency: a model's confident guess on one view supervises another.

FixMatch (Sohn et al., NeurIPS 2020, arXiv:2001.07685): for each unlabeled image the model predicts
a weakly augmented view; where it is confident (max probability >= threshold), that class is the
target for a strongly augmented view of the same image. helpers.classification calls
`fixmatch_loss` from its training step; notebook 02 writes the same function out and checks it
against this one.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def fixmatch_loss(logits_weak: Tensor, logits_strong: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, mask, pseudo-labels): cross-entropy of the strong view against the weak view's confident argmax."""
    probs = logits_weak.detach().float().softmax(dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = (confidence >= threshold).float()
    loss = (F.cross_entropy(logits_strong.float(), pseudo, reduction="none") * mask).mean()
    return loss, mask, pseudo


def unlabeled_order(n: int, count: int, generator: torch.Generator) -> Tensor:
    """`count` indices into n unlabeled images: concatenated fresh permutations (each image once per pass)."""
    reps = max(1, math.ceil(count / n))
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(reps)])[:count]
