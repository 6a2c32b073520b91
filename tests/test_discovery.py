"""Tests for helpers.discovery on fake Colab and Kaggle folder trees: search depth and order, zips extracted once."""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest

import helpers.discovery as discovery
from helpers.config import get_config
from helpers.discovery import extract_once, find_data_root

from .test_data import make_dataset


@pytest.fixture
def machine(monkeypatch, tmp_path) -> Path:
    """A fake machine: /kaggle/input, /content, /content/drive/MyDrive under tmp_path, and a repo clone."""
    monkeypatch.setattr(discovery, "KAGGLE_INPUT", tmp_path / "kaggle" / "input")
    monkeypatch.setattr(discovery, "COLAB_CONTENT", tmp_path / "content")
    monkeypatch.setattr(discovery, "COLAB_DRIVE", tmp_path / "content" / "drive" / "MyDrive")
    (tmp_path / "content" / "course" / "data").mkdir(parents=True)
    return tmp_path


def _repo(machine: Path) -> Path:
    return machine / "content" / "course"


def _zip(folder: Path, zip_path: Path, prefix: str = "ImageNet-Subset") -> Path:
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w") as zf:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                zf.write(f, f"{prefix}/{f.relative_to(folder)}" if prefix else str(f.relative_to(folder)))
    return zip_path


@pytest.mark.parametrize("parts", [
    ("imagenet-subset", "ImageNet-Subset"),                                  # /kaggle/input/<slug>/...
    ("datasets", "someone", "imagenet-subset", "ImageNet-Subset"),           # the newer layout
    ("datasets", "someone", "imagenet-subset", "ImageNet-Subset", "ImageNet-Subset"),  # zipped with a top folder
    ("imagenet-subset",),                                                    # the slug is the dataset
])
def test_kaggle_layouts_are_found(machine, parts):
    data = make_dataset(machine.joinpath("kaggle", "input", *parts))
    assert find_data_root(None, _repo(machine)) == (data.resolve(), "kaggle")


def test_search_order_and_what_is_left_out(machine):
    repo = _repo(machine)
    # the repo's own demo (and any generated demo) is never taken for the real data
    demo = make_dataset(repo / "data" / "demo" / "ImageNet-Subset")
    (demo.parent / "demo_info.json").write_text("{}")
    elsewhere = make_dataset(machine / "content" / "old" / "demo" / "ImageNet-Subset")
    (elsewhere.parent / "demo_info.json").write_text("{}")
    assert find_data_root(None, repo) == (None, "demo")
    local = make_dataset(repo / "data" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (local.resolve(), "local")
    drive = make_dataset(machine / "content" / "drive" / "MyDrive" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (drive.resolve(), "drive")
    content = make_dataset(machine / "content" / "data" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (content.resolve(), "colab")
    kaggle = make_dataset(machine / "kaggle" / "input" / "x" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (kaggle.resolve(), "kaggle")
    explicit = make_dataset(machine / "mine" / "ImageNet-Subset")
    assert find_data_root(explicit, repo) == (explicit.resolve(), "setting")
    assert find_data_root(machine / "mine", repo) == (explicit.resolve(), "setting")  # searched below
    assert find_data_root(demo, repo) == (demo.resolve(), "setting")  # a demo named explicitly is used
    with pytest.raises(FileNotFoundError, match=r"nothing-here: no challenge data.*IMSUB_DATA_ROOT"):
        find_data_root(machine / "nothing-here", repo)


def test_depth_limits_and_the_listing_budget(machine, monkeypatch):
    repo = _repo(machine)
    make_dataset(machine / "content" / "drive" / "MyDrive" / "a" / "b" / "c" / "ImageNet-Subset")  # 4 deep
    assert find_data_root(None, repo) == (None, "demo")
    deep = make_dataset(machine / "content" / "drive" / "MyDrive" / "b" / "c" / "ImageNet-Subset")
    assert find_data_root(None, repo) == (deep.resolve(), "drive")
    monkeypatch.setattr(discovery, "MAX_LISTINGS", 3)  # a Drive with many folders stops the search early
    assert find_data_root(None, repo) == (None, "demo")


def test_a_zip_on_drive_is_extracted_once_to_local_disk_and_reused(machine, monkeypatch, capsys):
    source = make_dataset(machine / "src" / "ImageNet-Subset")
    zip_path = _zip(source, machine / "content" / "drive" / "MyDrive" / "ImageNet-Subset.zip")
    (machine / "content" / "drive" / "MyDrive" / "ImageNet-A-broken.zip").write_bytes(b"not a zip")  # met first, skipped
    repo = _repo(machine)
    found, source_kind = find_data_root(None, repo)
    assert source_kind == "zip"
    assert found == (repo / "data" / "extracted" / "ImageNet-Subset" / "ImageNet-Subset").resolve()
    assert sorted(p.name for p in found.iterdir()) == sorted(p.name for p in source.iterdir())
    assert "extracted" in capsys.readouterr().out

    calls = []
    monkeypatch.setattr(zipfile.ZipFile, "extract", lambda *a, **k: calls.append(a))
    assert find_data_root(None, repo) == (found, "zip")  # reused: nothing extracted again
    assert calls == []
    monkeypatch.undo()
    # Drive not mounted in the next session: the extracted copy is still used
    shutil.rmtree(machine / "content" / "drive")
    assert find_data_root(None, repo) == (found, "zip")
    # an updated zip is extracted again
    (source / "train-unlabeled" / "u999.JPEG").write_bytes((source / "train-unlabeled" / "u000.JPEG").read_bytes())
    _zip(source, zip_path)
    assert (find_data_root(zip_path, repo)[0] / "train-unlabeled" / "u999.JPEG").is_file()


def test_get_config_uses_the_extracted_zip(machine, monkeypatch):
    monkeypatch.setenv("IMSUB_ROOT", str(_repo(machine)))
    monkeypatch.delenv("IMSUB_DATA_ROOT", raising=False)
    source = make_dataset(machine / "src" / "ImageNet-Subset")
    _zip(source, machine / "content" / "imagenet_subset.zip", prefix="")  # flat zip: no top folder
    cfg = get_config("smoke", extract_dir=machine / "local-disk")
    assert cfg.data_source == "zip" and cfg.data_root == (machine / "local-disk" / "imagenet_subset").resolve()


def test_bad_zips_get_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"broken\.zip is not a readable zip"):
        (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 truncated")
        extract_once(tmp_path / "broken.zip", tmp_path / "out")
    other = tmp_path / "other"
    (other / "x").mkdir(parents=True)
    (other / "x" / "a.txt").write_text("a")
    with pytest.raises(ValueError, match=r"other\.zip holds no train_semi_annotations_with_seg_ids\.json"):
        extract_once(_zip(other, tmp_path / "other.zip"), tmp_path / "out")
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../escape.txt", "x")
        zf.writestr("ImageNet-Subset/train_semi_annotations_with_seg_ids.json", "[]")
    with pytest.raises(ValueError, match=r"evil\.zip: member '\.\./escape\.txt' would land outside"):
        extract_once(evil, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()
    lonely = tmp_path / "lonely.zip"
    with zipfile.ZipFile(lonely, "w") as zf:
        zf.writestr("train_semi_annotations_with_seg_ids.json", "[]")  # no train-semi/ beside it
    with pytest.raises(ValueError, match=r"lonely\.zip: no folder with train-semi/"):
        extract_once(lonely, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []  # no half-extracted folder left
