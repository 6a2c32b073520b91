"""Tests for helpers.augment: geometry alignment of images and masks, determinism, colour ops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import augment as A

PALETTE = torch.tensor(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255], [0, 255, 255],
     [255, 255, 255]],
    dtype=torch.uint8,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def block_scene(b: int, h: int, w: int, block: int, seed: int, with_ignore: bool = True):
    """Images whose pixel colour is the palette colour of the mask class; blocks of block x block pixels."""
    g = gen(seed)
    classes = torch.randint(0, len(PALETTE), (b, h // block, w // block), generator=g)
    classes = classes.repeat_interleave(block, 1).repeat_interleave(block, 2)
    masks = classes.to(torch.uint8)
    if with_ignore:
        # Palette entry 7 stands for an ignore (255) region inside the image.
        masks[classes == 7] = 255
    images = PALETTE[classes].permute(0, 3, 1, 2).contiguous()
    return images, masks


def class_of_colour(images: torch.Tensor) -> torch.Tensor:
    """Nearest palette entry of every pixel of float [B,3,H,W] images, as mask values (7 -> 255)."""
    pal = PALETTE.float() / 255
    d = ((images.permute(0, 2, 3, 1).unsqueeze(-2) - pal) ** 2).sum(-1)
    cls = d.argmin(-1)
    cls[cls == 7] = 255
    return cls


def uniform_neighbourhood(masks: torch.Tensor) -> torch.Tensor:
    """True where the 3x3 neighbourhood of a pixel in masks [B,H,W] holds one value (borders False)."""
    m = masks.float().unsqueeze(1)
    hi = F.max_pool2d(m, 3, stride=1, padding=1)
    lo = -F.max_pool2d(-m, 3, stride=1, padding=1)
    keep = (hi == lo).squeeze(1)
    keep[:, 0, :] = keep[:, -1, :] = keep[:, :, 0] = keep[:, :, -1] = False
    return keep


# ----------------------------------------------------------------------------- normalisation
def test_normalize_uint8_and_float_agree_and_denormalize_inverts():
    x = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    a, b = A.normalize(x), A.normalize(x.float() / 255)
    assert a.dtype == torch.float32 and a.shape == x.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    mean = torch.tensor(A.MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(A.normalize(mean.expand(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(A.denormalize(a), x.float() / 255, atol=1e-5, rtol=0)


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        A.normalize(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="masks"):
        A.random_resized_affine(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.zeros(2, 4, 4, dtype=torch.uint8), 8)
    with pytest.raises(ValueError, match="scale"):
        A.random_resized_affine(torch.zeros(2, 3, 8, 8), None, 8, scale=(0.5, 1.5))


# ----------------------------------------------------------------------------- geometry
def test_fast_affine_grid_matches_torch():
    theta = torch.randn(5, 2, 3, generator=gen(0))
    torch.testing.assert_close(A._affine_grid(theta, 7), F.affine_grid(theta, [5, 3, 7, 7], align_corners=False))


def test_affine_shapes_dtypes_ranges_and_mask_values():
    images, masks = block_scene(16, 48, 40, 8, seed=1)  # non-square source on purpose
    out, out_m = A.random_resized_affine(images, masks, 32, generator=gen(0))
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32
    assert out_m.shape == (16, 32, 32) and out_m.dtype == torch.uint8
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert set(out_m.unique().tolist()) <= set(masks.unique().tolist())
    # Crops stay inside the source, so no outside-255 may appear where the input has none.
    _, m2 = A.random_resized_affine(images, masks.clamp(max=6), 32, generator=gen(0))
    assert 255 not in m2.unique().tolist()
    out3, none = A.random_resized_affine(images, None, 24, generator=gen(0))
    assert none is None and out3.shape == (16, 3, 24, 24)


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_affine_warps_image_and_mask_identically(degrees):
    agree = total = 0
    for seed in range(8):
        images, masks = block_scene(8, 64, 64, 16, seed=100 + seed)
        out, out_m = A.random_resized_affine(images, masks, 48, generator=gen(seed), degrees=degrees)
        keep = uniform_neighbourhood(out_m)
        if degrees:
            keep &= out_m != 255  # outside-the-source pixels have border-padded colours
        agree += (class_of_colour(out) == out_m.long())[keep].sum().item()
        total += keep.sum().item()
    assert total > 8 * 8 * 48 * 48 * 0.4
    assert agree / total >= 0.98, agree / total


@pytest.mark.parametrize("degrees", [0.0, 20.0])
def test_affine_mask_is_sub_pixel_aligned_with_image(degrees):
    # Image channels are linear ramps of the column / row index and the masks hold those indices, so
    # the bilinear image sample gives the exact source position and the nearest mask sample must lie
    # within half a pixel of it everywhere (a half-pixel convention mismatch breaks this).
    b, h, w = 16, 40, 56
    cols = torch.arange(w).view(1, 1, w).expand(b, h, w)
    rows = torch.arange(h).view(1, h, 1).expand(b, h, w)
    images = torch.stack([cols * 4, rows * 4, torch.zeros_like(cols)], dim=1).to(torch.uint8)
    out, col_m = A.random_resized_affine(images, cols.to(torch.uint8), 32, generator=gen(4), degrees=degrees)
    _, row_m = A.random_resized_affine(images, rows.to(torch.uint8), 32, generator=gen(4), degrees=degrees)
    inside = (col_m != 255) & (row_m != 255)
    assert inside.float().mean() > 0.7
    col_err = (out[:, 0] * 255 / 4 - col_m.float())[inside].abs()
    row_err = (out[:, 1] * 255 / 4 - row_m.float())[inside].abs()
    assert col_err.max() <= 0.5 + 2e-3 and row_err.max() <= 0.5 + 2e-3, (col_err.max(), row_err.max())


def test_rotation_marks_outside_pixels_ignore():
    images, masks = block_scene(16, 32, 32, 8, seed=3, with_ignore=False)
    _, out_m = A.random_resized_affine(images, masks, 32, scale=(1.0, 1.0), generator=gen(0), degrees=30.0)
    frac = (out_m == 255).float().mean().item()
    assert 0.01 < frac < 0.5
    # Corners of a full-image crop rotated by up to 30 degrees fall outside in most samples.
    corner = out_m[:, 0, 0] == 255
    assert corner.sum() >= 4


def test_flip_applies_to_images_and_masks():
    g = gen(5)
    images = torch.randint(0, 256, (32, 3, 24, 24), dtype=torch.uint8, generator=g)
    masks = torch.randint(0, 10, (32, 24, 24), dtype=torch.uint8, generator=g)
    ident = images.float() / 255
    out, out_m = A.random_resized_affine(images, masks, 24, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen(0))
    same = (out - ident).abs().amax(dim=(1, 2, 3)) < 1e-4
    flipped = (out - ident.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-4
    assert bool((same ^ flipped).all()), "every sample is the identity warp or its mirror image"
    assert 5 <= int(flipped.sum()) <= 27, "flip with p = 0.5"
    assert torch.equal(out_m[same], masks[same])
    assert torch.equal(out_m[flipped], masks[flipped].flip(-1))
    out2, out_m2 = A.random_resized_affine(
        images, masks, 24, scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=False, generator=gen(0)
    )
    torch.testing.assert_close(out2, ident, atol=1e-4, rtol=0)
    assert torch.equal(out_m2, masks)


def test_crop_scale_is_respected():
    # A full-image crop keeps the whole picture; a small crop of a half-black, half-white image
    # often shows only one of the halves.
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[..., 16:] = 255
    full, _ = A.random_resized_affine(images, None, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=gen(1))
    torch.testing.assert_close(full.mean(dim=(1, 2, 3)), torch.full((64,), 0.5), atol=0.02, rtol=0)
    small, _ = A.random_resized_affine(images, None, 32, scale=(0.1, 0.1), ratio=(1.0, 1.0), generator=gen(1))
    single = ((small.amax(dim=(1, 2, 3)) < 0.01) | (small.amin(dim=(1, 2, 3)) > 0.99)).sum()
    assert single > 10


def test_affine_is_deterministic_per_generator_and_per_sample():
    images, masks = block_scene(1, 32, 32, 8, seed=7)
    images, masks = images.expand(8, -1, -1, -1).contiguous(), masks.expand(8, -1, -1).contiguous()
    a, am = A.random_resized_affine(images, masks, 24, generator=gen(11))
    b, bm = A.random_resized_affine(images, masks, 24, generator=gen(11))
    c, _ = A.random_resized_affine(images, masks, 24, generator=gen(12))
    assert torch.equal(a, b) and torch.equal(am, bm)
    assert not torch.equal(a, c)
    # Identical inputs, different per-sample parameters.
    assert all(not torch.equal(a[0], a[i]) for i in range(1, 8))
    # The generator state can be saved and restored to replay a batch.
    g = gen(3)
    state = g.get_state()
    first = A.strong_augment(images, 24, generator=g)
    g.set_state(state)
    assert torch.equal(first, A.strong_augment(images, 24, generator=g))


def test_uint8_and_float_inputs_give_the_same_warp():
    images, masks = block_scene(4, 32, 32, 8, seed=9)
    a, _ = A.random_resized_affine(images, None, 16, generator=gen(0))
    b, _ = A.random_resized_affine(images.float() / 255, None, 16, generator=gen(0))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_center_resize():
    images, masks = block_scene(3, 32, 32, 8, seed=2)
    x, m = A.center_resize(images, masks, 32)
    assert x.dtype == torch.float32
    torch.testing.assert_close(x, images.float() / 255)
    assert torch.equal(m, masks)
    x, m = A.center_resize(images, masks, 16)
    assert x.shape == (3, 3, 16, 16) and m.shape == (3, 16, 16) and m.dtype == torch.uint8
    assert torch.equal(m, masks[:, 1::2, 1::2])  # 8-pixel blocks: nearest-exact picks one pixel of each 2x2
    assert 0 <= x.min() and x.max() <= 1
    x, m = A.center_resize(images, None, 48)
    assert x.shape == (3, 3, 48, 48) and m is None


# ----------------------------------------------------------------------------- colour ops
def test_color_jitter_ranges_identity_and_per_sample():
    g = gen(0)
    x = torch.rand(16, 3, 12, 12, generator=g)
    out = A.color_jitter(x, generator=gen(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(A.color_jitter(x, 0, 0, 0, 0, generator=gen(1)), x, atol=1e-5, rtol=0)
    # Brightness alone scales each sample by its own factor in [0.7, 1.3].
    dark = x * 0.5 + 0.1
    ratio = A.color_jitter(dark, 0.3, 0, 0, 0, generator=gen(2)) / dark
    per_sample = ratio.flatten(1)
    torch.testing.assert_close(per_sample.amin(1), per_sample.amax(1), atol=1e-4, rtol=0)
    assert per_sample.amin() >= 0.7 - 1e-5 and per_sample.amax() <= 1.3 + 1e-5
    assert per_sample[:, 0].std() > 0.05
    # Saturation and hue keep gray pixels gray.
    gray = torch.rand(8, 1, 6, 6, generator=g).expand(8, 3, 6, 6)
    torch.testing.assert_close(A.color_jitter(gray, 0, 0, 0.5, 0.1, generator=gen(3)), gray, atol=1e-5, rtol=0)
    # Hue moves colours of a saturated image.
    red = torch.zeros(8, 3, 4, 4)
    red[:, 0] = 0.8
    red[:, 1:] = 0.2
    shifted = A.color_jitter(red, 0, 0, 0, 0.1, generator=gen(4))
    assert (shifted - red).abs().amax() > 0.05


@pytest.mark.parametrize("op", [op for op in A.RAND_AUGMENT_OPS if op != "identity"])
def test_each_rand_augment_op_keeps_shape_and_range(op):
    x = torch.rand(6, 3, 16, 16, generator=gen(0)) * 0.6 + 0.2
    v = torch.linspace(0.1, 1.0, 6).view(-1, 1, 1, 1)
    sign = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0]).view(-1, 1, 1, 1)
    out = A._apply_op(op, x, v, sign).clamp(0, 1)
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, x, atol=1e-3), f"{op} changed nothing"


def test_rand_augment_op_semantics():
    x = torch.rand(2, 3, 16, 16, generator=gen(1)) * 0.5 + 0.25
    one, plus = torch.ones(2, 1, 1, 1), torch.ones(2, 1, 1, 1)
    torch.testing.assert_close(A._apply_op("solarize", x, one, plus), 1 - x)
    g = A._apply_op("grayscale", x, one, plus)
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])
    ac = A._apply_op("autocontrast", x, one, plus)
    torch.testing.assert_close(ac.amin(dim=(2, 3)), torch.zeros(2, 3), atol=1e-6, rtol=0)
    torch.testing.assert_close(ac.amax(dim=(2, 3)), torch.ones(2, 3), atol=1e-6, rtol=0)
    eq = A._apply_op("equalize", x, one, plus)
    assert eq.amax() > 0.99 and eq.amin() < 0.01
    # Equalisation is monotonic within a channel.
    flat_x, flat_eq = x[0, 0].flatten(), eq[0, 0].flatten()
    order = flat_x.argsort()
    assert (flat_eq[order].diff() >= -1e-6).all()
    post = A._apply_op("posterize", x, one, plus)  # 4 bits: multiples of 16/255
    levels = post * 255 / 16
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)


def test_rand_augment_per_sample_and_deterministic():
    x = torch.rand(1, 3, 16, 16, generator=gen(0)).expand(32, 3, 16, 16).contiguous()
    before = x.clone()
    out = A.rand_augment(x, num_ops=2, magnitude=0.8, generator=gen(1))
    assert torch.equal(x, before), "input must not be modified"
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    distinct = {tuple(o.flatten()[:50].mul(1e4).round().tolist()) for o in out}
    assert len(distinct) >= 10
    assert torch.equal(out, A.rand_augment(x, num_ops=2, magnitude=0.8, generator=gen(1)))
    torch.testing.assert_close(A.rand_augment(x, num_ops=0, generator=gen(1)), x)


def test_cutout_grays_one_square_of_the_right_area():
    x = torch.ones(16, 3, 40, 40)
    out = A.cutout(x, frac=0.25, generator=gen(0))
    side = 10
    gray = out[:, 0] == 0.5
    assert torch.equal(gray, out[:, 1] == 0.5) and torch.equal(gray, out[:, 2] == 0.5)
    assert (gray.sum(dim=(1, 2)) == side * side).all()
    rows, cols = gray.any(dim=2), gray.any(dim=1)
    assert (rows.sum(1) == side).all() and (cols.sum(1) == side).all()  # a square, not a scatter
    assert ((out == 1) | (out == 0.5)).all()
    first_rows = rows.float().argmax(1)
    assert first_rows.unique().numel() > 4, "positions differ per sample"
    assert torch.equal(x, torch.ones_like(x)), "input must not be modified"


# ----------------------------------------------------------------------------- training views
def test_weak_and_strong_views():
    images, masks = block_scene(8, 32, 32, 8, seed=4)
    w, wm = A.weak_augment(images, masks, 24, generator=gen(0))
    s = A.strong_augment(images, 24, generator=gen(0))
    assert w.shape == s.shape == (8, 3, 24, 24) and w.dtype == s.dtype == torch.float32
    assert wm.shape == (8, 24, 24) and wm.dtype == torch.uint8
    for v in (w, s):
        d = A.denormalize(v)
        torch.testing.assert_close(A.normalize(d), v, atol=1e-4, rtol=0)  # normalized, within [0,1] range
    assert not torch.equal(w, s)
    # The strong view departs further from the un-jittered geometry than the weak one.
    plain, _ = A.random_resized_affine(images, None, 24, generator=gen(0))
    err_w = (A.denormalize(w) - plain).abs().mean()
    err_s = (A.denormalize(s) - plain).abs().mean()
    assert err_s > err_w
    w2, wm2 = A.weak_augment(images, masks, 24, generator=gen(0))
    assert torch.equal(w, w2) and torch.equal(wm, wm2)
    w_none, none = A.weak_augment(images, None, 24, generator=gen(0))
    assert none is None and torch.equal(w_none, w)


def test_everything_stays_on_the_images_device():
    # The meta device rejects any op mixing in a CPU tensor, so this catches device bugs without a GPU.
    images = torch.empty(8, 3, 32, 32, dtype=torch.uint8, device="meta")
    masks = torch.empty(8, 32, 32, dtype=torch.uint8, device="meta")
    w, wm = A.weak_augment(images, masks, 24, generator=gen(0))
    assert w.device.type == wm.device.type == "meta" and w.shape == (8, 3, 24, 24) and wm.dtype == torch.uint8
    s = A.strong_augment(images, 24, generator=gen(0))
    assert s.device.type == "meta" and s.shape == (8, 3, 24, 24)
    x = torch.empty(8, 3, 16, 16, device="meta")
    for op in A.RAND_AUGMENT_OPS[1:]:
        v = torch.empty(8, 1, 1, 1, device="meta")
        assert A._apply_op(op, x, v, v).device.type == "meta"
    c, cm = A.center_resize(images, masks, 16)
    assert c.device.type == cm.device.type == A.denormalize(w).device.type == "meta"
    with pytest.raises(ValueError, match="same device|masks are on"):
        A.weak_augment(images, torch.zeros(8, 32, 32, dtype=torch.uint8), 24)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images, masks = block_scene(8, 32, 32, 8, seed=4)
    cpu, cpu_m = A.weak_augment(images, masks, 24, generator=gen(0))
    gpu, gpu_m = A.weak_augment(images.cuda(), masks.cuda(), 24, generator=gen(0))
    assert gpu.device.type == "cuda" and gpu_m.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-3, rtol=0)
    assert (gpu_m.cpu() == cpu_m).float().mean() > 0.99
    s_cpu = A.strong_augment(images, 24, generator=gen(1))
    s_gpu = A.strong_augment(images.cuda(), 24, generator=gen(1))
    assert s_gpu.device.type == "cuda"
    assert ((s_gpu.cpu() - s_cpu).abs() > 0.05).float().mean() < 0.01


# ----------------------------------------------------------------------------- SimCLR views: blur, grayscale, jitter probability
def test_color_jitter_p_leaves_the_other_samples_unchanged():
    x = torch.rand(64, 3, 8, 8, generator=gen(0))
    torch.testing.assert_close(A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, generator=gen(1), p=0.0), x, atol=1e-5, rtol=0)
    out = A.color_jitter(x, 0.8, 0.8, 0.8, 0.2, generator=gen(1), p=0.5)
    unchanged = ((out - x).abs().flatten(1).amax(1) < 1e-5).float().mean()
    assert 0.25 < unchanged < 0.75
    # p = 1 draws nothing extra: the same output and generator state as before p existed
    g1, g2 = gen(2), gen(2)
    assert torch.equal(A.color_jitter(x, generator=g1), A.color_jitter(x, generator=g2, p=1.0))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_random_grayscale():
    x = torch.rand(64, 3, 6, 6, generator=gen(0))
    torch.testing.assert_close(A.random_grayscale(x, 0.0, gen(1)), x)
    all_gray = A.random_grayscale(x, 1.0, gen(1))
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(all_gray[:, c], luma)
    some = A.random_grayscale(x, 0.3, gen(1))
    gray = (some[:, 0] == some[:, 1]).flatten(1).all(1) & (some[:, 1] == some[:, 2]).flatten(1).all(1)
    assert 0.1 < gray.float().mean() < 0.5
    torch.testing.assert_close(some[~gray], x[~gray])


def test_gaussian_blur_matches_torchvision_per_sample():
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    x = torch.rand(6, 3, 20, 24, generator=gen(0))
    out = A.gaussian_blur(x, (0.3, 2.0), p=1.0, kernel_size=5, generator=gen(1))
    sigmas = torch.rand(6, generator=gen(1)) * 1.7 + 0.3  # the same draw as inside
    for i in range(6):
        ref = tv_blur(x[i:i + 1], kernel_size=[5, 5], sigma=[float(sigmas[i])] * 2)
        torch.testing.assert_close(out[i:i + 1], ref, atol=1e-5, rtol=0)
    # p = 0 is the identity; the default kernel is about 10% of the side, odd
    torch.testing.assert_close(A.gaussian_blur(x, p=0.0, generator=gen(1)), x)
    flat = torch.full((2, 3, 64, 64), 0.4)
    torch.testing.assert_close(A.gaussian_blur(flat, p=1.0, generator=gen(2)), flat)
    sharp = torch.zeros(1, 3, 64, 64)
    sharp[..., 32, 32] = 1.0
    spread = (A.gaussian_blur(sharp, (2.0, 2.0), p=1.0, generator=gen(3))[0, 0] > 1e-6).sum(1).amax()
    assert spread == 7  # kernel side 7 = int(6.4) rounded to odd
    with pytest.raises(ValueError, match="odd"):
        A.gaussian_blur(x, kernel_size=4)


def test_contrastive_views_of_one_image_differ_but_come_from_it_with_aligned_masks():
    images, masks = block_scene(8, 48, 48, 8, seed=5)
    # masks holding each image's index: a view's mask shows which source image its pixels came from
    index_masks = torch.arange(8, dtype=torch.uint8).view(8, 1, 1).expand(8, 48, 48).contiguous()
    g = gen(0)
    v1, m1 = A.contrastive_view(images, index_masks, 32, g)
    v2, m2 = A.contrastive_view(images, index_masks, 32, g)
    assert v1.shape == v2.shape == (8, 3, 32, 32) and v1.dtype == torch.float32
    for i in range(8):
        assert set(m1[i].unique().tolist()) == {i} and set(m2[i].unique().tolist()) == {i}
        assert (v1[i] - v2[i]).abs().mean() > 0.05, "the two views of an image must differ"
    # colour, grayscale and blur move no pixel: the masks follow the crop alone, and with colour off
    # each pixel's colour is still its mask's class
    _, geometry_only = A.random_resized_affine(images, masks, 32, scale=(0.08, 1.0), generator=gen(1))
    plain, pm = A.contrastive_view(images, masks, 32, gen(1), strength=0.0, gray_p=0.0, blur_p=0.0)
    _, full_m = A.contrastive_view(images, masks, 32, gen(1))
    assert torch.equal(pm, geometry_only) and torch.equal(full_m, geometry_only)
    keep = uniform_neighbourhood(pm)
    agree = (class_of_colour(A.denormalize(plain)) == pm.long())[keep].float().mean()
    assert keep.sum() > 1000 and agree > 0.98
    x = torch.empty(4, 3, 32, 32, dtype=torch.uint8, device="meta")
    assert A.contrastive_view(x, None, 24, gen(0))[0].device.type == "meta"


def test_flip_translate_shifts_image_and_mask_alike():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 200, (6, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    masks = torch.zeros(6, 16, 16, dtype=torch.uint8)
    masks[:, 4:8, 4:8] = 1
    images[:, :, 4:8, 4:8] = 255  # the masked square is white in every channel
    out, out_masks = A.flip_translate(images, masks, 16, max_shift=0.125, generator=gen)
    assert out.shape == (6, 3, 16, 16) and out_masks.shape == (6, 16, 16)
    moved = 0
    for i in range(6):
        square = out_masks[i] == 1
        assert int(square.sum()) > 0
        # Inside the moved mask (one pixel in from its edge) the image is the white square itself; on the
        # edge, bilinear sampling mixes in at most three neighbours, so white keeps a weight of 1/4 at least.
        inner = ~F.max_pool2d((~square)[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()
        assert int(inner.sum()) > 0 and bool((out[i][:, inner] > 0.999).all())
        assert bool((out[i][:, square] >= 0.25 - 1e-5).all())
        outer = F.max_pool2d(square[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()
        assert bool((out[i][:, ~outer] < 200 / 255 + 1e-5).all())  # and no white away from the moved mask
        moved += not torch.equal(out_masks[i], masks[i])
    assert moved >= 4  # shifts of up to 2 px in either direction: most views move
    plain = A.paper_weak_augment(images, 16, torch.Generator().manual_seed(0))
    torch.testing.assert_close(plain, A.normalize(out))  # no colour change in the paper's weak view
