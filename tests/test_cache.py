"""Tests for helpers.cache: build, reload without decoding, rebuild rules, broken files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import helpers.cache as cache_mod
from helpers.cache import CachedImages, cache_path, concat, load_cached
from helpers.images import ImageLoadError
from helpers.masks import IGNORE_ID, IGNORE_INDEX, write_mask

NUM_CLASSES = 7
SIZE = 16


@dataclass(frozen=True)
class FakeSample:
    """Same fields as helpers.data.Sample (the cache only relies on these attributes)."""

    key: str
    image: Path
    mask: Path | None = None
    label: int = -1


# (width, height, colour, label)
SPECS = [(40, 30, (250, 0, 0), 0), (23, 50, (0, 250, 0), 3), (64, 64, (0, 0, 250), 6),
         (100, 37, (120, 120, 120), 2)]


def _make_labeled(root: Path, with_masks: bool = True) -> list[FakeSample]:
    samples = []
    for i, (w, h, colour, label) in enumerate(SPECS):
        img = root / f"img{i}.JPEG"
        if i == 1:  # a PNG named .JPEG among them
            Image.new("RGB", (w, h), colour).save(img, "PNG")
        else:
            Image.new("RGB", (w, h), colour).save(img, "JPEG", quality=95)
        mask = None
        if with_masks:
            ids = np.zeros((h, w), dtype=np.int32)
            ids[:, : w // 2] = label + 1
            band = h // 6 + 1  # thick enough to survive squashing to SIZE rows
            ids[:band], ids[-band:] = IGNORE_ID, IGNORE_ID
            mask = root / f"img{i}.png"
            write_mask(mask, ids)
        samples.append(FakeSample(f"c{label}/img{i}", img, mask, label))
    return samples


def _make_unlabeled(root: Path, n: int) -> list[FakeSample]:
    out = []
    for i in range(n):
        p = root / f"u{i:03d}.JPEG"
        Image.new("RGB", (30 + i, 20), (10 * i, 50, 100)).save(p, "JPEG")
        out.append(FakeSample(f"u{i:03d}", p))
    return out


class DecodeCounter:
    """Wraps the cache's image loader to count decodes."""

    def __init__(self, monkeypatch):
        self.calls = 0
        self._orig = cache_mod.load_image_with_size
        monkeypatch.setattr(cache_mod, "load_image_with_size", self)

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._orig(*args, **kwargs)


def _load(samples, tmp_path, **kw):
    kw.setdefault("size", SIZE)
    kw.setdefault("name", "split")
    kw.setdefault("num_classes", NUM_CLASSES)
    kw.setdefault("progress", False)
    kw.setdefault("workers", 2)
    return load_cached(samples, cache_dir=tmp_path / "cache", **kw)


