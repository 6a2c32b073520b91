"""Tests for helpers.models, helpers.transfer and the segmentation loss: shapes, encoder transfer, weight files, specs."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from torch import nn

from helpers.models import (
    ARCHS,
    UNet,
    build_classifier,
    classifier_from_spec,
    count_parameters,
    model_spec,
    unet_from_spec,
)
from helpers.segmentation import segmentation_loss
from helpers.transfer import EncoderLoadReport, encoder_state_from_classifier, load_encoder, load_encoder_weights


def _randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and float buffer distinctive random values (BN running stats included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            else:
                tensor.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))
    return model


@functools.cache
def _shared_classifier(arch: str, small_stem: bool) -> nn.Module:
    """One 7-way classifier per (arch, stem), built once; only for tests that do not modify it."""
    return build_classifier(arch, num_classes=7, small_stem=small_stem).eval()


@functools.cache
def _shared_unet(arch: str, small_stem: bool) -> UNet:
    """One 4-class U-Net per (arch, stem), built once; only for tests that do not modify it."""
    return UNet(arch, num_classes=4, small_stem=small_stem).eval()


# both stems on resnet18; resnet34 / resnet50 (Bottleneck blocks) once each to keep the file fast
@pytest.mark.parametrize(
    "arch,small_stem",
    [("resnet18", False), ("resnet18", True), ("resnet34", False), ("resnet50", True)],
)
def test_classifier_output_shape(arch, small_stem):
    assert arch in ARCHS
    model = _shared_classifier(arch, small_stem)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 7)
    assert model.fc.out_features == 7
    if small_stem:
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert model.conv1.bias is None and model.conv1.out_channels == 64
        assert isinstance(model.maxpool, nn.Identity)
    else:
        assert model.conv1.kernel_size == (7, 7) and model.conv1.stride == (2, 2)


def test_small_stem_keeps_more_resolution():
    feats = {}
    for small in (False, True):
        model = _shared_classifier("resnet18", small)
        hook = model.layer4.register_forward_hook(lambda m, i, o, s=small: feats.__setitem__(s, o.shape))
        with torch.no_grad():
            model(torch.randn(1, 3, 64, 64))
        hook.remove()
    assert feats[False][-2:] == (2, 2)  # 64 / 32
    assert feats[True][-2:] == (8, 8)  # 64 / 8


def test_unknown_arch_lists_choices():
    with pytest.raises(ValueError, match="resnet18.*resnet34.*resnet50"):
        build_classifier("vgg16", 10)
    with pytest.raises(ValueError, match="vgg16"):
        UNet("vgg16", 10)


@pytest.mark.parametrize("small_stem", [False, True])
@pytest.mark.parametrize("size", [(64, 64), (96, 128), (100, 75)])
def test_unet_output_at_input_resolution(small_stem, size):
    model = _shared_unet("resnet18", small_stem)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))
    assert set(out) == {"fg", "seg"}
    assert out["fg"].shape == (1, 1, *size)
    assert out["seg"].shape == (1, 5, *size)  # background + 4 classes


def test_unet_resnet50_shape():
    model = _shared_unet("resnet50", True)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))
    assert out["seg"].shape == (1, 5, 32, 32) and out["fg"].shape == (1, 1, 32, 32)


@pytest.mark.parametrize("arch,small_stem", [("resnet18", False), ("resnet50", True)])
def test_encoder_keys_match_classifier(arch, small_stem):
    clf = _shared_classifier(arch, small_stem)
    unet = _shared_unet(arch, small_stem)
    clf_keys = {k for k in clf.state_dict() if not k.startswith("fc.")}
    enc_keys = {k[len("encoder."):] for k in unet.state_dict() if k.startswith("encoder.")}
    assert clf_keys == enc_keys
    assert set(encoder_state_from_classifier(clf.state_dict())) == {"encoder." + k for k in clf_keys}


def test_load_encoder_copies_params_and_buffers():
    clf = _randomize_(build_classifier("resnet18", 6, small_stem=True))
    unet = UNet("resnet18", 6, small_stem=True)
    decoder_before = {k: v.clone() for k, v in unet.state_dict().items() if not k.startswith("encoder.")}
    report = load_encoder(unet, clf.state_dict())
    assert isinstance(report, EncoderLoadReport)
    assert report.missing == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    clf_state, unet_state = clf.state_dict(), unet.state_dict()
    trunk = [k for k in clf_state if not k.startswith("fc.")]
    assert report.loaded == len(trunk)
    for key in trunk:
        assert torch.equal(unet_state["encoder." + key], clf_state[key]), key
    # buffers really were transferred (the randomized values differ from BN defaults)
    assert torch.equal(unet.encoder.bn1.running_mean, clf.bn1.running_mean)
    assert not torch.equal(unet.encoder.bn1.running_var, torch.ones(64))
    # the decoder and heads are untouched
    for key, value in decoder_before.items():
        assert torch.equal(unet_state[key], value), key
    # the copy is by value: changing the classifier afterwards does not touch the U-Net
    with torch.no_grad():
        clf.conv1.weight.zero_()
    assert unet.encoder.conv1.weight.abs().sum() > 0


def test_load_encoder_accepts_wrapped_keys():
    clf = _randomize_(build_classifier("resnet18", 3))
    wrapped = {"module._orig_mod." + k: v for k, v in clf.state_dict().items()}
    unet = UNet("resnet18", 3)
    report = load_encoder(unet, wrapped)
    assert report.loaded == len(clf.state_dict()) - 2
    assert torch.equal(unet.encoder.layer4[1].conv2.weight, clf.layer4[1].conv2.weight)


@pytest.mark.parametrize(
    "src_arch,src_small,dst_arch,dst_small",
    [
        ("resnet18", False, "resnet34", False),  # source too shallow: keys missing
        ("resnet34", False, "resnet18", False),  # source too deep: extra blocks
        ("resnet18", False, "resnet50", False),  # different block type
        ("resnet18", True, "resnet18", False),  # stem mismatch: conv1 shape
    ],
)
def test_load_encoder_rejects_other_arch(src_arch, src_small, dst_arch, dst_small):
    clf = build_classifier(src_arch, 4, src_small)
    unet = UNet(dst_arch, 4, dst_small)
    before = unet.encoder.conv1.weight.clone()
    with pytest.raises(ValueError, match="encoder|shape") as info:
        load_encoder(unet, clf.state_dict())
    assert "arch" in str(info.value)
    # a rejected transfer leaves the model unchanged
    assert torch.equal(unet.encoder.conv1.weight, before)


def test_load_encoder_names_missing_keys():
    state = build_classifier("resnet18", 4).state_dict()
    del state["layer3.0.bn1.running_mean"]
    with pytest.raises(ValueError, match=r"layer3\.0\.bn1\.running_mean"):
        load_encoder(UNet("resnet18", 4), state)


@pytest.mark.parametrize("wrap", [None, "model", "state_dict"])
def test_load_encoder_weights_from_file_into_unet(tmp_path, wrap):
    clf = _randomize_(build_classifier("resnet18", 1000), seed=1)  # like a torchvision ImageNet file
    state = clf.state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state if wrap is None else {wrap: state, "epoch": 3}, path)
    unet = UNet("resnet18", 5)
    report = load_encoder_weights(unet, path)
    assert report.missing == [] and report.loaded == len(state) - 2
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(unet.state_dict()["encoder." + key], value), key


def test_load_encoder_weights_into_classifier_keeps_fc(tmp_path):
    src = _randomize_(build_classifier("resnet18", 1000), seed=2)
    path = tmp_path / "w.pt"
    torch.save({"model": src.state_dict()}, path)
    model = build_classifier("resnet18", 9)
    fc_before = model.fc.weight.clone()
    report = load_encoder_weights(model, path)
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.fc.weight, fc_before)  # 1000-way head not forced onto a 9-way model
    assert torch.equal(model.layer2[0].downsample[1].running_var, src.layer2[0].downsample[1].running_var)
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 9)


def test_load_encoder_weights_from_unet_checkpoint(tmp_path):
    src = _randomize_(UNet("resnet18", 3), seed=3)
    path = tmp_path / "unet.pt"
    torch.save({"model": src.state_dict()}, path)
    dst = UNet("resnet18", 3)
    load_encoder_weights(dst, path)
    assert torch.equal(dst.encoder.layer1[0].conv1.weight, src.encoder.layer1[0].conv1.weight)


def test_load_encoder_weights_errors_name_the_file(tmp_path):
    unet = UNet("resnet18", 3)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_encoder_weights(unet, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    torch.save({"weight": torch.zeros(3), "bias": torch.zeros(3)}, junk)
    with pytest.raises(ValueError, match="junk.pth"):
        load_encoder_weights(unet, junk)
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="text.pth"):
        load_encoder_weights(unet, text)
    other = tmp_path / "r34.pth"
    torch.save(build_classifier("resnet34", 3).state_dict(), other)
    with pytest.raises(ValueError, match="r34.pth"):
        load_encoder_weights(unet, other)


def _perfect_logits(target: torch.Tensor, num_classes: int, scale: float = 30.0) -> dict:
    """Logits that put all mass on the target (any value at ignored pixels)."""
    t = target.long().clone()
    t[t == 255] = 0
    seg = torch.nn.functional.one_hot(t, num_classes + 1).permute(0, 3, 1, 2).float() * 2 * scale - scale
    fg = ((t > 0).float() * 2 - 1).unsqueeze(1) * scale
    return {"fg": fg, "seg": seg}


def _target() -> torch.Tensor:
    target = torch.zeros(2, 16, 16, dtype=torch.uint8)
    target[0, 4:10, 4:10] = 3
    target[1, 2:14, 6:12] = 1
    target[:, 0, :] = 255  # ignore band
    target[:, :, -1] = 255
    return target


def test_segmentation_loss_ignores_ignored_pixels():
    torch.manual_seed(0)
    target = _target()
    out = {"fg": torch.randn(2, 1, 16, 16), "seg": torch.randn(2, 4, 16, 16)}
    base = segmentation_loss(out, target)
    ignored = (target == 255).unsqueeze(1)
    changed = {
        "fg": torch.where(ignored, torch.full_like(out["fg"], 50.0), out["fg"]),
        "seg": torch.where(ignored.expand_as(out["seg"]), torch.randn(2, 4, 16, 16) * 100, out["seg"]),
    }
    assert torch.allclose(segmentation_loss(changed, target), base, atol=1e-6)
    # while changing a valid pixel does change it
    changed["fg"][0, 0, 5, 5] += 5.0
    assert not torch.allclose(segmentation_loss(changed, target), base, atol=1e-6)


def test_segmentation_loss_perfect_and_wrong():
    target = _target()
    perfect = segmentation_loss(_perfect_logits(target, 3), target)
    assert perfect.item() < 1e-3
    wrong = _perfect_logits(target, 3)
    wrong = {"fg": -wrong["fg"], "seg": -wrong["seg"]}
    assert segmentation_loss(wrong, target).item() > 10.0
    # weights scale the fg terms only
    torch.manual_seed(1)
    out = {"fg": torch.randn(2, 1, 16, 16), "seg": torch.randn(2, 4, 16, 16)}
    no_fg = segmentation_loss(out, target, fg_weight=0.0, dice_weight=0.0)
    ce = torch.nn.functional.cross_entropy(out["seg"], target.long(), ignore_index=255)
    assert torch.allclose(no_fg, ce, atol=1e-6)
    assert segmentation_loss(out, target).item() > no_fg.item()


def test_segmentation_loss_all_ignored_is_finite():
    target = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    out = {"fg": torch.randn(1, 1, 8, 8, requires_grad=True), "seg": torch.randn(1, 3, 8, 8, requires_grad=True)}
    loss = segmentation_loss(out, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert out["fg"].grad.abs().sum() == 0 and out["seg"].grad.abs().sum() == 0


def test_segmentation_loss_gradients_flow_through_unet():
    torch.manual_seed(0)
    model = UNet("resnet18", 3, small_stem=True)
    target = _target()
    loss = segmentation_loss(model(torch.randn(2, 3, 16, 16)), target)
    loss.backward()
    assert model.fg_head.weight.grad.abs().sum() > 0
    assert model.seg_head.weight.grad.abs().sum() > 0
    assert model.encoder.conv1.weight.grad.abs().sum() > 0


def test_segmentation_loss_zero_grad_at_ignored_pixels():
    target = _target()
    fg = torch.randn(2, 1, 16, 16, requires_grad=True)
    seg = torch.randn(2, 4, 16, 16, requires_grad=True)
    segmentation_loss({"fg": fg, "seg": seg}, target).backward()
    ignored = target == 255
    assert fg.grad[:, 0][ignored].abs().max() == 0
    assert seg.grad.permute(0, 2, 3, 1)[ignored].abs().max() == 0
    assert fg.grad[:, 0][~ignored].abs().sum() > 0


def test_segmentation_loss_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        segmentation_loss({"fg": torch.zeros(1, 1, 8, 8), "seg": torch.zeros(1, 3, 8, 8)},
                          torch.zeros(1, 4, 4, dtype=torch.uint8))


def test_model_spec_round_trip():
    names = ["goldfish", "tiger shark", "lemon"]
    spec = model_spec("resnet34", 3, True, 64, names)
    assert json.loads(json.dumps(spec)) == spec  # plain data only
    assert spec == {"arch": "resnet34", "num_classes": 3, "small_stem": True, "image_size": 64,
                    "class_names": names}
    src = _randomize_(build_classifier("resnet34", 3, small_stem=True))
    rebuilt = classifier_from_spec(json.loads(json.dumps(spec)))
    rebuilt.load_state_dict(src.state_dict())  # strict: same architecture
    assert isinstance(rebuilt.maxpool, nn.Identity)
    with pytest.raises(ValueError, match="class names"):
        model_spec("resnet18", 4, False, 64, names)
    with pytest.raises(ValueError, match="resnet18"):
        model_spec("alexnet", 3, False, 64, names)
    with pytest.raises(ValueError, match="arch"):
        classifier_from_spec({"num_classes": 3})


def test_unet_from_spec():
    spec = model_spec("resnet18", 2, False, 64, ["a", "b"], decoder_channels=(64, 32, 32, 16))
    unet = unet_from_spec(spec)
    assert unet.seg_head.out_channels == 3 and unet.seg_head.in_channels == 16
    src = UNet("resnet18", 2, decoder_channels=(64, 32, 32, 16))
    unet.load_state_dict(src.state_dict())


def test_count_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2, bias=False))
    assert count_parameters(model) == 3 * 4 + 4 + 4 * 2
    model[0].weight.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 4 + 8
    clf = build_classifier("resnet18", 10)
    assert count_parameters(clf) == 11_181_642  # torchvision resnet18 with a 10-way head


def test_compare_keys_lists_what_a_transfer_copies():
    from helpers.transfer import compare_keys

    classifier = build_classifier("resnet18", 4)
    unet = UNet("resnet18", 4, decoder_channels=(16, 16, 8, 8))
    keys = compare_keys(classifier.state_dict(), unet)
    assert keys["source_only"] == ["fc.bias", "fc.weight"]
    assert len(keys["matched"]) == len(classifier.state_dict()) - 2
    assert all(k.startswith("encoder.") for k in keys["matched"])
    assert set(keys["matched"]) | set(keys["target_only"]) == set(unet.state_dict())
    assert all(k.startswith(("decoder.", "fg_head.", "seg_head.")) for k in keys["target_only"])
