"""Drawing one demo image and its mask: the classes (shape family x texture) and how an example is rendered.

Every class is one (shape family, surface texture) pair, e.g. "striped disc" or "dotted star":
11 shape families (disc, ring, star, cross, triangle, crescent, arrow, square, heart, ell,
hourglass) x 8 textures (striped, checkered, dotted, gridded, wavy, concentric, plain, mottled);
class k is shape k % 11 with texture k % 8, so up to 88 distinct classes. The default 10 classes
each have their own shape, and classes 0 / 8 and 1 / 9 share a texture (stripes, checks); with 50
classes, shapes repeat every 11 classes and textures every 8: a model must see both.

Each object is drawn in two tones of random hue and saturation, independent of the class: a dark
one and a light one, laid out by the class texture (a "plain" object is all dark or all light at
random), so that the light/dark pattern is the same across a class but the colours are not. It has
a mostly upright random pose (rotation within +-20 degrees, random aspect), a random size (the object
covers about 35%..70% of the image, less where it would not fit) and position, per-class shape
variants (star points, arm widths, jittered outlines), sometimes (20%) a partial occluder (a
background-coloured bite or a clutter patch; the occluded part is background in the mask), on a
cluttered mid-tone background (gradient, noise, small thin distractor strokes that are not any
class's object). Texture periods are 0.3..0.45 of the object's half size, coarse enough to stay
visible when the images are shrunk to 64 x 64 px. Image sizes vary from 160x120 to 400x320,
landscape and portrait.
"""
from __future__ import annotations

import colorsys
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..masks import IGNORE_ID, class_to_id

SHAPES = ("disc", "ring", "star", "cross", "triangle", "crescent", "arrow", "square", "heart", "ell", "hourglass")
TEXTURES = ("striped", "checkered", "dotted", "gridded", "wavy", "concentric", "plain", "mottled")
MAX_CLASSES = len(SHAPES) * len(TEXTURES)  # 11 and 8 are coprime: k -> (k % 11, k % 8) is one-to-one


# ----------------------------------------------------------------------------------------------
# classes


def class_spec(class_id: int) -> tuple[str, str]:
    """(shape family, texture) of class `class_id`."""
    if not 0 <= class_id < MAX_CLASSES:
        raise ValueError(f"the demo data has at most {MAX_CLASSES} classes, got class {class_id}")
    return SHAPES[class_id % len(SHAPES)], TEXTURES[class_id % len(TEXTURES)]


def demo_wnids(num_classes: int) -> list[str]:
    """Fake wnids ("n" + 8 digits) whose sorted order is the class order."""
    return [f"n9{k:07d}" for k in range(num_classes)]


def demo_class_names(num_classes: int) -> list[str]:
    """Readable names such as "striped disc", in class order."""
    return [" ".join(reversed(class_spec(k))) for k in range(num_classes)]


# ----------------------------------------------------------------------------------------------
# drawing one image


def _random_colour(rng: np.random.Generator, sat=(0.15, 1.0), val=(0.2, 1.0)) -> np.ndarray:
    """A random RGB colour (float, 0..255) from HSV ranges."""
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*sat), rng.uniform(*val))
    return np.array([r, g, b], dtype=np.float32) * 255


def _object_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark and a light tone, each of random hue and saturation (the texture mixes them)."""
    # A fixed light/dark order (with free hues) is what makes the 8-labels-per-class baseline learn:
    # with fully random colours, a ResNet trained from scratch on 80 images stayed at 15-35% accuracy.
    dark = _random_colour(rng, sat=(0.3, 1.0), val=(0.12, 0.4))
    return dark, _random_colour(rng, sat=(0.1, 0.9), val=(0.75, 1.0))


def _image_size(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): landscape, portrait or square-ish, 160..400 x 120..320."""
    kind = rng.random()
    if kind < 0.65:
        w = int(rng.integers(220, 401))
        h = int(np.clip(w / rng.uniform(1.2, 1.6), 120, 320))
    elif kind < 0.9:
        h = int(rng.integers(220, 321))
        w = int(np.clip(h / rng.uniform(1.2, 1.6), 160, 400))
    else:
        w = h = int(rng.integers(160, 321))
    return w, h


