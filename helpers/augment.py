"""Batched on-device augmentation of uint8 image batches [B,3,H,W] and uint8 index masks [B,H,W].

Every random parameter is drawn per sample on the CPU (from an optional `torch.Generator`, so runs
repeat and the generator state can be checkpointed) and then moved to the images' device; the pixel
work is a handful of batched tensor ops with no per-sample Python loop and no host-device sync.
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from helpers.masks import IGNORE_INDEX

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

_LUMA = (0.299, 0.587, 0.114)
# RGB <-> YIQ; a hue shift is a rotation of the (I, Q) plane, which keeps gray pixels gray.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ).to(torch.float32)
_RGB_TO_YIQ = _RGB_TO_YIQ.to(torch.float32)

# rand_augment's colour ops, in the order of their random op index.
RAND_AUGMENT_OPS = (
    "identity", "autocontrast", "equalize", "brightness", "contrast",
    "color", "sharpness", "solarize", "posterize", "grayscale",
)


# ----------------------------------------------------------------------------- small utilities
def _check_images(images: Tensor, name: str = "images") -> None:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"augment: {name} must be a [B,3,H,W] tensor, got {shape}")


def _check_masks(masks: Tensor | None, images: Tensor) -> None:
    if masks is None:
        return
    b, _, h, w = images.shape
    if masks.ndim != 3 or tuple(masks.shape) != (b, h, w):
        raise ValueError(
            f"augment: masks must be [B,H,W] = {(b, h, w)} to match images, got {tuple(masks.shape)}"
        )
    if masks.device != images.device:
        raise ValueError(f"augment: masks are on {masks.device} but images on {images.device}")


def _check_generator(generator: torch.Generator | None) -> None:
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "augment: pass a CPU torch.Generator (parameters are drawn on the CPU, then moved "
            f"to the images' device), got one on {generator.device}"
        )


def _to_float(images: Tensor) -> Tensor:
    """uint8 0..255 -> float32 0..1; floating input is taken to be in [0, 1] already."""
    if images.dtype == torch.uint8:
        return images.to(torch.float32).mul_(1.0 / 255.0)
    if not images.is_floating_point():
        raise ValueError(f"augment: images must be uint8 or float in [0, 1], got {images.dtype}")
    return images


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    """n CPU float32 draws from U(low, high)."""
    return torch.rand(n, generator=generator) * (high - low) + low


def _gray(x: Tensor) -> Tensor:
    """Luma of float RGB [B,3,H,W] as [B,1,H,W]."""
    return (x[:, 0:1] * _LUMA[0] + x[:, 1:2] * _LUMA[1] + x[:, 2:3] * _LUMA[2])


def _to_device(t: Tensor, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """Copy CPU parameters to like's device without a stream sync (safe: pageable sources are staged)."""
    return t.to(device=like.device, dtype=dtype or like.dtype, non_blocking=True)


@functools.cache
def _mean_std(device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """MEAN and STD as [1,3,1,1] tensors, built once per device (no host-device copy per batch)."""
    mean = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1)
    return mean.to(device=device, dtype=dtype), std.to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- normalisation
def normalize(images: Tensor) -> Tensor:
    """uint8 (0..255) or float [0,1] images [B,3,H,W] -> float32 normalized by MEAN/STD."""
    _check_images(images)
    x = images.to(torch.float32)
    mean, std = _mean_std(x.device, torch.float32)
    if images.dtype == torch.uint8:
        x.mul_(1.0 / 255.0)  # x is a fresh copy here
    return x.sub(mean).div_(std)


def denormalize(images: Tensor) -> Tensor:
    """Inverse of `normalize`: float images back to [0, 1] (clamped) for plotting."""
    _check_images(images)
    mean, std = _mean_std(images.device, images.dtype)
    return (images * std + mean).clamp(0.0, 1.0)


