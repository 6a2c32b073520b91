"""Write, validate and zip a challenge submission; CLI: `python -m helpers.submission validate|score`.

A submission folder holds `classification.json` ([{"image": "<test file name>", "class_id": k}], one
entry per test image) and `segmentation/<stem>.png` (RGB, the test image's size, id = R + G*256 with
0 background and k + 1 for class k), plus `submission.zip` of those two, which is what is uploaded.
Its members sit at the zip's root: `classification.json`, `segmentation/00000.png`, ...

Id 1000 ("ignore") in a predicted mask is accepted by the validator because the format allows it,
but it is pointless: the evaluator drops only pixels whose GROUND TRUTH is 1000, so a predicted
1000 is simply a wrong pixel. Every other id outside 0..num_classes is an error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import zipfile
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from helpers.fileops import WriteError, folder_lock, pid_alive, write_error
from helpers.images import IMAGE_EXTENSIONS, image_size, is_image_file
from helpers.masks import IGNORE_ID, MAX_ID, rgb_to_ids, write_mask

CLASSIFICATION_FILE = "classification.json"
SEGMENTATION_DIR = "segmentation"
_ELSEWHERE = "IMSUB_SUBMISSION_DIR, or `python -m helpers run --out DIR`"
# What an existing submission folder may hold; anything else makes write_submission refuse to replace it.
README = "README.md"  # the repository's submission/README.md: kept across rewrites, never zipped
_SUBMISSION_NAMES = {CLASSIFICATION_FILE, SEGMENTATION_DIR, ".ipynb_checkpoints", README}


class SubmissionError(ValueError):
    """A submission folder breaks the format; `problems` lists every problem found."""

    def __init__(self, folder: str | os.PathLike, problems: list[str]):
        self.problems = list(problems)
        shown = self.problems[:50]
        more = f"\n  ... and {len(self.problems) - 50} more" if len(self.problems) > 50 else ""
        super().__init__(f"{folder}: invalid submission, {len(self.problems)} problem(s):\n  "
                         + "\n  ".join(shown) + more)


def _workers() -> int:
    return max(2, min(8, os.cpu_count() or 1))


def _test_images(test_dir: Path) -> dict[str, Path]:
    """Test image file name -> path, for every image file in the flat test folder."""
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir}: test image folder not found")
    images = {p.name: p for p in sorted(test_dir.iterdir())
              if p.is_file() and is_image_file(p)}
    if not images:
        raise FileNotFoundError(f"{test_dir}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) inside")
    return images


def _check_mask(path: Path, rel: str, image_path: Path, num_classes: int) -> list[str]:
    """Problems of one predicted mask PNG (format, mode, size, ids)."""
    problems = []
    try:
        height, width = image_size(image_path)
    except (OSError, ValueError) as e:
        return [f"{image_path}: test image unreadable, cannot check {rel} ({e})"]
    try:
        with Image.open(path) as im:
            if im.format != "PNG":
                return [f"{rel}: is a {im.format} file, not a PNG; save the mask as PNG (lossless)"]
            if im.mode != "RGB":
                return [f"{rel}: PNG mode {im.mode}, must be RGB with id = R + G*256"]
            if im.size != (width, height):
                problems.append(f"{rel}: size {im.size[0]}x{im.size[1]} (WxH), but test image "
                                f"{image_path.name} is {width}x{height}; masks must have the image's size")
            rgb = np.asarray(im)
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for broken files
        return [f"{rel}: unreadable PNG ({type(e).__name__}: {e}); write it again"]
    if rgb[..., 2].any():
        problems.append(f"{rel}: blue channel is not 0; ids are R + G*256 and B must be 0 "
                        "(is this a colour visualisation instead of an id mask?)")
    if num_classes < 256 and not rgb[..., 1].any() and (not rgb.size or rgb[..., 0].max() <= num_classes):
        return problems  # fast path for the usual mask: every id is its red value
    ids = rgb_to_ids(rgb)
    if ids.size and ids.max() > num_classes:
        values = np.unique(ids[ids > num_classes])
        bad = values[values != IGNORE_ID]
        if bad.size:
            problems.append(f"{rel}: holds ids {bad[:10].tolist()}, outside 0..{num_classes} "
                            f"(background 0, class k as k + 1)")
    return problems


def _check_classification(path: Path, images: dict[str, Path], num_classes: int) -> list[str]:
    """Problems of classification.json against the test image names."""
    if not path.is_file():
        return [f"{CLASSIFICATION_FILE}: missing"]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        return [f"{CLASSIFICATION_FILE}: not valid JSON ({e})"]
    if not isinstance(data, list):
        return [f'{CLASSIFICATION_FILE}: must be a JSON list of {{"image": str, "class_id": int}}, '
                f"got a {type(data).__name__}"]
    problems = []
    by_lower = {name.lower(): name for name in images}
    by_stem = {Path(name).stem: name for name in images}
    seen: set[str] = set()
    for n, entry in enumerate(data):
        where = f"{CLASSIFICATION_FILE}: entry {n}"
        if not isinstance(entry, dict) or set(entry) != {"image", "class_id"}:
            problems.append(f'{where} must be {{"image": str, "class_id": int}} exactly, got {entry!r}')
            continue
        name, class_id = entry["image"], entry["class_id"]
        if not isinstance(name, str):
            problems.append(f'{where}: "image" must be a string, got {name!r}')
            continue
        if not isinstance(class_id, int) or isinstance(class_id, bool):
            problems.append(f'{where} ({name}): "class_id" must be an integer, got {class_id!r}')
        elif not 0 <= class_id < num_classes:
            problems.append(f"{where} ({name}): class_id {class_id} outside 0..{num_classes - 1}")
        if name in seen:
            problems.append(f"{where}: duplicate entry for {name}")
        seen.add(name)
        if name not in images:
            close = by_lower.get(name.lower()) or by_stem.get(Path(name).stem)
            hint = f"; the test file is {close!r}, use its exact file name" if close else ""
            problems.append(f"{where}: {name!r} is not a test image{hint}")
    for name in images:
        if name not in seen:
            problems.append(f"{CLASSIFICATION_FILE}: no entry for test image {name}")
    return problems


def validate_submission(folder: str | os.PathLike, test_dir: str | os.PathLike,
                        num_classes: int) -> list[str]:
    """Every problem of a submission folder against the test images (empty list: valid)."""
    folder, test_dir = Path(folder), Path(test_dir)
    if not folder.is_dir():
        return [f"{folder}: submission folder not found"]
    images = _test_images(test_dir)
    problems = []
    stems: dict[str, str] = {}
    for name in images:
        other = stems.setdefault(Path(name).stem, name)
        if other != name:
            problems.append(f"{test_dir}: test images {other} and {name} share the mask name "
                            f"{SEGMENTATION_DIR}/{Path(name).stem}.png")
    problems += _check_classification(folder / CLASSIFICATION_FILE, images, num_classes)

    seg_dir = folder / SEGMENTATION_DIR
    if not seg_dir.is_dir():
        return problems + [f"{SEGMENTATION_DIR}/: folder missing"]
    present = {p.name: p for p in seg_dir.iterdir()}
    by_lower = {name.lower(): name for name in present}
    jobs = []
    for name, image_path in images.items():
        mask_name = f"{Path(name).stem}.png"
        rel = f"{SEGMENTATION_DIR}/{mask_name}"
        if mask_name in present:
            jobs.append((present[mask_name], rel, image_path))
        elif mask_name.lower() in by_lower:
            problems.append(f"{rel}: missing (found {by_lower[mask_name.lower()]}; name it exactly {mask_name})")
        else:
            problems.append(f"{rel}: missing (mask of test image {name})")
    expected = {f"{Path(name).stem}.png" for name in images}
    for name in sorted(set(present) - expected):
        problems.append(f"{SEGMENTATION_DIR}/{name}: not the mask of any test image; remove it")

    with ThreadPoolExecutor(_workers()) as pool:
        results = pool.map(lambda job: _check_mask(*job, num_classes), jobs)
        for found in tqdm(results, total=len(jobs), desc="checking masks", unit="mask", leave=False):
            problems += found
    return problems


def check_submission(folder: str | os.PathLike, test_dir: str | os.PathLike, num_classes: int) -> int:
    """Raise SubmissionError listing every problem; return the number of test images if valid."""
    problems = validate_submission(folder, test_dir, num_classes)
    if problems:
        raise SubmissionError(folder, problems)
    return len(_test_images(Path(test_dir)))


def _entry_fields(entry: Any, num_classes: int | None) -> tuple[str, int, np.ndarray]:
    """Check one (image_file_name, class_id, ids) entry early, with a message naming the image."""
    try:
        name, class_id, ids = entry
    except (TypeError, ValueError):
        raise ValueError(f"submission entry must be (image_file_name, class_id, ids), got {type(entry).__name__}") from None
    if not isinstance(name, (str, os.PathLike)) or Path(name).name != str(name) or not str(name):
        raise ValueError(f"submission entry {name!r}: give the bare test file name, e.g. '00000.JPEG'")
    name = str(name)
    try:
        if isinstance(class_id, (bool, str)) or int(class_id) != class_id:
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{name}: class_id must be an integer, got {class_id!r}") from None
    class_id = int(class_id)
    if hasattr(ids, "detach"):  # torch tensor: convert here, not in the writer threads
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: ids must be an H x W integer array, got {ids.dtype} {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() > MAX_ID):
        raise ValueError(f"{name}: ids must lie in 0..{MAX_ID}, got {ids.min()}..{ids.max()}")
    if num_classes is not None:
        if not 0 <= class_id < num_classes:
            raise ValueError(f"{name}: class_id {class_id} outside 0..{num_classes - 1}")
        bad = (ids > num_classes) & (ids != IGNORE_ID)
        if bad.any():
            raise ValueError(f"{name}: ids {np.unique(ids[bad])[:10].tolist()} outside 0..{num_classes} "
                             "(background 0, class k as k + 1)")
    return name, class_id, ids


@contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """Turn a failed write (disk full, read-only folder, ...) into a WriteError naming the submission."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(folder, exc, "the submission", _ELSEWHERE) from exc