def _smooth_noise(rng: np.random.Generator, w: int, h: int, cells: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise (H x W x channels, about -1..1): a random grid upsampled bilinearly."""
    gw, gh = max(2, int(round(cells * w / max(w, h)))), max(2, int(round(cells * h / max(w, h))))
    out = np.empty((h, w, channels), dtype=np.float32)
    for c in range(channels):
        grid = Image.fromarray(rng.uniform(-1, 1, (gh, gw)).astype(np.float32), mode="F")
        out[..., c] = np.asarray(grid.resize((w, h), Image.BILINEAR))
    return out


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A cluttered mid-tone background (H x W x 3 float)."""
    c_a = _random_colour(rng, sat=(0.0, 0.6), val=(0.3, 0.75))
    c_b = _random_colour(rng, sat=(0.0, 0.6), val=(0.3, 0.75))
    angle = rng.uniform(0, 2 * math.pi)
    t = (np.arange(w, dtype=np.float32)[None, :] * math.cos(angle)
         + np.arange(h, dtype=np.float32)[:, None] * math.sin(angle))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    bg = c_a + (c_b - c_a) * t[..., None]
    bg += _smooth_noise(rng, w, h, int(rng.integers(3, 7)), 3) * rng.uniform(10, 35)
    bg += _smooth_noise(rng, w, h, int(rng.integers(16, 40)), 1) * rng.uniform(4, 14)
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), mode="RGB")
    _distractors(rng, img)
    return np.asarray(img, dtype=np.float32)


def _distractors(rng: np.random.Generator, img: Image.Image) -> None:
    """Draw small, thin clutter (strokes, scribbles, arcs, specks, outlines) that is no class's object."""
    w, h = img.size
    side = min(w, h)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 14))):
        colour = tuple(int(c) for c in _random_colour(rng, sat=(0, 0.8), val=(0.1, 1.0)))
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        size = side * rng.uniform(0.04, 0.18)
        width = int(rng.integers(1, 3))
        kind = rng.integers(0, 5)
        if kind == 0:  # a straight stroke
            a = rng.uniform(0, 2 * math.pi)
            draw.line([(x, y), (x + size * 1.5 * math.cos(a), y + size * 1.5 * math.sin(a))], fill=colour, width=width)
        elif kind == 1:  # a scribble
            pts = np.cumsum(rng.normal(0, size / 3, (int(rng.integers(3, 7)), 2)), axis=0) + (x, y)
            draw.line([tuple(p) for p in pts], fill=colour, width=width, joint="curve")
        elif kind == 2:  # an open arc
            start = rng.uniform(0, 360)
            draw.arc([x - size / 2, y - size / 2, x + size / 2, y + size / 2], start, start + rng.uniform(60, 200),
                     fill=colour, width=width)
        elif kind == 3:  # a few specks
            for _ in range(int(rng.integers(3, 9))):
                px, py, r = x + rng.normal(0, size / 2), y + rng.normal(0, size / 2), rng.uniform(1, 2.5)
                draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
        else:  # a small rectangle outline
            s2 = size * rng.uniform(0.25, 0.5)
            draw.rectangle([x - s2, y - s2 * rng.uniform(0.5, 1.5), x + s2, y + s2], outline=colour, width=1)


