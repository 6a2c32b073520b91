"""The demo dataset: synthetic images in the exact challenge layout, deterministic by seed, with hidden truth.

How one image is drawn (classes, shapes, textures, poses) is in `helpers.demo.render`.

Layout under `out_dir` (see SPEC "Demo data layout"):
    ImageNet-Subset/train-semi/<wnid>/<wnid>_<n>.JPEG, train-semi-segmentation/<wnid>/<wnid>_<n>.png,
        train_semi_annotations_with_seg_ids.json (entries name ".jpg", as the real data does),
        train-unlabeled/u_00000.JPEG ..., test/00000.JPEG ..., class_names.json {wnid: name}
    truth/test/classification.json, truth/test/segmentation/<stem>.png, truth/unlabeled.json
    demo_info.json  (parameters + version; written last: its presence means "complete")
wnids are "n9" + 7 digits of the class index, so sorted order is class_id order.

Masks: RGB PNG, id = R + G*256: background 0, the object k + 1, and a 3-pixel ignore band of
id 1000 along every object boundary (including the edges an occluder cuts).

Quirky files, as in ImageNet (`_quirk_plan`): in each split, a few images are stored as a grayscale
JPEG (mode "L"), a CMYK JPEG, or a PNG under a .JPEG name: of each kind max(1, round(n / 200)) of
the n labeled images and max(1, round(n / 80)) of the unlabeled and of the test images (so the
default has 1 of each labeled, 5 of each unlabeled, 2 of each test; a split of fewer than 3 images
gets fewer kinds). Their masks still match the image size. demo_info.json lists them under "quirks".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from ..fileops import pid_alive
from ..masks import class_to_id, write_mask
from .render import MAX_CLASSES, SHAPES, TEXTURES, class_spec, demo_class_names, demo_wnids, render_example

__all__ = ["DATASET_DIRNAME", "DEMO_VERSION", "FULL_PARAMS", "MARKER", "MAX_CLASSES", "QUIRKS", "SHAPES", "TEXTURES",
           "class_spec", "demo_class_names", "demo_wnids", "ensure_demo", "generate_demo", "main", "render_example"]

DEMO_VERSION = 3
DATASET_DIRNAME = "ImageNet-Subset"
MARKER = "demo_info.json"
FULL_PARAMS = {"num_classes": 50, "per_class": 10, "num_unlabeled": 5000, "num_test": 752}
QUIRKS = ("gray", "cmyk", "png")
_SPLIT_CODES = {"labeled": 0, "unlabeled": 1, "test": 2}


# ----------------------------------------------------------------------------------------------
# writing the dataset


def _save_image(image: Image.Image, path: Path, quirk: str | None) -> None:
    """Save as an RGB JPEG, or as one of ImageNet's oddities (grayscale / CMYK JPEG, PNG bytes)."""
    if quirk is None:
        image.save(path, format="JPEG", quality=90)
    elif quirk == "gray":
        image.convert("L").save(path, format="JPEG", quality=90)
    elif quirk == "cmyk":
        image.convert("CMYK").save(path, format="JPEG", quality=90)
    elif quirk == "png":
        image.save(path, format="PNG", compress_level=1)
    else:
        raise ValueError(f"unknown quirk {quirk!r}")


def _make_one(task: tuple) -> None:
    """Worker: draw image `index` of `split` and write its image (and mask, if any)."""
    seed, split, index, class_id, image_path, mask_path, quirk = task
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    image, ids = render_example(class_id, rng)
    _save_image(image, Path(image_path), quirk)
    if mask_path is not None:
        write_mask(mask_path, ids)


def _quirk_plan(n: int, per_kind: int, rng: np.random.Generator) -> dict[int, str]:
    """Which of n images are stored as quirky files: `per_kind` of each kind, as far as n allows."""
    order = rng.permutation(n)
    kinds = [q for _ in range(per_kind) for q in QUIRKS][:n]
    return {int(i): q for i, q in zip(order, kinds)}


def _resolve_params(num_classes: int, per_class: int, num_unlabeled: int, num_test: int, seed: int,
                    full: bool) -> dict:
    """The effective parameters (full=True overrides the counts), validated."""
    params = dict(num_classes=num_classes, per_class=per_class, num_unlabeled=num_unlabeled,
                  num_test=num_test, seed=seed)
    if full:
        params.update(FULL_PARAMS)
    params = {k: int(v) for k, v in params.items()}
    if not 1 <= params["num_classes"] <= MAX_CLASSES:
        raise ValueError(f"num_classes must lie in 1..{MAX_CLASSES}, got {params['num_classes']}")
    if params["per_class"] < 1 or params["num_unlabeled"] < 0 or params["num_test"] < 0 or params["seed"] < 0:
        raise ValueError(f"per_class must be >= 1 and num_unlabeled, num_test, seed >= 0; got {params}")
    return params