def _write_png(folder: Path, path: Path, ids: np.ndarray) -> None:
    with _writing(folder):
        write_mask(path, ids)


def _write_folder(tmp: Path, entries: Iterable, num_classes: int | None, folder: Path) -> None:
    """Write classification.json and segmentation/*.png into the empty folder `tmp` (to become `folder`)."""
    seg_dir = tmp / SEGMENTATION_DIR
    with _writing(folder):
        seg_dir.mkdir()
    classification: list[dict] = []
    stems: dict[str, str] = {}
    total = len(entries) if hasattr(entries, "__len__") else None
    workers = _workers()
    pool = ThreadPoolExecutor(workers)
    pending: set = set()
    try:
        with tqdm(total=total, desc="writing masks", unit="mask") as bar:
            for entry in entries:
                name, class_id, ids = _entry_fields(entry, num_classes)
                stem = Path(name).stem
                if stem in stems:
                    raise ValueError(f"{name}: duplicate submission entry (mask name clashes with {stems[stem]})")
                stems[stem] = name
                classification.append({"image": name, "class_id": class_id})
                pending.add(pool.submit(_write_png, folder, seg_dir / f"{stem}.png", ids))
                if len(pending) >= 2 * workers:  # bound the masks held in memory
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                    bar.update(len(done))
            for future in list(pending):
                future.result()
                pending.discard(future)
                bar.update(1)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if not classification:
        raise ValueError("write_submission: no entries")
    classification.sort(key=lambda e: e["image"])
    with _writing(folder):
        (tmp / CLASSIFICATION_FILE).write_text(json.dumps(classification, indent=1) + "\n", encoding="utf-8")


