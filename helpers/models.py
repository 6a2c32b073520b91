"""Networks: torchvision ResNet classifiers, a U-Net on the same encoder, encoder transfer, seg loss."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

ARCHS = ("resnet18", "resnet34", "resnet50")
IGNORE_INDEX = 255  # same value as helpers.masks.IGNORE_INDEX
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32)

# Names of the ResNet trunk modules; the U-Net encoder keeps exactly these so state_dict keys match.
_TRUNK = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
_TRUNK_PARAM_ROOTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
# Prefixes added by DataParallel / torch.compile / a U-Net checkpoint; removed before matching.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "encoder.")
_CHECKPOINT_KEYS = ("model", "state_dict", "model_state_dict")


def _check_arch(arch: str) -> None:
    """Raise ValueError unless `arch` is one of ARCHS."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")


def _small_stem_(resnet: nn.Module) -> None:
    """Replace the 7x7/2 conv + max-pool stem with a 3x3/1 conv (for 32-96 px images)."""
    conv = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # as torchvision does
    resnet.conv1 = conv
    resnet.maxpool = nn.Identity()


def build_classifier(arch: str, num_classes: int, small_stem: bool = False) -> nn.Module:
    """A randomly initialised torchvision ResNet classifier (never downloads weights)."""
    _check_arch(arch)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if small_stem:
        _small_stem_(model)
    return model


def model_spec(
    arch: str,
    num_classes: int,
    small_stem: bool,
    image_size: int,
    class_names: Sequence[str],
    decoder_channels: Sequence[int] | None = None,
) -> dict:
    """Plain-data description of a network, stored in checkpoints to rebuild it later."""
    _check_arch(arch)
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
    spec = {
        "arch": arch,
        "num_classes": int(num_classes),
        "small_stem": bool(small_stem),
        "image_size": int(image_size),
        "class_names": class_names,
    }
    if decoder_channels is not None:
        spec["decoder_channels"] = [int(c) for c in decoder_channels]
    return spec


def _spec_fields(spec: Mapping) -> tuple[str, int, bool]:
    """(arch, num_classes, small_stem) of a spec, with a clear error when a field is missing."""
    missing = [k for k in ("arch", "num_classes", "small_stem") if k not in spec]
    if missing:
        raise ValueError(f"model spec lacks {missing}; build it with helpers.models.model_spec")
    return spec["arch"], int(spec["num_classes"]), bool(spec["small_stem"])


def classifier_from_spec(spec: Mapping) -> nn.Module:
    """Rebuild the classifier described by `model_spec` (random weights; load the state after)."""
    return build_classifier(*_spec_fields(spec))