def _ellipse_pts(n: int, rng: np.random.Generator, wobble: float, rx: float = 1.0, ry: float = 1.0,
                 cx: float = 0.0, cy: float = 0.0) -> np.ndarray:
    """An ellipse outline (n x 2) with a low-frequency radial wobble."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    r = np.ones_like(t)
    for freq in (2, 3, 5):
        r += rng.uniform(-wobble, wobble) * np.sin(freq * t + rng.uniform(0, 2 * math.pi))
    return np.stack([cx + rx * r * np.cos(t), cy + ry * r * np.sin(t)], axis=1)


def _shape_ops(shape: str, rng: np.random.Generator) -> list[tuple[np.ndarray, int]]:
    """A random variant of a shape family in unit coordinates: polygons to fill (255) or cut (0)."""
    jitter = lambda pts, a=0.035: pts + rng.normal(0, a, pts.shape)  # noqa: E731
    if shape == "disc":
        return [(_ellipse_pts(72, rng, 0.04), 255)]
    if shape == "ring":
        inner = rng.uniform(0.45, 0.62)
        off = rng.uniform(-0.06, 0.06, 2)
        return [(_ellipse_pts(72, rng, 0.03), 255),
                (_ellipse_pts(60, rng, 0.02, inner, inner * rng.uniform(0.85, 1.1), *off), 0)]
    if shape == "star":
        n, inner = int(rng.integers(5, 8)), rng.uniform(0.4, 0.55)
        t = np.arange(2 * n) * math.pi / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
        return [(jitter(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 0.03), 255)]
    if shape == "cross":
        a = rng.uniform(0.22, 0.36)  # half arm width
        e, n_, w_, s_ = rng.uniform(0.75, 1.0, 4)  # arm lengths
        pts = np.array([(a, a), (e, a), (e, -a), (a, -a), (a, -s_), (-a, -s_), (-a, -a), (-w_, -a),
                        (-w_, a), (-a, a), (-a, n_), (a, n_)])
        return [(jitter(pts, 0.025), 255)]
    if shape == "triangle":
        t = np.deg2rad(np.array([90.0, 210.0, 330.0]) + rng.uniform(-18, 18, 3))
        r = rng.uniform(0.85, 1.0, 3)
        return [(jitter(np.stack([r * np.cos(t), r * np.sin(t)], axis=1), 0.03), 255)]
    if shape == "crescent":
        cut = rng.uniform(0.72, 0.9)
        return [(_ellipse_pts(72, rng, 0.03), 255),
                (_ellipse_pts(72, rng, 0.01, cut, cut, rng.uniform(0.4, 0.6), rng.uniform(-0.08, 0.08)), 0)]
    if shape == "arrow":
        sw, hw = rng.uniform(0.14, 0.24), rng.uniform(0.45, 0.62)  # shaft / head half widths
        neck = rng.uniform(0.0, 0.3)
        pts = np.array([(-1.0, sw), (neck, sw), (neck, hw), (1.0, 0.0), (neck, -hw), (neck, -sw), (-1.0, -sw)])
        return [(jitter(pts, 0.025), 255)]
    if shape == "square":  # a rectangle with sometimes rounded corners
        hy, rc = rng.uniform(0.75, 1.0), rng.uniform(0.0, 0.3)  # half height (half width 1), corner radius
        t = np.linspace(0, math.pi / 2, 8)
        corners = [(1 - rc, hy - rc), (-1 + rc, hy - rc), (-1 + rc, -hy + rc), (1 - rc, -hy + rc)]
        arcs = [np.stack([cx + rc * np.cos(t + q * math.pi / 2), cy + rc * np.sin(t + q * math.pi / 2)], axis=1)
                for q, (cx, cy) in enumerate(corners)]
        pts = np.concatenate(arcs)
        return [(jitter(pts, 0.02), 255)]
    if shape == "heart":
        t = np.linspace(0, 2 * math.pi, 72, endpoint=False)
        x = np.sin(t) ** 3
        y = -(13 * np.cos(t) - rng.uniform(4, 6.5) * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) / 16
        return [(jitter(np.stack([x * rng.uniform(0.9, 1.15), y], axis=1), 0.02), 255)]
    if shape == "ell":
        a, b = rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.45)  # widths of the upright and the foot
        foot = rng.uniform(0.2, 0.8)  # where the foot ends
        pts = np.array([(-1.0, -1.0), (-1 + a, -1.0), (-1 + a, 1 - b), (foot, 1 - b), (foot, 1.0), (-1.0, 1.0)])
        return [(jitter(pts, 0.025), 255)]
    if shape == "hourglass":
        waist, top, bottom = rng.uniform(0.1, 0.25), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)
        pts = np.array([(-top, -1.0), (top, -1.0), (waist, 0.0), (bottom, 1.0), (-bottom, 1.0), (-waist, 0.0)])
        return [(jitter(pts, 0.025), 255)]
    raise ValueError(f"unknown shape family {shape!r}")


def _texture(texture: str, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, scale: float) -> np.ndarray:
    """Pattern in 0..1 (dark to light tone) on object-centred pixel coordinates."""
    # Coarse enough to survive shrinking to 64 px (about 4..7 px there), fine enough to repeat.
    period = scale * rng.uniform(0.3, 0.45)
    if texture == "gridded":
        period *= 1.3
    a = rng.uniform(0, math.pi)
    u = (xs * math.cos(a) + ys * math.sin(a)) / period + rng.random()
    v = (-xs * math.sin(a) + ys * math.cos(a)) / period + rng.random()
    sharp = lambda s: np.clip(0.5 + s * period * 0.35, 0, 1)  # noqa: E731  about 1 px soft edges
    if texture == "striped":
        return sharp(np.sin(2 * math.pi * u) - rng.uniform(-0.3, 0.3))
    if texture == "wavy":
        t = u + rng.uniform(0.3, 0.45) * np.sin(2 * math.pi * v / rng.uniform(1.4, 2.2))
        return sharp(np.sin(2 * math.pi * t))
    if texture == "checkered":
        return sharp(np.sin(2 * math.pi * u) * np.sin(2 * math.pi * v) * 2)
    if texture == "dotted":
        v_row = np.floor(v + 0.5)
        u = u + 0.5 * (v_row % 2)  # hexagonal-ish lattice
        d = np.hypot(u - np.round(u), v - np.round(v))
        return np.clip((rng.uniform(0.22, 0.32) - d) * period + 0.5, 0, 1)
    if texture == "gridded":
        m = np.minimum(np.abs(u - np.round(u)), np.abs(v - np.round(v)))
        return np.clip((rng.uniform(0.1, 0.15) - m) * period + 0.5, 0, 1)
    if texture == "concentric":
        r = np.hypot(xs - rng.normal(0, scale * 0.1), ys - rng.normal(0, scale * 0.1)) / period
        return sharp(np.sin(2 * math.pi * (r + rng.random())))
    if texture == "plain":  # all dark or all light, so that brightness alone tells nothing
        return np.full_like(xs, float(rng.random() < 0.5))
    if texture == "mottled":
        h, w = xs.shape
        cells = max(3, int(max(w, h) / (period * 0.6)))
        return np.clip(0.5 + _smooth_noise(rng, w, h, cells)[..., 0] * 6, 0, 1)
    raise ValueError(f"unknown texture {texture!r}")


def _fill(size: tuple[int, int], ops: list[tuple[np.ndarray, int]]) -> Image.Image:
    """Rasterise fill/cut polygons (pixel coordinates) into an "L" mask image (0 / 255)."""
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    for pts, value in ops:
        draw.polygon([tuple(p) for p in pts.tolist()], fill=value)
    return img


def _box(mask: Image.Image, margin: int) -> tuple[slice, slice] | None:
    """Row and column slices of a mask's non-zero bounding box grown by `margin` (None if empty)."""
    bbox = mask.getbbox()
    if bbox is None:
        return None
    x0, y0, x1, y1 = bbox
    w, h = mask.size
    return slice(max(0, y0 - margin), min(h, y1 + margin)), slice(max(0, x0 - margin), min(w, x1 + margin))