def _write_zip(folder: Path, zip_name: str) -> Path:
    """Zip classification.json + segmentation/ of `folder` into folder/zip_name (tmp name + os.replace)."""
    zip_path = folder / zip_name
    tmp_path = folder / (zip_name + ".tmp")
    # PNG data is already compressed: storing it is much faster and barely larger
    with zipfile.ZipFile(tmp_path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.write(folder / CLASSIFICATION_FILE, CLASSIFICATION_FILE, compress_type=zipfile.ZIP_DEFLATED)
        for png in sorted((folder / SEGMENTATION_DIR).iterdir()):
            zf.write(png, f"{SEGMENTATION_DIR}/{png.name}")
    os.replace(tmp_path, zip_path)
    return zip_path


def _recover(folder: Path) -> None:
    """Undo what a writer killed mid-swap left: restore `.name.old-*`, drop dead `.name.tmp-*`."""
    for sibling in folder.parent.glob(f".{folder.name}.tmp-*"):
        pid = sibling.name.rsplit("-", 1)[-1]
        if sibling.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)
    olds = sorted((p for p in folder.parent.glob(f".{folder.name}.old-*") if p.is_dir()),
                  key=lambda p: p.stat().st_mtime)
    if olds and not folder.exists():
        os.rename(olds.pop(), folder)
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)


