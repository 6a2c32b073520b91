"""Networks: torchvision ResNet classifiers and a U-Net whose encoder is the same ResNet trunk."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

ARCHS = ("resnet18", "resnet34", "resnet50")
DEFAULT_DECODER_CHANNELS = (256, 128, 64, 32)

# Names of the ResNet trunk modules; the U-Net encoder keeps exactly these so state_dict keys match.
TRUNK_MODULES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
TRUNK_PARAM_ROOTS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")


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
        for name in TRUNK_MODULES:
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