def _read_marker(out_dir: Path) -> dict | None:
    """The marker of a complete demo in out_dir, or None."""
    try:
        return json.loads((out_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path: Path, obj) -> None:
    """Write JSON atomically (tmp file + os.replace)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete leftovers of interrupted runs (their process is gone)."""
    for p in out_dir.parent.glob(f".{out_dir.name}.partial-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _check_replaceable(out_dir: Path) -> None:
    """Refuse to replace a folder that holds anything but a demo dataset."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder; choose another demo output folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in {DATASET_DIRNAME, "truth", MARKER})
    if foreign:
        raise FileExistsError(
            f"{out_dir}: holds {foreign[:5]}, which are not demo data; refusing to replace it. "
            "Choose an empty or new folder for the demo data, or move those files away.")


def generate_demo(out_dir: Path, num_classes: int = 10, per_class: int = 10, num_unlabeled: int = 400,
                  num_test: int = 150, seed: int = 0, full: bool = False, progress: bool = True,
                  workers: int | None = None) -> Path:
    """Generate the demo dataset into out_dir (replacing an old one); returns its ImageNet-Subset root."""
    params = _resolve_params(num_classes, per_class, num_unlabeled, num_test, seed, full)
    out_dir = Path(out_dir).absolute()
    _check_replaceable(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    start = time.perf_counter()

    k, seed = params["num_classes"], params["seed"]
    root, truth = tmp / DATASET_DIRNAME, tmp / "truth"
    wnids = demo_wnids(k)
    for d in ([root / "train-semi" / w for w in wnids] + [root / "train-semi-segmentation" / w for w in wnids]
              + [root / "train-unlabeled", root / "test", truth / "test" / "segmentation"]):
        d.mkdir(parents=True, exist_ok=True)

    tasks, annotations, quirks = [], [], {}
    # Labeled: per class, ImageNet-like random image numbers.
    n_lab = k * params["per_class"]
    lab_quirks = _quirk_plan(n_lab, max(1, round(n_lab / 200)), np.random.default_rng([seed, 20]))
    for c, wnid in enumerate(wnids):
        numbers = np.sort(np.random.default_rng([seed, 30, c]).choice(
            np.arange(1, 60000), params["per_class"], replace=False))
        for j, number in enumerate(numbers):
            stem = f"{wnid}_{int(number)}"
            i = c * params["per_class"] + j
            q = lab_quirks.get(i)
            tasks.append((seed, "labeled", i, c, str(root / "train-semi" / wnid / f"{stem}.JPEG"),
                          str(root / "train-semi-segmentation" / wnid / f"{stem}.png"), q))
            annotations.append({"image": f"{wnid}/{stem}.jpg", "mask": f"{wnid}/{stem}.png", "class_id": c,
                                "segmentation_ids": [class_to_id(c)]})
            if q:
                quirks[f"train-semi/{wnid}/{stem}.JPEG"] = q

    # Unlabeled and test: balanced classes in shuffled order, so neither name nor index tells the class.
    truth_lists = {}
    for split, n in (("unlabeled", params["num_unlabeled"]), ("test", params["num_test"])):
        code = _SPLIT_CODES[split]
        classes = np.random.default_rng([seed, 10 + code]).permutation(np.arange(n) % k)
        plan = _quirk_plan(n, max(1, round(n / 80)), np.random.default_rng([seed, 20 + code]))
        entries = []
        for i, c in enumerate(classes.tolist()):
            name = f"u_{i:05d}.JPEG" if split == "unlabeled" else f"{i:05d}.JPEG"
            folder = root / ("train-unlabeled" if split == "unlabeled" else "test")
            mask = str(truth / "test" / "segmentation" / f"{i:05d}.png") if split == "test" else None
            tasks.append((seed, split, i, c, str(folder / name), mask, plan.get(i)))
            entries.append({"image": name, "class_id": c})
            if i in plan:
                quirks[f"{folder.name}/{name}"] = plan[i]
        truth_lists[split] = entries

    # Processes pay off only for more than a few dozen images.
    n_workers = workers if workers is not None else (min(2, os.cpu_count() or 1) if len(tasks) >= 40 else 1)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tasks), desc="demo data", unit="img", disable=not progress)
    done = 0
    if n_workers > 1:
        try:
            with multiprocessing.get_context().Pool(n_workers) as pool:
                for _ in pool.imap_unordered(_make_one, tasks, chunksize=8):
                    bar.update()
                    done += 1
        except OSError as e:  # no process pool here (e.g. no /dev/shm): draw in this process
            warnings.warn(f"demo data: no worker processes ({e}); generating in one process", stacklevel=2)
            bar.reset()
            done = 0
    if done < len(tasks):
        for task in tasks:
            _make_one(task)
            bar.update()
    bar.close()

    _write_json(root / "train_semi_annotations_with_seg_ids.json", annotations)
    _write_json(root / "class_names.json", dict(zip(wnids, demo_class_names(k))))
    _write_json(truth / "test" / "classification.json", truth_lists["test"])
    _write_json(truth / "unlabeled.json", truth_lists["unlabeled"])
    _write_json(tmp / MARKER, {"version": DEMO_VERSION, "params": params, "quirks": quirks,
                               "classes": {w: dict(zip(("shape", "texture"), class_spec(c)))
                                           for c, w in enumerate(wnids)}})

    # Swap the finished folder in; the old one (if any) is moved aside first, then deleted.
    old = None
    if out_dir.exists():
        _check_replaceable(out_dir)
        old = out_dir.parent / f".{out_dir.name}.partial-old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    if progress:
        print(f"demo data: {len(tasks)} images in {time.perf_counter() - start:.1f} s -> {out_dir / DATASET_DIRNAME}")
    return out_dir / DATASET_DIRNAME


@contextlib.contextmanager
def _generation_lock(out_dir: Path):
    """One process generates a demo folder at a time; the others wait, then find it made (posix; elsewhere no wait)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_demo(out_dir: Path, **params) -> Path:
    """Return the demo's ImageNet-Subset root, generating it only if missing or made with other parameters.

    Safe when several processes ask at once (two notebooks opened on a fresh checkout, parallel test
    workers): one generates, the others wait for it instead of swapping a second copy in under it.
    """
    gen_keys = ("num_classes", "per_class", "num_unlabeled", "num_test", "seed", "full")
    defaults = dict(num_classes=10, per_class=10, num_unlabeled=400, num_test=150, seed=0, full=False)
    unknown = set(params) - set(gen_keys) - {"progress", "workers"}
    if unknown:
        raise TypeError(f"ensure_demo: unknown parameters {sorted(unknown)}")
    wanted = _resolve_params(**{**defaults, **{k: v for k, v in params.items() if k in gen_keys}})
    out_dir = Path(out_dir)

    def made() -> bool:
        marker = _read_marker(out_dir)
        return (marker is not None and marker.get("version") == DEMO_VERSION and marker.get("params") == wanted
                and (out_dir / DATASET_DIRNAME).is_dir())

    if made():
        return (out_dir / DATASET_DIRNAME).absolute()
    with _generation_lock(out_dir):
        if made():  # another process made it while this one waited
            return (out_dir / DATASET_DIRNAME).absolute()
        return generate_demo(out_dir, **{**defaults, **params})


def main(argv: list[str] | None = None) -> None:
    """Command line: python -m helpers.demo --out data/demo [--full] [--seed N] [--classes N] ..."""
    ap = argparse.ArgumentParser(description="Generate the synthetic demo dataset (challenge layout + truth).")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "data" / "demo",
                    help="output folder (default: <repo>/data/demo)")
    ap.add_argument("--full", action="store_true", help="full size: 50 classes x 10, 5000 unlabeled, 752 test")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=10, help=f"number of classes (1..{MAX_CLASSES})")
    ap.add_argument("--per-class", type=int, default=10, help="labeled images per class")
    ap.add_argument("--unlabeled", type=int, default=400)
    ap.add_argument("--test", type=int, default=150)
    ap.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    ap.add_argument("--force", action="store_true", help="regenerate even if the same demo exists")
    args = ap.parse_args(argv)
    kwargs = dict(num_classes=args.classes, per_class=args.per_class, num_unlabeled=args.unlabeled,
                  num_test=args.test, seed=args.seed, full=args.full, workers=args.workers)
    root = generate_demo(args.out, **kwargs) if args.force else ensure_demo(args.out, **kwargs)
    print(root)