# ----------------------------------------------------------------------------- geometry
def _affine_thetas(
    b: int, h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool,
    degrees: float, generator: torch.Generator | None,
) -> Tensor:
    """CPU [B,2,3] affine_grid matrices (align_corners=False) of random resized crops."""
    area = _uniform(b, scale[0], scale[1], generator) * (h * w)
    log_r = _uniform(b, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_r)
    crop_w = torch.sqrt(area * aspect).clamp(max=w)
    crop_h = torch.sqrt(area / aspect).clamp(max=h)
    # Centre chosen so the (unrotated) crop lies inside the image.
    cx = crop_w / 2 + torch.rand(b, generator=generator) * (w - crop_w)
    cy = crop_h / 2 + torch.rand(b, generator=generator) * (h - crop_h)
    angle = _uniform(b, -degrees, degrees, generator) * (math.pi / 180.0)
    flip = torch.rand(b, generator=generator) < 0.5
    sx = crop_w / w
    if hflip:
        sx = torch.where(flip, -sx, sx)
    sy = crop_h / h
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Source pixel offset = R(angle) @ (o_x * crop_w / 2, o_y * crop_h / 2) for output coords o in [-1, 1].
    theta = torch.empty(b, 2, 3)
    theta[:, 0, 0] = cos * sx
    theta[:, 0, 1] = -sin * sy * (h / w)
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 0] = sin * sx * (w / h)
    theta[:, 1, 1] = cos * sy
    theta[:, 1, 2] = 2 * cy / h - 1
    return theta


def _affine_grid(theta: Tensor, size: int) -> Tensor:
    """F.affine_grid(theta, [B, C, size, size], align_corners=False) by broadcasting (about 2x faster on CPU)."""
    b = theta.shape[0]
    base = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1
    t = theta.reshape(b, 6, 1, 1)
    xs, ys = base.view(1, 1, size), base.view(1, size, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    return torch.stack([gx, gy], dim=-1)


def random_resized_affine(
    images: Tensor,
    masks: Tensor | None,
    size: int,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    generator: torch.Generator | None = None,
    degrees: float = 0.0,
) -> tuple[Tensor, Tensor | None]:
    """Per-sample random resized crop (+ optional rotation, flip p=0.5) as one affine warp of images and masks.

    Images (uint8 or float [0,1]) -> float32 [B,3,size,size] (bilinear, border padding); masks uint8
    [B,H,W] -> uint8 [B,size,size] with the same geometry (nearest); mask pixels sampled from outside
    the source (only possible with degrees > 0) become IGNORE_INDEX (255).
    """
    _check_images(images)
    _check_masks(masks, images)
    _check_generator(generator)
    if not (0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]):
        raise ValueError(f"augment: need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], "
                         f"got scale={scale}, ratio={ratio}")
    b, _, h, w = images.shape
    theta = _affine_thetas(b, h, w, scale, ratio, hflip, degrees, generator)
    x = _to_float(images)
    grid = _affine_grid(_to_device(theta, x), size)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if masks is None:
        return out, None
    # Shift by one so that zero padding marks "outside the source".
    m = (masks.to(torch.float32) + 1.0).unsqueeze(1)
    m = F.grid_sample(m, grid.to(torch.float32), mode="nearest", padding_mode="zeros",
                      align_corners=False).squeeze(1)
    out_masks = torch.where(m < 0.5, float(IGNORE_INDEX), m - 1.0).to(torch.uint8)
    return out, out_masks


def flip_translate(
    images: Tensor, masks: Tensor | None, size: int, max_shift: float = 0.125,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """FixMatch's weak view: flip (p=0.5) and a random shift of up to max_shift of each side, reflect padding.

    Images -> float32 [B,3,size,size] (resized with the same warp); masks -> uint8 [B,size,size]
    through the same geometry (nearest).
    """
    _check_images(images)
    _check_masks(masks, images)
    _check_generator(generator)
    b = images.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = torch.where(flip, -1.0, 1.0)
    theta[:, 1, 1] = 1.0
    theta[:, 0, 2] = _uniform(b, -2 * max_shift, 2 * max_shift, generator)  # grid coordinates span 2
    theta[:, 1, 2] = _uniform(b, -2 * max_shift, 2 * max_shift, generator)
    x = _to_float(images)
    grid = _affine_grid(_to_device(theta, x), size)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if masks is None:
        return out, None
    m = F.grid_sample(masks.to(torch.float32).unsqueeze(1), grid.to(torch.float32), mode="nearest",
                      padding_mode="reflection", align_corners=False)
    return out, m.squeeze(1).to(torch.uint8)


def center_resize(images: Tensor, masks: Tensor | None, size: int) -> tuple[Tensor, Tensor | None]:
    """Deterministic eval path: float [0,1] images resized to size x size (identity if equal), masks nearest."""
    _check_images(images)
    _check_masks(masks, images)
    x = _to_float(images)
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x, masks
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                      antialias=size < min(h, w)).clamp_(0.0, 1.0)
    if masks is None:
        return x, None
    m = F.interpolate(masks.unsqueeze(1).to(torch.float32), size=(size, size), mode="nearest-exact")
    return x, m.squeeze(1).to(torch.uint8)