def unet_from_spec(spec: Mapping) -> UNet:
    """Rebuild the U-Net described by `model_spec` (random weights; load the state after)."""
    arch, num_classes, small_stem = _spec_fields(spec)
    channels = spec.get("decoder_channels") or DEFAULT_DECODER_CHANNELS
    return UNet(arch, num_classes, small_stem=small_stem, decoder_channels=tuple(channels))


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (all, or only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


class ResNetEncoder(nn.Module):
    """The ResNet trunk (classifier minus avgpool/fc) returning the stem and every stage's features."""

    def __init__(self, arch: str, small_stem: bool = False):
        super().__init__()
        resnet = build_classifier(arch, num_classes=1, small_stem=small_stem)
        for name in _TRUNK:
            setattr(self, name, getattr(resnet, name))
        expansion = type(resnet.layer1[0]).expansion  # 1 for BasicBlock, 4 for Bottleneck
        self.channels = (64, 64 * expansion, 128 * expansion, 256 * expansion, 512 * expansion)

    def forward(self, x: Tensor) -> list[Tensor]:
        """[stem, layer1, layer2, layer3, layer4] feature maps."""
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """3x3 conv (no bias) + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class DecoderBlock(nn.Module):
    """Upsample to the skip's size, concatenate the skip, two conv3x3-BN-ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int):
        super().__init__()
        self.convs = nn.Sequential(_conv_bn_relu(cin + cskip, cout), _conv_bn_relu(cout, cout))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """Fuse the coarser map `x` into the finer `skip`."""
        if x.shape[-2:] != skip.shape[-2:]:
            # interpolate to the exact size, so odd feature sizes (e.g. 7 -> 13) also line up
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.convs(torch.cat([x, skip], dim=1))


class UNet(nn.Module):
    """U-Net on a torchvision ResNet encoder; heads: fg (object vs background) and seg (K+1 ids)."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        small_stem: bool = False,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
    ):
        super().__init__()
        if len(decoder_channels) != 4:
            raise ValueError(f"decoder_channels needs 4 entries (one per skip), got {decoder_channels}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.arch, self.num_classes, self.small_stem = arch, num_classes, small_stem
        self.encoder = ResNetEncoder(arch, small_stem)
        stem_c, c1, c2, c3, c4 = self.encoder.channels
        skips = (c3, c2, c1, stem_c)
        blocks, cin = [], c4
        for cskip, cout in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        self.fg_head = nn.Conv2d(cin, 1, kernel_size=1)
        self.seg_head = nn.Conv2d(cin, num_classes + 1, kernel_size=1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """{'fg': [B,1,H,W] logits, 'seg': [B,num_classes+1,H,W] logits (0 = background)}."""
        stem, f1, f2, f3, f4 = self.encoder(x)
        y = f4
        for block, skip in zip(self.decoder, (f3, f2, f1, stem)):
            y = block(y, skip)
        fg, seg = self.fg_head(y), self.seg_head(y)
        if fg.shape[-2:] != x.shape[-2:]:
            # the normal stem's finest skip is at H/2; upsampling logits is cheaper than a full-res stage
            fg = F.interpolate(fg, size=x.shape[-2:], mode="bilinear", align_corners=False)
            seg = F.interpolate(seg, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"fg": fg, "seg": seg}


@dataclass
class EncoderLoadReport:
    """What a weight transfer did: target keys not filled, source keys not used, tensors copied."""

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    loaded: int = 0


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
        if isinstance(value, Tensor) and key.startswith(_TRUNK_PARAM_ROOTS):
            out["encoder." + key] = value
    return out


def _trunk_of(model: nn.Module) -> nn.Module:
    """The module whose state (minus fc.*) is the ResNet trunk: a U-Net's encoder or a classifier."""
    if isinstance(model, UNet):
        return model.encoder
    if all(hasattr(model, name) for name in _TRUNK):
        return model
    raise TypeError(f"expected a UNet or a torchvision ResNet classifier, got {type(model).__name__}")


def _load_trunk(target: nn.Module, source: Mapping, what: str) -> EncoderLoadReport:
    """Copy the trunk tensors of `source` into `target`; ValueError naming `what` on any mismatch."""
    wanted = {k: t for k, t in target.state_dict().items() if k.startswith(_TRUNK_PARAM_ROOTS)}
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
        if key.startswith(_TRUNK_PARAM_ROOTS):
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
    return EncoderLoadReport(missing=[], unexpected=unexpected, loaded=len(found))


def load_encoder(unet: UNet, classifier_state: Mapping[str, Tensor]) -> EncoderLoadReport:
    """Copy a classifier's trunk (params and BN buffers) into `unet.encoder`; fc.* is reported unused."""
    return _load_trunk(unet.encoder, classifier_state, "classifier state")


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


def segmentation_loss(
    out: Mapping[str, Tensor],
    target: Tensor,
    fg_weight: float = 1.0,
    dice_weight: float = 1.0,
) -> Tensor:
    """CE on 'seg' + fg_weight * BCE on 'fg' + dice_weight * soft Dice on fg; 255 pixels ignored."""
    seg, fg = out["seg"].float(), out["fg"].float()
    if target.ndim != 3 or target.shape[-2:] != seg.shape[-2:] or target.shape[0] != seg.shape[0]:
        raise ValueError(f"target shape {tuple(target.shape)} does not match seg logits {tuple(seg.shape)}")
    target = target.long()
    valid = target != IGNORE_INDEX
    n_valid = valid.sum().clamp(min=1)
    # sum / count instead of mean: an all-ignored batch gives 0, not NaN
    ce = F.cross_entropy(seg, target, ignore_index=IGNORE_INDEX, reduction="sum") / n_valid
    fg_logit = fg[:, 0]
    fg_target = (target > 0) & valid
    bce = F.binary_cross_entropy_with_logits(fg_logit, fg_target.float(), reduction="none")
    bce = torch.where(valid, bce, torch.zeros_like(bce)).sum() / n_valid
    prob = torch.where(valid, torch.sigmoid(fg_logit), torch.zeros_like(fg_logit))
    truth = fg_target.float()
    inter = (prob * truth).flatten(1).sum(1)
    denom = prob.flatten(1).sum(1) + truth.flatten(1).sum(1)
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)  # per image, +1 smoothing: empty vs empty = 0
    return ce + fg_weight * bce + dice_weight * dice.mean()
