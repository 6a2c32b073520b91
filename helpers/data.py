"""The data index: annotation JSON + folders -> labeled, unlabeled and test samples."""
from __future__ import annotations

import json
import os
import random
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_EXTENSIONS

ANNOTATIONS = "train_semi_annotations_with_seg_ids.json"
LABELED_DIR, MASK_DIR, UNLABELED_DIR, TEST_DIR = (
    "train-semi", "train-semi-segmentation", "train-unlabeled", "test")
CLASS_NAMES_FILE = "class_names.json"  # optional {wnid: readable name}; the demo data writes one

# Readable names of the challenge's 50 wnids (CHALLENGE.md); any other wnid is shown as itself.
KNOWN_CLASS_NAMES = dict(zip(
    """n01443537 n01491361 n01531178 n01644373 n02104029 n02119022 n02123597 n02133161 n02165456
    n02281406 n02325366 n02342885 n02396427 n02483362 n02504458 n02510455 n02690373 n02747177 n02783161
    n02814533 n02859443 n02917067 n02992529 n03014705 n03047690 n03095699 n03197337 n03201208 n03445777
    n03452741 n03584829 n03630383 n03775546 n03791053 n03874599 n03891251 n04026417 n04335435 n04380533
    n04404412 n04447861 n04507155 n04522168 n04557648 n04562935 n04612504 n06794110 n07749582 n07831146
    n12998815""".split(),
    """goldfish|tiger shark|goldfinch|tree frog|kuvasz|red fox|siamese cat|american black bear|ladybug|
    sulphur butterfly|wood rabbit|hamster|wild boar|gibbon|african elephant|giant panda|airliner|ashcan|
    ballpoint|beach wagon|boathouse|bullet train|cellular telephone|chest|clog|container ship|
    digital watch|dining table|golf ball|grand piano|iron|lab coat|mixing bowl|motor scooter|padlock|
    park bench|purse|streetcar|table lamp|television|toilet seat|umbrella|vase|water bottle|
    water tower|yawl|street sign|lemon|carbonara|agaric""".replace("\n", "").split("|"),
))


@dataclass(frozen=True)
class Sample:
    """One image: its key (path relative to its split, no extension), files and label (-1: unknown)."""

    key: str
    image: Path
    mask: Path | None = None
    label: int = -1


@dataclass
class DatasetIndex:
    """Every sample of a dataset in the challenge layout, with the class list read from the data."""

    root: Path
    wnids: list[str]
    class_names: list[str]
    labeled: list[Sample]
    unlabeled: list[Sample]
    test: list[Sample]

    @property
    def num_classes(self) -> int:
        """Number of object classes (segment ids 1..num_classes; 0 is background)."""
        return len(self.wnids)

    def summary(self) -> str:
        """One line per split with its count."""
        return (f"{self.root}\n  classes:   {self.num_classes}\n  labeled:   {len(self.labeled)}\n"
                f"  unlabeled: {len(self.unlabeled)}\n  test:      {len(self.test)}")


def _files_by_stem(folder: Path, extensions: frozenset[str] | set[str]) -> dict[str, Path]:
    """Map lower-cased file stems to files in one folder (one listing, not one stat per entry)."""
    if not folder.is_dir():
        return {}
    found = {}
    for entry in os.scandir(folder):
        if entry.is_file() and os.path.splitext(entry.name)[1].lower() in extensions:
            found.setdefault(os.path.splitext(entry.name)[0].lower(), Path(entry.path))
    return found


def _resolve(root: Path, split_dir: str, entry_path: str, listings: dict, extensions, what: str,
             json_file: Path) -> Path:
    """Find the file a JSON entry names by its stem, whatever the case of its extension."""
    rel = Path(entry_path)
    folder = root / split_dir / rel.parent
    if folder not in listings:
        listings[folder] = _files_by_stem(folder, extensions)
    path = listings[folder].get(rel.stem.lower())
    if path is None:
        raise FileNotFoundError(
            f"{json_file}: the {what} of entry {entry_path!r} was not found: no file named "
            f"{rel.stem}.* in {folder}. Check that the data was unpacked completely.")
    return path


def _list_flat(folder: Path, split: str) -> list[Sample]:
    """Every image file of a flat folder, sorted by name; a missing folder gives [] and a warning."""
    if not folder.is_dir():
        warnings.warn(f"{folder} does not exist: the {split} split is empty", stacklevel=3)
        return []
    names = sorted(e.name for e in os.scandir(folder)
                   if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    return [Sample(key=os.path.splitext(name)[0], image=folder / name) for name in names]


def load_index(root: str | os.PathLike) -> DatasetIndex:
    """Read a dataset in the challenge layout; the classes are the sorted folders of train-semi/."""
    root = Path(root)
    json_file = root / ANNOTATIONS
    labeled_dir = root / LABELED_DIR
    if not labeled_dir.is_dir() or not json_file.is_file():
        raise FileNotFoundError(
            f"{root}: not a dataset in the challenge layout (need {LABELED_DIR}/ and {ANNOTATIONS}); "
            "point IMSUB_DATA_ROOT at the folder that holds them")
    wnids = sorted(p.name for p in labeled_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not wnids:
        raise FileNotFoundError(f"{labeled_dir}: no class folders inside")
    try:
        entries = json.loads(json_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_file}: not valid JSON ({e}); re-download the annotations") from None
    if not isinstance(entries, list):
        raise ValueError(f"{json_file}: expected a list of entries, got {type(entries).__name__}")

    listings: dict[Path, dict[str, Path]] = {}
    labeled = []
    for i, entry in enumerate(entries):
        try:
            image_rel, mask_rel, class_id = entry["image"], entry.get("mask"), int(entry["class_id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{json_file}: entry {i} ({entry!r}) lacks 'image' or 'class_id'") from None
        wnid = Path(image_rel).parent.name
        if not 0 <= class_id < len(wnids) or wnids[class_id] != wnid:
            expected = wnids.index(wnid) if wnid in wnids else "none: no such class folder"
            raise ValueError(
                f"{json_file}: entry {image_rel!r} has class_id {class_id}, but its folder {wnid!r} is "
                f"class {expected} in the sorted folder order")
        image = _resolve(root, LABELED_DIR, image_rel, listings, IMAGE_EXTENSIONS, "image", json_file)
        mask = None
        if mask_rel:
            mask = _resolve(root, MASK_DIR, mask_rel, listings, {".png"}, "mask", json_file)
        key = str(Path(image_rel).with_suffix("").as_posix())
        labeled.append(Sample(key=key, image=image, mask=mask, label=class_id))

    names = dict(KNOWN_CLASS_NAMES)
    names_file = root / CLASS_NAMES_FILE
    if names_file.is_file():
        names.update(json.loads(names_file.read_text()))
    return DatasetIndex(
        root=root, wnids=wnids, class_names=[names.get(w, w) for w in wnids], labeled=labeled,
        unlabeled=_list_flat(root / UNLABELED_DIR, "unlabeled"), test=_list_flat(root / TEST_DIR, "test"))


def split_labeled(samples: list[Sample], val_per_class: int = 2, seed: int = 0) -> tuple[list[Sample], list[Sample]]:
    """Stratified train/validation split: `val_per_class` images of every class go to validation."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for s in samples:
        by_class[s.label].append(s)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        group = sorted(by_class[label], key=lambda s: s.key)
        rng.shuffle(group)
        if len(group) <= val_per_class:
            raise ValueError(f"class {label} has {len(group)} labeled images: too few to hold out {val_per_class}")
        val += group[:val_per_class]
        train += group[val_per_class:]
    return train, val