# ----------------------------------------------------------------------------- colour
def color_jitter(
    images: Tensor,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.05,
    generator: torch.Generator | None = None,
    p: float = 1.0,
) -> Tensor:
    """Per-sample brightness/contrast/saturation/hue jitter of float [0,1] images, fused into one 3x3 colour map.

    p: the share of samples jittered (each sample independently); the others pass unchanged.
    """
    _check_images(images)
    _check_generator(generator)
    x = _to_float(images)
    b = x.shape[0]
    bf = _uniform(b, max(0.0, 1 - brightness), 1 + brightness, generator)
    cf = _uniform(b, max(0.0, 1 - contrast), 1 + contrast, generator)
    sf = _uniform(b, max(0.0, 1 - saturation), 1 + saturation, generator)
    hf = _uniform(b, -hue, hue, generator) * (2 * math.pi)
    if p < 1.0:  # no extra draw at p = 1, so existing runs keep their random streams
        skip = torch.rand(b, generator=generator) >= p
        bf, cf, sf = (torch.where(skip, 1.0, f) for f in (bf, cf, sf))
        hf = torch.where(skip, 0.0, hf)
    # brightness, contrast (blend with the mean luma), saturation (blend with luma) and hue (YIQ
    # rotation) are all linear, so they compose into out = A @ x + t (no clamping in between).
    luma = torch.tensor(_LUMA)
    sat = sf.view(b, 1, 1) * torch.eye(3) + (1 - sf).view(b, 1, 1) * torch.ones(3, 1) * luma.view(1, 3)
    rot = torch.zeros(b, 3, 3)
    rot[:, 0, 0] = 1.0
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(hf), -torch.sin(hf)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(hf), torch.cos(hf)
    hue_m = _YIQ_TO_RGB @ rot @ _RGB_TO_YIQ
    a = (hue_m @ sat) * (bf * cf).view(b, 1, 1)
    a = _to_device(torch.cat([a.reshape(b, 9), (bf * (1 - cf)).view(b, 1)], dim=1), x)
    a, contrast_weight = a[:, :9].reshape(b, 3, 3), a[:, 9]
    # Saturation and hue maps keep gray values, so the contrast offset passes through unchanged.
    offset = _gray(x).mean(dim=(1, 2, 3)) * contrast_weight
    out = torch.bmm(a, x.reshape(b, 3, -1)).view_as(x)
    return out.add_(offset.view(b, 1, 1, 1)).clamp_(0.0, 1.0)


def _autocontrast(x: Tensor) -> Tensor:
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 1e-3, (x - lo) / span.clamp(min=1e-3), x)


def _equalize(x: Tensor) -> Tensor:
    """Per-channel histogram equalisation over 256 levels (batched with scatter_add)."""
    n, c, h, w = x.shape
    q = (x * 255).round_().clamp_(0, 255).to(torch.int64).view(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=x.dtype)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=x.dtype))
    cdf = hist.cumsum(dim=1)
    cdf_min = torch.where(cdf > 0, cdf, torch.full_like(cdf, float("inf"))).amin(dim=1, keepdim=True)
    denom = h * w - cdf_min
    lut = ((cdf - cdf_min) / denom.clamp(min=1.0)).clamp_(0.0, 1.0)
    out = lut.gather(1, q).view(n, c, h, w)
    # A single-level channel has nothing to equalise.
    return torch.where((denom > 0).view(n, c, 1, 1), out, x)


def _blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """other + factor * (x - other): factor 1 is x, 0 is other, > 1 extrapolates."""
    return other + factor * (x - other)


def _smooth(x: Tensor) -> Tensor:
    """PIL's SMOOTH kernel (as used by ImageEnhance.Sharpness), border pixels kept."""
    # Kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 = (3x3 box sum + 4 * centre) / 13; pooling beats a grouped conv on CPU.
    inner = (F.avg_pool2d(x, 3, stride=1) * 9 + 4 * x[:, :, 1:-1, 1:-1]) / 13
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = inner
    return out


