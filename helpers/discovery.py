"""Finding the challenge data wherever Colab and Kaggle put it, and extracting a dataset zip once.

Searched in this order (`find_data_root`):
1. an explicit setting (IMSUB_DATA_ROOT): the dataset folder, a folder above it, or a .zip of it;
2. Kaggle: /kaggle/input/<slug>/... and the newer /kaggle/input/datasets/<owner>/<slug>/... (5 levels);
3. Colab's local disk: /content/... (3 levels; Drive and this repository left out);
4. Colab's Drive: /content/drive/MyDrive/... (3 levels);
5. this repository: data/ImageNet-Subset;
6. a zip whose name holds "imagenet" in /content, /kaggle/input or Drive (at the same depths),
   holding the annotation file: extracted once to local disk (cfg.extract_dir, default
   data/extracted/), reused while the zip is unchanged;
7. what an earlier session extracted there, when its zip is out of reach (Drive not mounted);
otherwise nothing (the caller falls back to the demo data).
A folder is the dataset when it holds train-semi/ and train_semi_annotations_with_seg_ids.json.
Generated demo datasets (demo_info.json next to them) are only used when named explicitly.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

KAGGLE_INPUT = Path("/kaggle/input")
COLAB_CONTENT = Path("/content")
COLAB_DRIVE = Path("/content/drive/MyDrive")
ANNOTATIONS = "train_semi_annotations_with_seg_ids.json"
LABELED_DIR = "train-semi"
SPLIT_DIRS = {"train-semi", "train-semi-segmentation", "train-unlabeled", "test"}
MAX_LISTINGS = 400  # folders listed per base at most: a large Drive must not stall the first cell
_MARKER = ".imsub-extracted.json"


def is_dataset(folder: Path) -> bool:
    """Whether `folder` holds the challenge layout (train-semi/ and the annotation JSON)."""
    return (folder / LABELED_DIR).is_dir() and (folder / ANNOTATIONS).is_file()


def _is_demo(folder: Path) -> bool:
    return (folder.parent / "demo_info.json").is_file()


def scan(base: Path, max_depth: int, exclude: tuple[Path, ...] = (), zips: list[Path] | None = None,
         skip_demo: bool = True) -> Path | None:
    """The first dataset folder at most `max_depth` levels below `base` (breadth first, sorted).

    Zip files whose name holds "imagenet" met on the way are appended to `zips`. A dataset's own
    split folders are never entered, nor `exclude`d folders, hidden ones, or more than MAX_LISTINGS.
    """
    excluded = {p.resolve() for p in exclude}
    level, listed = [base], 0
    for depth in range(max_depth + 1):
        below = []
        for folder in level:
            if listed >= MAX_LISTINGS:
                print(f"stopped searching {base} after {listed} folders; set IMSUB_DATA_ROOT to the data")
                return None
            listed += 1
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            names = {e.name for e in entries}
            if ANNOTATIONS in names and LABELED_DIR in names and is_dataset(folder):
                if not (skip_demo and _is_demo(folder)):
                    return folder
                continue
            for e in entries:
                if e.name.startswith(".") or e.name in SPLIT_DIRS:
                    continue
                path = Path(e.path)
                if e.is_dir() and depth < max_depth and path.resolve() not in excluded:
                    below.append(path)
                elif zips is not None and e.name.lower().endswith(".zip") and "imagenet" in e.name.lower():
                    zips.append(path)
        level = below
    return None


def find_data_root(explicit: str | os.PathLike | None = None, root: Path | None = None,
                   extract_dir: Path | None = None) -> tuple[Path | None, str]:
    """(dataset folder, how it was found): "setting", "kaggle", "colab", "drive", "local", "zip"; (None, "demo")."""
    from .config import project_root

    root = root or project_root()
    extract_dir = Path(extract_dir) if extract_dir else root / "data" / "extracted"
    if explicit:
        return _explicit(Path(explicit).expanduser(), extract_dir), "setting"
    zips: list[Path] = []
    bases = ((KAGGLE_INPUT, "kaggle", 5, ()), (COLAB_CONTENT, "colab", 3, (COLAB_DRIVE.parent, root)),
             (COLAB_DRIVE, "drive", 3, ()), (root / "data" / "ImageNet-Subset", "local", 1, ()))
    for base, source, depth, exclude in bases:
        if base.is_dir():
            found = scan(base, depth, exclude, zips)
            if found is not None:
                return found.resolve(), source
    for path in zips:
        if _holds_annotations(path):
            return extract_once(path, extract_dir), "zip"
    # extracted in an earlier session whose zip is out of reach now (Drive not mounted)
    found = scan(extract_dir, 3, skip_demo=False) if extract_dir.is_dir() else None
    return (found.resolve(), "zip") if found is not None else (None, "demo")


def _explicit(path: Path, extract_dir: Path) -> Path:
    """The dataset an explicit setting names: the folder, one below it, or the content of a zip."""
    if path.is_file() and path.suffix.lower() == ".zip":
        return extract_once(path, extract_dir)
    if is_dataset(path):
        return path.resolve()
    found = scan(path, 3, skip_demo=False) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(
            f"{path}: no challenge data here (expected {LABELED_DIR}/ and {ANNOTATIONS}, at most 3 "
            "folders below, or a .zip holding them); fix IMSUB_DATA_ROOT or data_root")
    return found.resolve()


def _holds_annotations(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as zf:
            return any(Path(n).name == ANNOTATIONS for n in zf.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _stamp(zip_path: Path) -> dict:
    st = zip_path.stat()
    return {"zip": str(zip_path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def extract_once(zip_path: str | os.PathLike, into: str | os.PathLike, progress: bool = True) -> Path:
    """Extract a dataset zip into `into/<zip name>/` (once: reused while the zip is unchanged); the dataset folder."""
    zip_path, into = Path(zip_path), Path(into)
    target = into / re.sub(r"[^A-Za-z0-9._-]+", "-", zip_path.stem)
    stamp = _stamp(zip_path)
    try:
        if json.loads((target / _MARKER).read_text()) == stamp:
            found = scan(target, 3, skip_demo=False)
            if found is not None:
                return found.resolve()
    except (OSError, ValueError):
        pass
    try:
        zf = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{zip_path} is not a readable zip ({exc}); copy or download it again") from exc
    partial = into / (target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zf:
        members = zf.infolist()
        for m in members:
            if m.filename.startswith(("/", "\\")) or ".." in Path(m.filename).parts:
                raise ValueError(f"{zip_path}: member {m.filename!r} would land outside the folder; "
                                 "not extracting this zip")
        if not any(Path(m.filename).name == ANNOTATIONS for m in members):
            raise ValueError(f"{zip_path} holds no {ANNOTATIONS}: not an ImageNet-Subset zip; "
                             "set IMSUB_DATA_ROOT to the dataset")
        total = sum(m.file_size for m in members)
        into.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(into).free
        if total > free:
            raise OSError(f"extracting {zip_path} needs {total / 2**30:.1f} GB but {into} has "
                          f"{free / 2**30:.1f} GB free; set IMSUB_EXTRACT_DIR to a larger disk")
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"extracting {zip_path.name}",
                  disable=not progress) as bar:
            for m in members:
                zf.extract(m, partial)
                bar.update(m.file_size)
    found = scan(partial, 3, skip_demo=False)
    if found is None:
        shutil.rmtree(partial, ignore_errors=True)
        raise ValueError(f"{zip_path}: no folder with {LABELED_DIR}/ next to {ANNOTATIONS} inside; "
                         "zip the ImageNet-Subset folder itself")
    (partial / _MARKER).write_text(json.dumps(stamp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(partial, target)
    print(f"extracted {zip_path} ({total / 2**20:.0f} MB) into {target}")
    return (target / found.relative_to(partial)).resolve()
