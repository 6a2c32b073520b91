"""Tests for helpers.images: every quirky file kind of the challenge data loads as RGB."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from helpers.images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    image_size,
    is_image_file,
    load_image,
    load_image_with_size,
)


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _check_rgb(im: Image.Image, w: int, h: int) -> np.ndarray:
    assert isinstance(im, Image.Image)
    assert im.mode == "RGB"
    assert im.size == (w, h)
    arr = np.asarray(im)
    assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
    return arr


def test_extensions_case_insensitive():
    assert IMAGE_EXTENSIONS == {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp"}
    assert is_image_file("a/b/n01443537_19638.JPEG")
    assert is_image_file("x.Png") and is_image_file("x.webp")
    assert not is_image_file("mask.json") and not is_image_file("README") and not is_image_file("x.jpg.txt")
    assert not is_image_file("test/._00000.JPEG") and not is_image_file(".hidden.png")  # macOS resource forks


def test_rgb_jpeg(tmp_path):
    p = tmp_path / "rgb.JPEG"
    Image.new("RGB", (30, 20), (200, 30, 40)).save(p, "JPEG", quality=95)
    arr = _check_rgb(load_image(p), 30, 20)
    assert np.abs(arr.astype(int) - [200, 30, 40]).max() <= 3


def test_grayscale_jpeg(tmp_path):
    p = tmp_path / "gray.JPEG"
    Image.new("L", (31, 17), 90).save(p, "JPEG", quality=95)
    arr = _check_rgb(load_image(p), 31, 17)
    assert np.abs(arr.astype(int) - 90).max() <= 2
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_cmyk_jpeg(tmp_path):
    p = tmp_path / "cmyk.JPEG"
    Image.new("CMYK", (25, 40), (0, 255, 255, 0)).save(p, "JPEG", quality=95)  # pure red
    with Image.open(p) as raw:
        assert raw.mode == "CMYK"
    arr = _check_rgb(load_image(p), 25, 40)
    r, g, b = arr.reshape(-1, 3).mean(0)
    assert r > 200 and g < 50 and b < 50


def test_png_bytes_named_jpeg(tmp_path):
    p = tmp_path / "n0_1.JPEG"
    Image.fromarray(_noise(12, 18)).save(p, "PNG")
    arr = _check_rgb(load_image(p), 18, 12)
    assert np.array_equal(arr, _noise(12, 18))  # lossless: decoded as PNG, not as a JPEG


def test_rgba_png_named_jpg_composited_on_black(tmp_path):
    rgba = np.zeros((10, 20, 4), dtype=np.uint8)
    rgba[:, :10] = (255, 0, 0, 0)  # fully transparent, red underneath
    rgba[:, 10:] = (0, 200, 0, 255)  # opaque green
    p = tmp_path / "rgba.jpg"
    Image.fromarray(rgba, "RGBA").save(p, "PNG")
    arr = _check_rgb(load_image(p), 20, 10)
    assert (arr[:, :10] == 0).all()
    assert (arr[:, 10:] == [0, 200, 0]).all()


def test_la_png(tmp_path):
    la = np.zeros((8, 6, 2), dtype=np.uint8)
    la[..., 0], la[..., 1] = 120, 255
    p = tmp_path / "la.png"
    Image.fromarray(la, "LA").save(p)
    arr = _check_rgb(load_image(p), 6, 8)
    assert (arr == 120).all()


def test_palette_gif_named_jpg(tmp_path):
    p = tmp_path / "pal.jpg"
    Image.new("RGB", (16, 9), (0, 0, 255)).convert("P").save(p, "GIF")
    arr = _check_rgb(load_image(p), 16, 9)
    assert (arr[..., 2] > 200).all() and (arr[..., :2] < 30).all()


def test_palette_with_transparency(tmp_path):
    pal = Image.new("P", (10, 10), 1)
    pal.putpalette([255, 255, 255, 10, 20, 30] + [0] * 762)
    p = tmp_path / "trans.png"
    pal.save(p, transparency=1)
    arr = _check_rgb(load_image(p), 10, 10)
    assert (arr == 0).all()  # the transparent colour is composited on black


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 8), c).convert("P") for c in [(255, 0, 0), (0, 0, 255)]]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100)
    arr = _check_rgb(load_image(p), 12, 8)
    assert arr[..., 0].min() > 200 and arr[..., 2].max() < 30


def test_16bit_grayscale_png_scaled_not_clipped(tmp_path):
    a = np.zeros((4, 5), dtype=np.uint16)
    a[0], a[1], a[2], a[3] = 0, 32768, 65535, 256
    p = tmp_path / "g16.png"
    Image.fromarray(a).save(p)
    with Image.open(p) as raw:
        assert raw.mode.startswith("I")
    arr = _check_rgb(load_image(p), 5, 4)
    assert list(arr[:, 0, 0]) == [0, 128, 255, 1]


def test_bilevel_png(tmp_path):
    bits = np.zeros((6, 9), dtype=bool)
    bits[:, 4:] = True
    p = tmp_path / "bits.png"
    Image.fromarray(bits).save(p)
    arr = _check_rgb(load_image(p), 9, 6)
    assert (arr[:, :4] == 0).all() and (arr[:, 4:] == 255).all()


def test_truncated_jpeg_warns_and_restores_flag(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_noise(120, 160)).save(buf, "JPEG", quality=90)
    p = tmp_path / "cut.JPEG"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.warns(UserWarning, match="cut.JPEG"):
        im = load_image(p)
    _check_rgb(im, 160, 120)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # restored after the retry


def test_truncated_from_many_threads_restores_flag(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    buf = io.BytesIO()
    Image.fromarray(_noise(200, 200)).save(buf, "JPEG", quality=90)
    paths = []
    for i in range(8):
        p = tmp_path / f"cut{i}.jpg"
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
        paths.append(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ThreadPoolExecutor(4) as pool:
            sizes = [im.size for im in pool.map(load_image, paths * 3)]
    assert sizes == [(200, 200)] * 24
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_exif_orientation_not_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    img = np.zeros((20, 40, 3), dtype=np.uint8)
    img[:, :20] = 255  # left half white in the stored grid
    p = tmp_path / "exif.jpg"
    Image.fromarray(img).save(p, "JPEG", exif=exif.tobytes(), quality=95)
    with Image.open(p) as raw:
        assert raw.getexif().get(0x0112) == 6
    arr = _check_rgb(load_image(p), 40, 20)  # stored W x H, not rotated to 20 x 40
    assert arr[:, :15].mean() > 240 and arr[:, 25:].mean() < 15
    assert image_size(p) == (20, 40)


def test_missing_file_names_it(tmp_path):
    p = tmp_path / "nope" / "missing_123.JPEG"
    with pytest.raises(FileNotFoundError, match="missing_123.JPEG"):
        load_image(p)
    with pytest.raises(FileNotFoundError, match="missing_123.JPEG"):
        image_size(p)


def test_garbage_bytes_raise_image_load_error(tmp_path):
    p = tmp_path / "garbage.JPEG"
    p.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageLoadError, match="garbage.JPEG.*replace it with a good copy") as info:
        load_image(p)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ImageLoadError, match="garbage.JPEG"):
        image_size(p)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty.png: the file is empty \(0 bytes\).*good copy"):
        load_image(empty)
    with pytest.raises(ImageLoadError, match=r"empty.png: the file is empty"):
        image_size(empty)


def test_decompression_bomb_is_refused_with_a_way_out(tmp_path, monkeypatch):
    p = tmp_path / "huge.JPEG"
    Image.fromarray(_noise(30, 40)).save(p, "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 1200 pixels > 2 x the limit: refused
    for read in (load_image, image_size):
        with pytest.raises(ImageLoadError, match=r"huge.JPEG: refused as a possible decompression bomb "
                                                 r".*MAX_IMAGE_PIXELS = None"):
            read(p)


def test_directory_is_not_an_image(tmp_path):
    d = tmp_path / "folder.jpg"
    d.mkdir()
    with pytest.raises((ImageLoadError, IsADirectoryError, PermissionError), match="folder.jpg"):
        load_image(d)


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_draft_size_reduces_but_keeps_at_least_requested(tmp_path, mode):
    p = tmp_path / f"big_{mode}.JPEG"
    Image.fromarray(_noise(600, 800)).convert(mode).save(p, "JPEG", quality=90)
    full = load_image(p)
    small, hw = load_image_with_size(p, draft_size=64)
    assert full.size == (800, 600)
    assert small.mode == "RGB" and type(small) is type(full)
    assert 64 <= small.size[0] < 800 and 64 <= small.size[1] < 600  # really decoded smaller
    assert small.size == (100, 75)  # 1/8 scale: both sides still >= 64
    assert hw == (600, 800)  # original size, unaffected by the draft
    assert image_size(p) == (600, 800)


def test_draft_size_small_image_and_non_jpeg(tmp_path):
    p = tmp_path / "small.JPEG"
    Image.fromarray(_noise(50, 70)).save(p, "JPEG")
    assert load_image(p, draft_size=64).size == (70, 50)  # never below the file's own size
    q = tmp_path / "big.png"
    Image.fromarray(_noise(300, 200)).save(q)
    assert load_image(q, draft_size=32).size == (200, 300)  # draft only applies to JPEG


def test_no_warning_for_good_files(tmp_path):
    p = tmp_path / "ok.JPEG"
    Image.fromarray(_noise(40, 40)).save(p, "JPEG")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(p)