def write_submission(folder: str | os.PathLike, entries: Iterable, test_dir: str | os.PathLike | None = None,
                     num_classes: int | None = None, zip_name: str = "submission.zip") -> Path:
    """Write a complete submission (folder + zip) replacing any previous one; return the zip path.

    `entries`: (image_file_name, class_id, ids H x W int array) per test image. Everything is written
    to a temporary sibling folder first, validated against `test_dir` when given (which needs
    `num_classes`), zipped, and only then swapped in, so an error at any point leaves the previous
    submission untouched. `folder` must be a folder dedicated to the submission. A failed write (disk
    full, read-only folder) raises helpers.fileops.WriteError naming the folder and the reason; a
    second writer of the same folder waits for the first (`.<folder>.lock` beside it).
    """
    folder = Path(folder).absolute()
    if test_dir is not None and num_classes is None:
        raise ValueError("write_submission: validating against test_dir needs num_classes")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder}: exists and is not a folder")
    with ExitStack() as stack:
        with _writing(folder):
            folder.parent.mkdir(parents=True, exist_ok=True)
            # Two writers of one folder (two runs sharing submission/) take turns: a write takes seconds.
            stack.enter_context(folder_lock(folder.parent, "submission folder", name=f".{folder.name}.lock",
                                            wait_seconds=300))
            _recover(folder)
        if folder.is_dir():
            foreign = sorted(p.name for p in folder.iterdir() if p.name not in _SUBMISSION_NAMES | {zip_name})
            if foreign:
                raise ValueError(f"{folder}: holds files that are not part of a submission ({', '.join(foreign[:5])}); "
                                 "refusing to replace it; choose a folder used only for the submission")
        return _replace(folder, entries, test_dir, num_classes, zip_name)


def _replace(folder: Path, entries: Iterable, test_dir, num_classes: int | None, zip_name: str) -> Path:
    """Write, check and zip the submission in a temporary sibling folder, then swap it in for `folder`."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        with _writing(folder):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        _write_folder(tmp, entries, num_classes, folder)
        if test_dir is not None:
            check_submission(tmp, test_dir, num_classes)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        with _writing(folder):
            _write_zip(tmp, zip_name)
            if (folder / README).is_file():
                shutil.copy2(folder / README, tmp / README)
            if folder.exists():
                os.rename(folder, old)
            try:
                os.rename(tmp, folder)
            except BaseException:
                if old.exists():
                    os.rename(old, folder)
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    return folder / zip_name


def _num_classes_from_root(root: Path) -> int:
    from helpers.data import load_index

    return load_index(root).num_classes


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (0 valid / scored, 1 invalid, 2 usage or data error)."""
    parser = argparse.ArgumentParser(prog="python -m helpers.submission", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    val = sub.add_parser("validate", help="check a submission folder against the test images")
    val.add_argument("folder", type=Path)
    val.add_argument("--test-dir", type=Path, help="test image folder (default: DATA_ROOT/test)")
    group = val.add_mutually_exclusive_group(required=True)
    group.add_argument("--num-classes", type=int)
    group.add_argument("--data-root", type=Path, help="ImageNet-Subset folder; classes from its annotation JSON")
    sco = sub.add_parser("score", help="score a submission folder or zip against a truth folder")
    sco.add_argument("folder", type=Path)
    sco.add_argument("--truth", type=Path, required=True, help="folder with classification.json + segmentation/")
    sco.add_argument("--num-classes", type=int, required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "validate":
            num_classes = args.num_classes
            if args.data_root is not None:
                num_classes = _num_classes_from_root(args.data_root)
            test_dir = args.test_dir or (args.data_root / "test" if args.data_root else None)
            if test_dir is None:
                parser.error("validate: give --test-dir (or --data-root)")
            problems = validate_submission(args.folder, test_dir, num_classes)
            if problems:
                print(f"{args.folder}: INVALID, {len(problems)} problem(s):")
                for problem in problems:
                    print(f"  {problem}")
                return 1
            print(f"OK: {len(_test_images(test_dir))} images")
            return 0
        from helpers.metrics import format_score, score_submission

        result = score_submission(args.folder, args.truth, args.num_classes)
        print(f"accuracy: {result['accuracy']:.4f}")
        print(f"mIoU:     {format_score(result['miou'], 4)}")
        print(f"images: {result['n_images']}, missing classifications: {result['missing_classes']}"
              + (f", missing/unusable masks: {result['missing_masks']}" if result["has_masks"] else ""))
        return 0
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