def test_build_shapes_values_and_masks(tmp_path):
    samples = _make_labeled(tmp_path)
    c = _load(samples, tmp_path, with_masks=True)
    n = len(samples)
    assert len(c) == n and c.size == SIZE
    assert c.images.dtype == torch.uint8 and c.images.shape == (n, 3, SIZE, SIZE)
    assert c.masks.dtype == torch.uint8 and c.masks.shape == (n, SIZE, SIZE)
    assert c.labels.dtype == torch.int64 and c.labels.tolist() == [s[3] for s in SPECS]
    assert c.keys == [s.key for s in samples]
    assert c.files == [str(s.image) for s in samples]
    assert c.sizes == [(h, w) for w, h, _, _ in SPECS]  # original (H, W), not the draft size
    for i, (_, _, colour, label) in enumerate(SPECS):
        mean = c.images[i].float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(colour, dtype=torch.float32), atol=4), (i, mean)
        values = set(torch.unique(c.masks[i]).tolist())
        assert values == {0, label + 1, IGNORE_INDEX}  # nearest: no blended values
        assert (c.masks[i, 0] == IGNORE_INDEX).all()  # top border band survives squashing
        assert (c.masks[i, SIZE // 2, : SIZE // 2 - 1] == label + 1).all()
        assert (c.masks[i, SIZE // 2, SIZE // 2 + 1:] == 0).all()


def test_large_jpeg_uses_draft_and_keeps_original_size(tmp_path, monkeypatch):
    p = tmp_path / "big.JPEG"
    Image.new("RGB", (900, 700), (30, 60, 90)).save(p, "JPEG")
    drafts = []
    orig = cache_mod.load_image_with_size

    def spy(path, draft_size=None):
        drafts.append(draft_size)
        return orig(path, draft_size=draft_size)

    monkeypatch.setattr(cache_mod, "load_image_with_size", spy)
    c = _load([FakeSample("big", p)], tmp_path, size=32)
    assert drafts == [32]
    assert c.sizes == [(700, 900)] and c.images.shape == (1, 3, 32, 32)
    assert torch.allclose(c.images[0].float().mean(dim=(1, 2)), torch.tensor([30.0, 60, 90]), atol=3)


def test_without_masks_and_missing_mask_is_ignore(tmp_path):
    samples = _make_labeled(tmp_path)
    c = _load(samples, tmp_path)
    assert c.masks is None
    mixed = samples[:2] + [FakeSample("nomask", samples[2].image, None, 6)]
    c2 = _load(mixed, tmp_path, name="mixed", with_masks=True)
    assert (c2.masks[2] == IGNORE_INDEX).all()
    assert set(torch.unique(c2.masks[0]).tolist()) == {0, 1, IGNORE_INDEX}


def test_second_call_loads_from_file_without_decoding(tmp_path, monkeypatch):
    samples = _make_labeled(tmp_path)
    first = _load(samples, tmp_path, with_masks=True)
    assert cache_path(tmp_path / "cache", "split", SIZE).is_file()

    def boom(*a, **k):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(cache_mod, "load_image_with_size", boom)
    monkeypatch.setattr(cache_mod, "read_label_mask", boom)
    second = _load(samples, tmp_path, with_masks=True)
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    assert torch.equal(first.labels, second.labels)
    assert second.keys == first.keys and second.sizes == first.sizes and second.files == first.files


def test_modified_file_triggers_rebuild(tmp_path, monkeypatch, capsys):
    samples = _make_labeled(tmp_path, with_masks=False)
    _load(samples, tmp_path)
    counter = DecodeCounter(monkeypatch)
    _load(samples, tmp_path)
    assert counter.calls == 0
    Image.new("RGB", (40, 30), (0, 0, 0)).save(samples[0].image, "JPEG")  # new bytes
    st = os.stat(samples[0].image)
    os.utime(samples[0].image, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    capsys.readouterr()
    c = _load(samples, tmp_path)
    assert counter.calls == len(samples)
    assert "changed" in capsys.readouterr().out
    assert c.images[0].float().mean() < 5  # the new content, not the stale one


def test_touched_mask_triggers_rebuild(tmp_path, monkeypatch):
    samples = _make_labeled(tmp_path)
    _load(samples, tmp_path, with_masks=True)
    counter = DecodeCounter(monkeypatch)
    st = os.stat(samples[1].mask)
    os.utime(samples[1].mask, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))
    _load(samples, tmp_path, with_masks=True)
    assert counter.calls == len(samples)


def test_size_label_sample_count_and_classes_trigger_rebuild(tmp_path, monkeypatch):
    samples = _make_labeled(tmp_path, with_masks=False)
    _load(samples, tmp_path)
    counter = DecodeCounter(monkeypatch)

    c = _load(samples, tmp_path, size=8)  # another size: its own file
    assert counter.calls == 4 and c.images.shape[-1] == 8
    assert cache_path(tmp_path / "cache", "split", 8).is_file()
    assert cache_path(tmp_path / "cache", "split", SIZE).is_file()

    extra = samples + _make_unlabeled(tmp_path, 1)
    c = _load(extra, tmp_path)  # one more sample
    assert counter.calls == 4 + 5 and len(c) == 5

    relabeled = [FakeSample(s.key, s.image, s.mask, 1) for s in samples]
    c = _load(relabeled, tmp_path)
    assert counter.calls == 9 + 4 and c.labels.tolist() == [1, 1, 1, 1]

    _load(relabeled, tmp_path, num_classes=NUM_CLASSES + 1)
    assert counter.calls == 13 + 4
    _load(relabeled, tmp_path, num_classes=NUM_CLASSES + 1)
    assert counter.calls == 17  # unchanged inputs: loaded


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_file_is_rebuilt(tmp_path, monkeypatch, capsys, damage):
    samples = _make_labeled(tmp_path, with_masks=False)
    good = _load(samples, tmp_path)
    path = cache_path(tmp_path / "cache", "split", SIZE)
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00not a torch file" * 50, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    counter = DecodeCounter(monkeypatch)
    capsys.readouterr()
    again = _load(samples, tmp_path)
    assert counter.calls == len(samples)
    assert "unreadable" in capsys.readouterr().out
    assert torch.equal(good.images, again.images)
    _load(samples, tmp_path)
    assert counter.calls == len(samples)  # the rebuilt file is valid


def test_unlabeled_broken_files_are_skipped_and_reported(tmp_path, capsys):
    samples = _make_unlabeled(tmp_path, 5)
    samples[1].image.write_bytes(b"garbage bytes, not a JPEG")
    samples[3].image.unlink()
    c = _load(samples, tmp_path, name="unlabeled", skip_broken=True)
    out = capsys.readouterr().out
    assert "skipped 2 unreadable files" in out and "u001.JPEG" in out and "u003.JPEG" in out
    assert len(c) == 3 and c.keys == ["u000", "u002", "u004"]
    assert c.images.shape == (3, 3, SIZE, SIZE) and c.labels.tolist() == [-1, -1, -1]
    assert c.sizes == [(20, 30), (20, 32), (20, 34)]
    assert len(c.skipped) == 2
    reloaded = _load(samples, tmp_path, name="unlabeled", skip_broken=True)
    assert reloaded.keys == c.keys and torch.equal(reloaded.images, c.images)


def test_labeled_broken_file_raises_naming_it(tmp_path):
    samples = _make_labeled(tmp_path, with_masks=False)
    samples[2].image.write_bytes(b"\xff\xd8 broken")
    with pytest.raises(ImageLoadError, match="img2.JPEG"):
        _load(samples, tmp_path)
    assert not cache_path(tmp_path / "cache", "split", SIZE).exists()
    samples[2].image.unlink()
    with pytest.raises(FileNotFoundError, match="img2.JPEG"):
        _load(samples, tmp_path)


def test_bad_mask_raises_naming_it(tmp_path):
    samples = _make_labeled(tmp_path)
    write_mask(samples[0].mask, np.full((30, 40), 99, dtype=np.int32))  # id outside 0..7
    with pytest.raises(ValueError, match="img0.png"):
        _load(samples, tmp_path, with_masks=True)
    write_mask(samples[0].mask, np.zeros((40, 30), dtype=np.int32))  # transposed grid
    with pytest.raises(ValueError, match="img0.png"):
        _load(samples, tmp_path, with_masks=True)


def test_atomic_write_leaves_no_tmp_and_keeps_old_file_on_failure(tmp_path, monkeypatch):
    samples = _make_labeled(tmp_path, with_masks=False)
    _load(samples, tmp_path)
    cache_dir = tmp_path / "cache"
    assert [p.name for p in cache_dir.iterdir()] == [f"split_{SIZE}.pt"]
    before = cache_path(cache_dir, "split", SIZE).read_bytes()

    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"partial") if hasattr(f, "write") else Path(f).write_bytes(b"partial")  # a file or a path
        raise OSError("disk full")

    Image.new("RGB", (40, 30), (1, 2, 3)).save(samples[0].image, "JPEG")
    os.utime(samples[0].image, ns=(0, 123_456_789_000))
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        _load(samples, tmp_path)
    assert [p.name for p in cache_dir.iterdir()] == [f"split_{SIZE}.pt"]  # no .tmp left
    assert cache_path(cache_dir, "split", SIZE).read_bytes() == before
    monkeypatch.setattr(torch, "save", real_save)


def test_subset_concat_to(tmp_path):
    lab = _load(_make_labeled(tmp_path), tmp_path, with_masks=True)
    unl = _load(_make_unlabeled(tmp_path, 3), tmp_path, name="unl")
    sub = lab.subset([2, 0])
    assert sub.keys == [lab.keys[2], lab.keys[0]] and sub.sizes == [lab.sizes[2], lab.sizes[0]]
    assert torch.equal(sub.images[0], lab.images[2]) and torch.equal(sub.masks[1], lab.masks[0])
    assert sub.labels.tolist() == [lab.labels[2].item(), lab.labels[0].item()]
    assert lab.subset(torch.tensor([True, False, True, False])).keys == [lab.keys[0], lab.keys[2]]
    assert len(lab.subset([])) == 0

    both = concat(lab, unl)
    assert len(both) == 7 and both.keys == lab.keys + unl.keys
    assert both.labels.tolist() == lab.labels.tolist() + [-1, -1, -1]
    assert torch.equal(both.masks[:4], lab.masks) and (both.masks[4:] == IGNORE_INDEX).all()
    assert CachedImages.concat(unl, unl).masks is None
    with pytest.raises(ValueError, match="size"):
        concat(lab, _load(_make_unlabeled(tmp_path, 1), tmp_path, name="u8", size=8))

    moved = lab.to("cpu")
    assert moved.images.device.type == "cpu" and moved.keys == lab.keys


def test_bad_name_rejected(tmp_path):
    with pytest.raises(ValueError, match="plain file name"):
        _load(_make_unlabeled(tmp_path, 1), tmp_path, name="a/b")


def test_decoding_threads_follow_the_mount(tmp_path, monkeypatch):
    import helpers.discovery as discovery

    monkeypatch.setattr(discovery, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    monkeypatch.setattr(discovery, "COLAB_DRIVE", tmp_path / "content" / "drive" / "MyDrive")
    monkeypatch.setattr(cache_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(cache_mod, "_mount_table", lambda: [
        (str(tmp_path / "nfs"), "nfs4"), (str(tmp_path / "nfs" / "local"), "ext4"),
        (str(tmp_path / "gcs"), "fuse.gcsfuse"), ("/", "overlay")])  # in no particular order
    assert cache_mod.io_workers(tmp_path / "kaggle" / "input" / "x" / "a.JPEG") == 16
    assert cache_mod.io_workers(tmp_path / "content" / "drive" / "MyDrive" / "a.JPEG") == 16
    assert cache_mod.io_workers(tmp_path / "nfs" / "a.JPEG") == 16
    assert cache_mod.io_workers(tmp_path / "gcs" / "a.JPEG") == 16
    assert cache_mod.io_workers(tmp_path / "nfs" / "local" / "a.JPEG") == 2  # the innermost mount decides
    assert cache_mod.io_workers(tmp_path / "content" / "a.JPEG") == 2
    assert cache_mod.io_workers(None) == 2

    # load_cached uses them: 16 threads for a dataset under /kaggle/input, the core count elsewhere
    (tmp_path / "kaggle" / "input" / "x").mkdir(parents=True)
    (tmp_path / "local").mkdir()
    pools = []
    real_pool = cache_mod.ThreadPoolExecutor
    monkeypatch.setattr(cache_mod, "ThreadPoolExecutor",
                        lambda max_workers: pools.append(max_workers) or real_pool(max_workers))
    load_cached(_make_unlabeled(tmp_path / "kaggle" / "input" / "x", 3), SIZE, tmp_path / "cache", "net", 1,
                progress=False)
    load_cached(_make_unlabeled(tmp_path / "local", 3), SIZE, tmp_path / "cache", "local", 1, progress=False)
    assert pools == [16, 2]
