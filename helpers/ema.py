"""Exponential moving average (EMA) of a model's weights: a smoother model to validate and ship."""
from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def cpu_state(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of a model's state_dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


class EMA:
    """Exponential moving average of a model's weights: float params and buffers averaged, int buffers copied.

    With `warmup`, the decay used at update n is min(decay, (1 + n) / (10 + n)), so that short runs
    (few steps per epoch) are not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update uses."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema = d * ema + (1 - d) * model for float tensors; integer buffers are copied."""
        d = self.current_decay()
        ema_state = self.model.state_dict()
        floats_ema, floats_new = [], []
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.is_floating_point():
                floats_ema.append(target)
                floats_new.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if floats_ema:
            torch._foreach_lerp_(floats_ema, floats_new, 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Plain-data state (weights_only-safe)."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "model": cpu_state(self.model)}

    def load_state_dict(self, state: dict) -> None:
        """Restore from `state_dict()`."""
        self.model.load_state_dict(state["model"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
