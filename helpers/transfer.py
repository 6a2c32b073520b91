"""Encoder transfer: copy a ResNet trunk's weights between classifiers, U-Nets and weight files.

The U-Net's encoder keeps the torchvision ResNet's module names (conv1, bn1, layer1..layer4), so a
classifier's state_dict fits it key for key once the `fc.*` head is left out. Every transfer is
checked: a missing encoder tensor, a shape mismatch or a trunk-like key the target lacks is an
error naming the source, and the report lists what was loaded and what was left unused.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from .models import TRUNK_MODULES, TRUNK_PARAM_ROOTS, UNet

# Prefixes added by DataParallel / torch.compile / a U-Net checkpoint; removed before matching.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "encoder.")
_CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")


@dataclass
class EncoderLoadReport:
    """What a weight transfer did: target keys not filled, source keys not used, tensors copied."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    loaded: int = 0
    digest: str = ""  # a hash of the copied tensors (state_digest): which weights the model starts from


def _normalise_key(key: str) -> str:
    """Strip wrapper prefixes (DataParallel, torch.compile, a U-Net's 'encoder.')."""
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def encoder_state_from_classifier(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Classifier state without fc.*, keys prefixed with 'encoder.' for the U-Net."""
    out = {}
    for key, value in state_dict.items():
        key = _normalise_key(key)
        if isinstance(value, Tensor) and key.startswith(TRUNK_PARAM_ROOTS):
            out["encoder." + key] = value
    return out


def _trunk_of(model: nn.Module) -> nn.Module:
    """The module whose state (minus fc.*) is the ResNet trunk: a U-Net's encoder or a classifier."""
    if isinstance(model, UNet):
        return model.encoder
    if all(hasattr(model, name) for name in TRUNK_MODULES):
        return model
    raise TypeError(f"expected a UNet or a torchvision ResNet classifier, got {type(model).__name__}")


def _load_trunk(target: nn.Module, source: Mapping, what: str) -> EncoderLoadReport:
    """Copy the trunk tensors of `source` into `target`; ValueError naming `what` on any mismatch."""
    wanted = {k: t for k, t in target.state_dict().items() if k.startswith(TRUNK_PARAM_ROOTS)}
    found: dict[str, Tensor] = {}
    unexpected, extra_trunk, bad_shape = [], [], []
    for raw_key, value in source.items():
        key = _normalise_key(str(raw_key))
        if key in wanted and isinstance(value, Tensor):
            if value.shape != wanted[key].shape:
                bad_shape.append(f"{key} {tuple(value.shape)} != {tuple(wanted[key].shape)}")
            else:
                found[key] = value
            continue
        unexpected.append(str(raw_key))
        if key.startswith(TRUNK_PARAM_ROOTS):
            extra_trunk.append(str(raw_key))
    missing = [k for k in wanted if k not in found]
    if not found:
        sample = ", ".join(list(map(str, source.keys()))[:5]) or "no keys"
        raise ValueError(
            f"{what}: none of the {len(wanted)} encoder tensors found (keys look like: {sample}); "
            "expected a torchvision ResNet state_dict of the same arch")
    if missing or bad_shape or extra_trunk:
        parts = []
        if missing:
            parts.append(f"{len(missing)} encoder keys missing (e.g. {', '.join(missing[:5])})")
        if bad_shape:
            parts.append(f"shape mismatch: {'; '.join(bad_shape[:5])}")
        if extra_trunk:
            parts.append(f"{len(extra_trunk)} encoder-like keys the model lacks "
                         f"(e.g. {', '.join(extra_trunk[:5])})")
        raise ValueError(
            f"{what} does not fit this encoder: {' | '.join(parts)}. "
            "Use the same arch and small_stem setting as the model that produced the weights.")
    state = target.state_dict()  # tensors share storage with the module
    with torch.no_grad():
        for key, value in found.items():
            state[key].copy_(value)
    return EncoderLoadReport(missing=[], unexpected=unexpected, loaded=len(found), digest=state_digest(found))


def state_digest(tensors: Mapping[str, Tensor]) -> str:
    """A short hash of tensors' names, dtypes and values (a training records which weights it started from)."""
    h = hashlib.sha1()
    for key in sorted(tensors):
        flat = tensors[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}:{flat.dtype}:".encode())
        h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def load_encoder(unet: UNet, classifier_state: Mapping[str, Tensor], source: str = "classifier state") -> EncoderLoadReport:
    """Copy a classifier's trunk (params and BN buffers) into `unet.encoder`; fc.* is reported unused.

    source: how errors name the state (e.g. the checkpoint file it came from).
    """
    return _load_trunk(unet.encoder, classifier_state, source)


def _state_from_file(obj: object, path: Path) -> Mapping:
    """The state_dict inside a loaded file: the object itself or its 'model'/'state_dict' entry."""
    if isinstance(obj, Mapping):
        for key in _CHECKPOINT_KEYS:
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if any(isinstance(v, Tensor) for v in obj.values()):
            return obj
    raise ValueError(
        f"{path}: expected a ResNet state_dict or a dict with a 'model' / 'state_dict' entry, "
        f"got {type(obj).__name__}")


def load_encoder_weights(model: nn.Module, path: Path | str) -> EncoderLoadReport:
    """Load ResNet trunk weights from a local file into a classifier (fc kept) or a U-Net encoder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path}; set encoder_weights to a local file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is reported with the file name
        raise ValueError(f"{path}: cannot be read with torch.load(weights_only=True): {exc}") from exc
    return _load_trunk(_trunk_of(model), _state_from_file(obj, path), str(path))


def compare_keys(source_state: Mapping[str, Tensor], target: nn.Module) -> dict[str, list[str]]:
    """Which state-dict keys a transfer copies: {"matched", "source_only", "target_only"} (target: a UNet or ResNet)."""
    trunk = _trunk_of(target)
    prefix = "encoder." if isinstance(target, UNet) else ""
    wanted = {k for k in trunk.state_dict() if k.startswith(TRUNK_PARAM_ROOTS)}
    source = {_normalise_key(str(k)) for k in source_state}
    matched = {prefix + k for k in wanted & source}
    return {"matched": sorted(matched), "source_only": sorted(source - wanted),
            "target_only": sorted(k for k in target.state_dict() if k not in matched)}