def _apply_op(op: str, x: Tensor, v: Tensor, sign: Tensor) -> Tensor:
    """Apply one RandAugment colour op to float [n,3,H,W] with per-sample strengths v in [0,1] and signs ±1."""
    if op == "autocontrast":
        return _autocontrast(x)
    if op == "equalize":
        return _equalize(x)
    factor = 1 + 0.9 * v * sign  # torchvision's RandAugment range for the enhance ops: 1 ± 0.9
    if op == "brightness":
        return x * factor
    if op == "contrast":
        return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
    if op == "color":
        return _blend(x, _gray(x), factor)
    if op == "sharpness":
        return _blend(x, _smooth(x), factor)
    if op == "solarize":
        return torch.where(x >= 1 - v, 1 - x, x)
    if op == "posterize":
        step = torch.exp2(torch.round(4 * v))  # keep 8 - round(4 v) bits, i.e. 8..4
        return torch.floor(x * 255 / step) * step / 255
    if op == "grayscale":
        return _gray(x).expand_as(x)
    raise ValueError(f"augment: unknown op {op!r}")


def rand_augment(
    images: Tensor, num_ops: int = 2, magnitude: float = 0.5, generator: torch.Generator | None = None
) -> Tensor:
    """RandAugment-like colour ops: num_ops rounds, each a random op per sample at strength U(0, magnitude]."""
    _check_images(images)
    _check_generator(generator)
    x = _to_float(images)
    b = x.shape[0]
    for _ in range(num_ops):
        choice = torch.randint(len(RAND_AUGMENT_OPS), (b,), generator=generator)
        v = (1 - torch.rand(b, generator=generator)) * magnitude
        sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
        # Loop over ops, not samples: each op runs once on the samples that drew it. Samples are
        # grouped by op on the CPU, so the device only sees one index copy and contiguous slices.
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=len(RAND_AUGMENT_OPS)).tolist()
        order_dev = _to_device(order, x, torch.int64)
        params = _to_device(torch.stack([v[order], sign[order]]), x)
        new = x.clone() if x is images else x
        start = 0
        for op, count in zip(RAND_AUGMENT_OPS, counts):
            stop = start + count
            if op != "identity" and count:
                idx = order_dev[start:stop]
                v_k = params[0, start:stop].view(-1, 1, 1, 1)
                sign_k = params[1, start:stop].view(-1, 1, 1, 1)
                sub = _apply_op(op, x.index_select(0, idx), v_k, sign_k)
                new.index_copy_(0, idx, sub.clamp(0.0, 1.0))
            start = stop
        x = new
    return x


def cutout(images: Tensor, frac: float = 0.35, generator: torch.Generator | None = None) -> Tensor:
    """One random square per sample (side = round(frac * min(H, W)), fully inside) set to 0.5 gray."""
    _check_images(images)
    _check_generator(generator)
    x = _to_float(images)
    b, _, h, w = x.shape
    side = max(1, min(h, w, round(frac * min(h, w))))
    y0 = (torch.rand(b, generator=generator) * (h - side + 1)).floor()
    x0 = (torch.rand(b, generator=generator) * (w - side + 1)).floor()
    corner = _to_device(torch.stack([y0, x0]).to(torch.int64), x, torch.int64)
    y0, x0 = corner[0].view(b, 1, 1, 1), corner[1].view(b, 1, 1, 1)
    rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
    inside = (rows >= y0) & (rows < y0 + side) & (cols >= x0) & (cols < x0 + side)
    return x.masked_fill(inside, 0.5)


def random_grayscale(images: Tensor, p: float = 0.2, generator: torch.Generator | None = None) -> Tensor:
    """Each sample turned to gray (its luma in all three channels) with probability p."""
    _check_images(images)
    _check_generator(generator)
    x = _to_float(images)
    gray = _to_device(torch.rand(x.shape[0], generator=generator) < p, x, torch.bool).view(-1, 1, 1, 1)
    return torch.where(gray, _gray(x).expand_as(x), x)


