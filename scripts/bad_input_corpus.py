"""The bad-input corpus: one small dataset per kind of broken or surprising input, and what the
pipeline does with each (an error naming the file and what to do, skipped and reported, or loaded).

    python scripts/bad_input_corpus.py --out /tmp/corpus                 # generate, check, print the table
    python scripts/bad_input_corpus.py --out /tmp/corpus --end-to-end    # + the headless job on the demo
                                                                         #   with every non-fatal case in it

Each case starts from the same clean dataset (3 classes x 4 labeled images with masks, 4 unlabeled,
3 test) and changes one thing. `check` reads it as a run does: the index, notebook 00's statistics,
and the decoded caches of every split (helpers.pipeline.load_run_data).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import unicodedata
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from helpers import pipeline, stats
from helpers.config import get_config
from helpers.data import ANNOTATIONS, load_index
from helpers.masks import write_mask

CLASSES = ("n01443537", "n01491361", "n01531178")
JSON = ANNOTATIONS


# --------------------------------------------------------------------------- the clean dataset
def _picture(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def make_clean(root: Path, classes: tuple[str, ...] = CLASSES) -> Path:
    """The clean starting point of every case, in the challenge layout (JSON names .jpg, files .JPEG)."""
    entries = []
    for k, wnid in enumerate(classes):
        for d in ("train-semi", "train-semi-segmentation"):
            (root / d / wnid).mkdir(parents=True)
        for i in range(4):
            stem = f"{wnid}_{i}"
            _picture(40, 30, 10 * k + i).save(root / "train-semi" / wnid / f"{stem}.JPEG", "JPEG", quality=90)
            ids = np.zeros((30, 40), dtype=np.int64)
            ids[8:22, 10:30] = k + 1
            ids[7, 10:30] = 1000
            write_mask(root / "train-semi-segmentation" / wnid / f"{stem}.png", ids)
            entries.append({"image": f"{wnid}/{stem}.jpg", "mask": f"{wnid}/{stem}.png", "class_id": k,
                            "segmentation_ids": [k + 1]})
    (root / JSON).write_text(json.dumps(entries), encoding="utf-8")
    for split, names in (("train-unlabeled", [f"u{i}.JPEG" for i in range(4)]),
                         ("test", [f"{i:05d}.JPEG" for i in range(3)])):
        (root / split).mkdir()
        for i, name in enumerate(names):
            _picture(36, 28, 100 + i).save(root / split / name, "JPEG", quality=90)
    return root


# --------------------------------------------------------------------------- defects
LABELED = f"train-semi/{CLASSES[0]}/{CLASSES[0]}_1.JPEG"
MASK = f"train-semi-segmentation/{CLASSES[0]}/{CLASSES[0]}_1.png"


def _empty(rel: str) -> Callable[[Path], None]:
    return lambda root: (root / rel).write_bytes(b"")


def _truncated(rel: str) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        data = (root / rel).read_bytes()
        (root / rel).write_bytes(data[: len(data) // 2])
    return make


def _as(rel: str, fmt: str) -> Callable[[Path], None]:
    """Re-save a file in another format under its .JPEG name (GIF, WEBP, or a 16-bit grayscale PNG)."""
    def make(root: Path) -> None:
        with Image.open(root / rel) as im:
            im.load()
        if fmt == "PNG16":
            gray = np.asarray(im.convert("L")).astype(np.uint16) * 257
            Image.fromarray(gray).save(root / rel, "PNG")
            with Image.open(root / rel) as check:
                assert check.mode.startswith("I"), check.mode
        else:
            im.save(root / rel, fmt)
    return make


def write_bomb(path: Path, side: int = 20_000) -> None:
    """A valid 1-bit PNG of side x side pixels (400 megapixels, above PIL's limit) in ~60 KB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (side + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _resize_mask(root: Path) -> None:
    ids = np.zeros((20, 40), dtype=np.int64)  # the image is 40 x 30
    ids[5:15, 10:30] = 1
    write_mask(root / MASK, ids)


def _mask_colour(colour: tuple[int, int, int]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        with Image.open(root / MASK) as im:
            rgb = np.asarray(im.convert("RGB")).copy()
        rgb[10:14, 12:20] = colour
        Image.fromarray(rgb).save(root / MASK)
    return make


def _entries(change: Callable[[list], list | None]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        entries = json.loads((root / JSON).read_text(encoding="utf-8"))
        new = change(entries)
        (root / JSON).write_text(json.dumps(entries if new is None else new, ensure_ascii=False), encoding="utf-8")
    return make


def _non_ascii(root: Path) -> None:
    """Class folders 'zèbre' (stored decomposed, as a zip made on macOS has it) and '猫', a test file 'テスト'."""
    renames = {CLASSES[1]: "zèbre", CLASSES[2]: "猫"}
    for old, new in renames.items():
        for d in ("train-semi", "train-semi-segmentation"):
            folder = root / d / old
            for f in folder.iterdir():
                f.rename(folder / f.name.replace(old, new))
            folder.rename(root / d / unicodedata.normalize("NFD", new))

    def rename(entries: list) -> None:
        for e in entries:
            for key in ("image", "mask"):
                for old, new in renames.items():
                    e[key] = e[key].replace(old, new)
    _entries(rename)(root)
    (root / "test" / "00002.JPEG").rename(root / "test" / "テスト.JPEG")


def _non_images_in_test(root: Path) -> None:
    (root / "test" / "README.txt").write_text("test images of the challenge\n")
    (root / "test" / "._00000.JPEG").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X")
    (root / "test" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


@dataclass(frozen=True)
class Case:
    """One defect: where, what, the documented outcome and the pattern its report must match."""

    name: str
    split: str
    what: str
    expect: str  # "error": stops with the message; "skipped": left out and reported; "loaded": used as is
    message: str  # regular expression the error or report must match (names the file, says what to do)
    make: Callable[[Path], None]
    file: str = ""  # the file a "loaded" case must find in the caches (relative to the dataset)


CASES = [
    Case("empty-labeled", "train-semi", "zero-byte JPEG", "error",
         r"n01443537_1\.JPEG: the file is empty \(0 bytes\).*replace it with a good copy", _empty(LABELED)),
    Case("empty-unlabeled", "train-unlabeled", "zero-byte JPEG", "skipped",
         r"skipped 1 unreadable files: .*u1\.JPEG \(.*the file is empty", _empty("train-unlabeled/u1.JPEG"),
         "train-unlabeled/u1.JPEG"),
    Case("empty-test", "test", "zero-byte JPEG", "error",
         r"test/00001\.JPEG: the file is empty \(0 bytes\).*replace it with a good copy", _empty("test/00001.JPEG")),
    Case("truncated-labeled", "train-semi", "JPEG cut in half", "loaded",
         r"n01443537_1\.JPEG: image file is truncated .*missing part filled in\. Replace the file if you can",
         _truncated(LABELED), LABELED),
    Case("truncated-unlabeled", "train-unlabeled", "JPEG cut in half", "loaded",
         r"u1\.JPEG: image file is truncated .*Replace the file if you can",
         _truncated("train-unlabeled/u1.JPEG"), "train-unlabeled/u1.JPEG"),
    Case("truncated-test", "test", "JPEG cut in half", "loaded",
         r"00001\.JPEG: image file is truncated .*Replace the file if you can",
         _truncated("test/00001.JPEG"), "test/00001.JPEG"),
    Case("gif-as-jpeg", "train-semi", "GIF named .JPEG", "loaded", r"^$", _as(LABELED, "GIF"), LABELED),
    Case("webp-as-jpeg", "test", "WebP named .JPEG", "loaded", r"^$", _as("test/00001.JPEG", "WEBP"),
         "test/00001.JPEG"),
    Case("png16-as-jpeg", "train-unlabeled", "16-bit grayscale PNG named .JPEG", "loaded", r"^$",
         _as("train-unlabeled/u1.JPEG", "PNG16"), "train-unlabeled/u1.JPEG"),
    Case("bomb-unlabeled", "train-unlabeled", "20000 x 20000 PNG (decompression bomb)", "skipped",
         r"skipped 1 unreadable files: .*u1\.JPEG \(.*refused as a possible decompression bomb",
         lambda root: write_bomb(root / "train-unlabeled/u1.JPEG"), "train-unlabeled/u1.JPEG"),
    Case("bomb-test", "test", "20000 x 20000 PNG (decompression bomb)", "error",
         r"00001\.JPEG: refused as a possible decompression bomb .*MAX_IMAGE_PIXELS = None.*else replace the file",
         lambda root: write_bomb(root / "test/00001.JPEG")),
    Case("mask-size", "train-semi-segmentation", "mask 40 x 20, its image 40 x 30", "error",
         r"n01443537_1\.png: mask is 40x20 \(WxH\) but its image .*n01443537_1\.JPEG is 40x30.*Fix or regenerate "
         r"the mask", _resize_mask),
    Case("mask-other-class", "train-semi-segmentation", "class-0 mask holding class 2's colour (3, 0, 0)", "error",
         r"n01443537_1\.png: the mask holds colours other than background \(0, 0, 0\), its class \(1, 0, 0\) and "
         r"ignore \(232, 3, 0\): \(3, 0, 0\) x 32 px \(class 2\).*fix the mask", _mask_colour((3, 0, 0))),
    Case("mask-stray-colour", "train-semi-segmentation", "mask with a colour of no id, (255, 255, 255)", "error",
         r"n01443537_1\.png: the mask holds colours .*\(255, 255, 255\) x 32 px \(no id of this dataset\).*fix "
         r"the mask .* or remove its entry", _mask_colour((255, 255, 255))),
    Case("json-missing-file", JSON, "entry whose image does not exist", "error",
         r"the image of entry 'n01443537/n01443537_9\.jpg' was not found.*unpacked completely, or remove the entry",
         _entries(lambda e: e + [{**e[0], "image": "n01443537/n01443537_9.jpg"}])),
    Case("json-duplicate", JSON, "the same entry twice", "skipped",
         r"entry 'n01443537/n01443537_1\.jpg' repeats entry 'n01443537/n01443537_1\.jpg' .*used once",
         _entries(lambda e: e + [dict(e[1])])),  # the repeated entry is what is skipped
    Case("json-duplicate-conflict", JSON, "one image listed as two classes", "error",
         r"n01443537_1\.JPEG is listed twice, as class 0 .* and as class 1 .*keep the right one",
         _entries(lambda e: e + [{**e[1], "class_id": 1}])),
    Case("json-class-out-of-range", JSON, "a class numbered 7 (ids 0, 1, 7)", "error",
         r"class ids must be 0\.\.2 for its 3 classes, but entry 'n01531178/n01531178_0\.jpg' has class_id 7 "
         r"and no entry has \[2\]; renumber",
         _entries(lambda e: [{**x, "class_id": 7 if x["class_id"] == 2 else x["class_id"]} for x in e])),
    Case("json-folder-two-ids", JSON, "one class folder holding class ids 0 and 1", "error",
         r"the folder 'n01443537' holds images of 2 class ids .*fix the class_id of the wrong entries",
         _entries(lambda e: e[0].update(class_id=1))),
    Case("non-ascii-names", "train-semi, test", "folders 'zèbre' (Unicode NFD on disk) and '猫', test file "
         "'テスト.JPEG'", "loaded", r"^$", _non_ascii, "test/テスト.JPEG"),
    Case("non-images-in-test", "test", "README.txt, macOS ._00000.JPEG and .DS_Store in test/", "skipped",
         r"test: skipped 3 entries that are not image files \(\.DS_Store, \._00000\.JPEG, README\.txt\)",
         _non_images_in_test, "test/._00000.JPEG"),
]


# --------------------------------------------------------------------------- checking a case
@dataclass
class Outcome:
    """What reading a case's dataset did: "error" (message = the error) or "ok" (message = the reports)."""

    kind: str
    message: str
    loaded: set[str]  # dataset-relative paths of every image in the decoded caches


def check(root: Path, work: Path) -> Outcome:
    """Read `root` as a run does (index, notebook 00's statistics, every split's cache)."""
    cfg = get_config("smoke", prepare_data=False, data_root=root, cache_dir=work / "cache", run_dir=work / "run")
    out = io.StringIO()
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(out):
        warnings.simplefilter("always")
        try:
            index = load_index(root)
            for split in (index.labeled, index.unlabeled, index.test):
                stats.image_sizes(split)
            stats.mask_fractions(index.labeled)
            data = pipeline.load_run_data(cfg, unlabeled=True, test=True, progress=False, index=index)
        except Exception as exc:  # noqa: BLE001 - the outcome to report
            return Outcome("error", f"{type(exc).__name__}: {exc}", set())
    reports = [str(w.message) for w in caught] + [line for line in out.getvalue().splitlines() if line.strip()]
    parts = [data.train, data.val, data.unlabeled, data.test]
    loaded = {Path(f).relative_to(root).as_posix() for part in parts if part is not None for f in part.files}
    interesting = [r for r in reports if not r.startswith("building ")]
    return Outcome("ok", "\n".join(interesting), loaded)


def verdict(case: Case, outcome: Outcome) -> tuple[str, bool]:
    """The observed outcome ("error" / "skipped" / "loaded") and whether it is the documented one."""
    if outcome.kind == "error":
        observed = "error"
    else:
        observed = "loaded" if case.file in outcome.loaded else "skipped"
    matches = re.search(case.message, outcome.message, re.S) is not None
    return observed, observed == case.expect and matches


def run_case(case: Case, folder: Path) -> tuple[Outcome, str, bool]:
    """Generate one case under `folder` and check it."""
    root = make_clean(folder / "ImageNet-Subset")
    case.make(root)
    outcome = check(root, folder / "work")
    return (outcome, *verdict(case, outcome))


def _short(message: str, root: Path) -> str:
    text = message.replace(str(root) + "/", "").replace(str(root), ".").replace("\n", " / ")
    return (text[:260] + " ...") if len(text) > 260 else text


# --------------------------------------------------------------------------- the end-to-end job
def end_to_end(out: Path) -> int:
    """The headless smoke job on a copy of the demo data holding every non-fatal case at once."""
    from helpers.config import demo_dir
    from helpers.demo import ensure_demo

    demo = Path(ensure_demo(demo_dir()))
    root = out / "demo-with-bad-inputs" / "ImageNet-Subset"
    if root.parent.exists():
        shutil.rmtree(root.parent)
    shutil.copytree(demo, root)
    entries = json.loads((root / JSON).read_text())
    first = entries[0]["image"]  # a labeled image and its entry
    labeled = next((root / "train-semi" / Path(first).parent).glob(Path(first).stem + ".*")).relative_to(root)
    unlabeled = sorted(p.relative_to(root).as_posix() for p in (root / "train-unlabeled").iterdir())
    tests = sorted(p.relative_to(root).as_posix() for p in (root / "test").iterdir())
    for make in (_empty(unlabeled[0]), _truncated(unlabeled[1]), _as(unlabeled[2], "PNG16"),
                 lambda r: write_bomb(r / unlabeled[3]), _truncated(labeled.as_posix()),
                 _truncated(tests[1]), _as(tests[2], "WEBP"), _entries(lambda e: e + [dict(e[0])]),
                 _non_images_in_test):
        make(root)
    (root / tests[3]).rename(root / "test" / "テスト.JPEG")
    cmd = [sys.executable, "-m", "helpers", "run", "--preset", "smoke", "--data-root", str(root),
           "--out", str(out / "e2e-run")]
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    code = subprocess.call(cmd)
    print(f"exit code {code} after {time.perf_counter() - start:.0f} s", flush=True)
    if code == 0:
        check_cmd = [sys.executable, "-m", "helpers.submission", "validate", str(out / "e2e-run" / "submission"),
                     "--data-root", str(root)]
        print("$", " ".join(check_cmd), flush=True)
        code = subprocess.call(check_cmd)
    return code


def main(argv: list[str] | None = None) -> int:
    """Generate and check every case; print the README table; optionally run the end-to-end job."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="where the corpus goes (default: a temporary folder)")
    parser.add_argument("--end-to-end", action="store_true", help="also run the headless job on the demo + defects")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="bad-inputs-"))
    print(f"corpus in {out}\n")
    print("| case | where | what | outcome | what the user is told |\n|---|---|---|---|---|")
    failures = 0
    for case in CASES:
        folder = out / case.name
        if folder.exists():
            shutil.rmtree(folder)
        outcome, observed, ok = run_case(case, folder)
        failures += not ok
        told = _short(outcome.message, folder / "ImageNet-Subset") or "(nothing: it just works)"
        mark = "" if ok else f" **expected {case.expect}**"
        print(f"| {case.name} | `{case.split}` | {case.what} | {observed}{mark} | {told} |", flush=True)
    print(f"\n{len(CASES) - failures} of {len(CASES)} cases have their documented outcome")
    if args.end_to_end:
        failures += end_to_end(out) != 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