def _alpha(mask: Image.Image, box: tuple[slice, slice]) -> np.ndarray:
    """Softly anti-aliased alpha (h x w x 1 float, 0..1) of a mask inside `box`."""
    ys, xs = box
    crop = mask.crop((xs.start, ys.start, xs.stop, ys.stop)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(crop, dtype=np.float32)[..., None] / 255


def _grain(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Cheap pixel noise with standard deviation about 1 (uniform bytes)."""
    return np.frombuffer(rng.bytes(int(np.prod(shape))), dtype=np.int8).reshape(shape).astype(np.float32) / 74


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation with a (2r+1) square, separable; beyond the edge the mask continues."""
    h, w = mask.shape
    padded = np.pad(mask, r, mode="edge")
    rows = np.zeros((h + 2 * r, w), dtype=bool)
    for dx in range(2 * r + 1):
        rows |= padded[:, dx:dx + w]
    out = np.zeros((h, w), dtype=bool)
    for dy in range(2 * r + 1):
        out |= rows[dy:dy + h]
    return out


def _ignore_band(visible: Image.Image, box: tuple[slice, slice]) -> np.ndarray:
    """Inside `box`: pixels within 2 px outside / 1 px inside the boundary (dilation XOR erosion)."""
    ys, xs = box
    crop = np.asarray(visible.crop((xs.start, ys.start, xs.stop, ys.stop))) > 127
    return _dilate(crop, 2) & _dilate(~crop, 1)


def _rotation(angle: float) -> np.ndarray:
    """2 x 2 rotation matrix."""
    return np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])