def gaussian_blur(
    images: Tensor,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
    kernel_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample Gaussian blur with sigma ~ U(sigma) pixels, applied with probability p (reflect padding).

    kernel_size: odd side of the kernel; default about 10% of the image side (SimCLR's choice), at least 3.
    One separable pass for the whole batch: a grouped convolution with one kernel per sample.
    """
    _check_images(images)
    _check_generator(generator)
    if not 0 < sigma[0] <= sigma[1]:
        raise ValueError(f"augment: need 0 < sigma[0] <= sigma[1], got {sigma}")
    x = _to_float(images)
    b, c, h, w = x.shape
    if kernel_size is None:
        kernel_size = max(3, int(0.1 * min(h, w)) // 2 * 2 + 1)
    if kernel_size % 2 == 0 or kernel_size < 1:
        raise ValueError(f"augment: kernel_size must be a positive odd number, got {kernel_size}")
    radius = min(kernel_size // 2, h - 1, w - 1)  # reflect padding needs radius < side
    sigmas = _uniform(b, sigma[0], sigma[1], generator)
    apply = torch.rand(b, generator=generator) < p
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sigmas.view(-1, 1)) ** 2)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(torch.float32).expand(b, -1)
    kernels = torch.where(apply.view(-1, 1), kernels, identity)  # unblurred samples get a delta kernel
    weight = _to_device(kernels, x).repeat_interleave(c, dim=0)  # [B*C, K]
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), weight.view(b * c, 1, 1, -1), groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), weight.view(b * c, 1, -1, 1), groups=b * c)
    return y.view(b, c, h, w).clamp_(0.0, 1.0)


# ----------------------------------------------------------------------------- training views
CROP_MIN_SCALE = 0.35  # the training views' smallest crop area (a share of the image; cfg.crop_min_scale)


def weak_augment(
    images: Tensor, masks: Tensor | None, size: int, generator: torch.Generator | None = None,
    min_scale: float = CROP_MIN_SCALE,
) -> tuple[Tensor, Tensor | None]:
    """Weak view: resized-crop affine (area min_scale..1) + flip + mild colour jitter -> normalized images, masks."""
    x, m = random_resized_affine(images, masks, size, scale=(min_scale, 1.0), generator=generator)
    x = color_jitter(x, 0.2, 0.2, 0.2, 0.02, generator=generator)
    return normalize(x), m


def paper_weak_augment(images: Tensor, size: int, generator: torch.Generator | None = None) -> Tensor:
    """FixMatch's weak view (flip and translate, no colour change) -> normalized images."""
    return normalize(flip_translate(images, None, size, generator=generator)[0])


def strong_augment(images: Tensor, size: int, generator: torch.Generator | None = None,
                   min_scale: float = CROP_MIN_SCALE) -> Tensor:
    """Strong (FixMatch) view: resized-crop affine + flip + jitter + rand_augment + cutout -> normalized images."""
    x, _ = random_resized_affine(images, None, size, scale=(min_scale, 1.0), generator=generator)
    return normalize(strong_colour(x, generator))


def strong_colour(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """The strong view's pixel-wise part (jitter, rand_augment, cutout) of float [0,1] images: no geometry."""
    x = color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=generator)
    x = rand_augment(x, num_ops=2, magnitude=0.9, generator=generator)
    return cutout(x, 0.35, generator=generator)


def contrastive_view(
    images: Tensor,
    masks: Tensor | None,
    size: int,
    generator: torch.Generator | None = None,
    *,
    min_scale: float = 0.08,
    strength: float = 1.0,
    jitter_p: float = 0.8,
    gray_p: float = 0.2,
    blur_p: float = 0.5,
) -> tuple[Tensor, Tensor | None]:
    """One SimCLR view (Chen et al. 2020, appendix A) -> normalized images and masks (same geometry).

    Resized crop (area min_scale..1, aspect 3/4..4/3) + flip; colour jitter of strength s
    (brightness, contrast, saturation 0.8 s, hue 0.2 s) with probability jitter_p; grayscale with
    gray_p; Gaussian blur with blur_p, kernel 10% of the side and sigma 0.1..2.0 px scaled by size/224
    (the paper's blur is for 224 px views; this keeps its strength relative to the image).
    """
    x, m = random_resized_affine(images, masks, size, scale=(min_scale, 1.0), ratio=(3 / 4, 4 / 3),
                                 generator=generator)
    x = color_jitter(x, 0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength,
                     generator=generator, p=jitter_p)
    x = random_grayscale(x, gray_p, generator)
    scale = size / 224
    x = gaussian_blur(x, (0.1 * scale, 2.0 * scale), p=blur_p, generator=generator)
    return normalize(x), m


def paired_views(images: Tensor, size: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """A weak and a strong view of each image with the SAME geometry (crop, flip), so pixels correspond.

    For dense consistency (helpers.segmentation): the weak view's per-pixel guesses are targets for
    the same pixels of the strong view, which only differs in colour and cutout. Both normalized.
    """
    x, _ = random_resized_affine(images, None, size, scale=(0.35, 1.0), generator=generator)
    weak = color_jitter(x, 0.2, 0.2, 0.2, 0.02, generator=generator)
    return normalize(weak), normalize(strong_colour(x, generator))