def render_example(class_id: int, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """Draw one image of class `class_id` and its mask ids (H x W int32: 0, class_id + 1, 1000)."""
    shape, texture = class_spec(class_id)
    w, h = _image_size(rng)
    bg = _background(rng, w, h)

    # Place a random variant: rotate (mostly upright), stretch, then scale it to cover 35..70% of
    # the image (less where it would not fit).
    ops = _shape_ops(shape, rng)
    stretchy = shape in ("disc", "ring", "triangle", "crescent", "square")
    aspect = rng.uniform(0.65, 1.0) if stretchy else rng.uniform(0.8, 1.0)
    rmat = _rotation(math.radians(rng.uniform(-20, 20))) * [1.0, aspect]
    ops = [(pts @ rmat.T, v) for pts, v in ops]
    outline = np.concatenate([pts for pts, v in ops if v == 255])
    lo, hi = outline.min(0), outline.max(0)
    bw, bh = hi - lo
    fill = np.count_nonzero(np.asarray(_fill((64, 64), [((pts - lo) * (63.0 / max(bw, bh)), v) for pts, v in ops])))
    unit_area = fill / (64 * 64) * max(bw, bh) ** 2
    scale = math.sqrt(rng.uniform(0.35, 0.7) * w * h / unit_area)
    scale = float(min(scale, 0.95 * w / bw, 0.95 * h / bh))
    ox = rng.uniform(-lo[0] * scale, w - hi[0] * scale)
    oy = rng.uniform(-lo[1] * scale, h - hi[1] * scale)
    centre = (lo + hi) / 2 * scale + (ox, oy)
    obj = _fill((w, h), [(pts * scale + (ox, oy), v) for pts, v in ops])
    box = _box(obj, 3)
    ys, xs = box

    # Surface (inside the object's box): a dark and a light tone mixed by the class texture, shaded.
    gy, gx = np.mgrid[ys, xs].astype(np.float32)
    gx -= np.float32(centre[0])
    gy -= np.float32(centre[1])
    c1, c2 = _object_colours(rng)
    p = _texture(texture, rng, gx, gy, scale)[..., None]
    surface = c1 * (1 - p) + c2 * p
    light = rng.uniform(0, math.pi * 2)
    surface *= (1 + rng.uniform(0, 0.3) * (gx * math.cos(light) + gy * math.sin(light)) / scale)[..., None]
    surface += _grain(rng, surface.shape) * rng.uniform(2, 7)

    if rng.random() < 0.5:  # a soft drop shadow
        shift = (int(rng.integers(-4, 5) * scale / 60), int(rng.integers(1, 5) * scale / 60))
        shadow = obj.transform(obj.size, Image.AFFINE, (1, 0, -shift[0], 0, 1, -shift[1]))
        shadow = np.asarray(shadow.filter(ImageFilter.GaussianBlur(max(1.0, scale / 25))), dtype=np.float32) / 255
        bg = bg * (1 - rng.uniform(0.2, 0.45) * shadow)[..., None]
    img = bg.copy()
    alpha = _alpha(obj, box)
    img[box] = bg[box] * (1 - alpha) + surface * alpha

    # Partial occlusion: a straight-edged bite that shows the background, or a clutter patch in
    # front. It must stick out of the object, or a disc with a hole would look like a ring.
    visible = obj
    if rng.random() < 0.2:
        obj_np = np.asarray(obj) > 127
        yy, xx = np.nonzero(obj_np)
        area = len(xx)
        bite = rng.random() < 0.5
        occ = None
        for _ in range(6):
            i = int(rng.integers(0, area))
            rx, ry = scale * rng.uniform(0.25, 0.5), scale * rng.uniform(0.2, 0.45)
            if bite or rng.random() < 0.5:
                corners = np.array([(-rx, -ry), (rx, -ry), (rx, ry), (-rx, ry)])
            else:
                corners = _ellipse_pts(40, rng, 0.05, rx, ry)
            corners = corners @ _rotation(rng.uniform(0, math.pi)).T + (xx[i], yy[i])
            occ = _fill((w, h), [(corners, 255)])
            occ_np = np.asarray(occ) > 127
            covered = np.count_nonzero(obj_np & occ_np)
            outside = np.count_nonzero(occ_np) - covered
            if 0.08 <= covered / area <= 0.4 and outside >= 0.3 * np.count_nonzero(occ_np):
                break
            occ = None
        occ_box = _box(occ, 2) if occ is not None else None
        if occ_box is not None:
            oa = _alpha(occ, occ_box)
            if bite:
                patch = bg[occ_box]
            else:
                oh, ow = oa.shape[:2]
                patch = _random_colour(rng, sat=(0, 0.7), val=(0.1, 0.95)) + \
                    _smooth_noise(rng, ow, oh, 5, 3) * rng.uniform(10, 30)
            img[occ_box] = img[occ_box] * (1 - oa) + patch * oa
            visible = Image.fromarray(np.where(occ_np, 0, np.asarray(obj)).astype(np.uint8), mode="L")

    img = img * rng.uniform(0.85, 1.15) + rng.uniform(-15, 15)
    img += _grain(rng, img.shape) * rng.uniform(1, 5)
    image = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
    ids = np.where(np.asarray(visible) > 127, class_to_id(class_id), 0).astype(np.int32)
    band_box = _box(visible, 4) or box
    ids[band_box][_ignore_band(visible, band_box)] = IGNORE_ID
    return image, ids
