"""The data index: annotation JSON + folders -> labeled, unlabeled and test samples."""
from __future__ import annotations

import json
import os
import random
import unicodedata
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .images import IMAGE_EXTENSIONS, is_image_file

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


def _nfc(name: str) -> str:
    """Unicode NFC form: a zip made on macOS stores decomposed names (NFD), the JSON composed ones."""
    return unicodedata.normalize("NFC", name)


def _files_by_stem(folder: Path, extensions: frozenset[str] | set[str]) -> dict[str, Path]:
    """Map lower-cased NFC file stems to files in one folder (one listing, not one stat per entry)."""
    if not folder.is_dir():
        return {}
    found = {}
    for entry in os.scandir(folder):
        stem, ext = os.path.splitext(entry.name)
        if entry.is_file() and ext.lower() in extensions and not entry.name.startswith("."):
            found.setdefault(_nfc(stem).lower(), Path(entry.path))
    return found


def _find_folder(base: Path, rel: Path) -> Path:
    """`base / rel`, matching each folder name exactly, else by its Unicode NFC form."""
    folder = base
    for part in rel.parts:
        if (folder / part).is_dir() or not folder.is_dir():
            folder = folder / part
            continue
        matches = [e.name for e in os.scandir(folder) if e.is_dir() and _nfc(e.name) == _nfc(part)]
        folder = folder / (matches[0] if len(matches) == 1 else part)
    return folder


def _resolve(root: Path, split_dir: str, entry_path: str, listings: dict, extensions, what: str,
             json_file: Path) -> Path:
    """Find the file a JSON entry names by its stem, whatever the case of its extension."""
    rel = Path(entry_path)
    key = (split_dir, rel.parent)  # one folder lookup and one listing per folder, not per entry
    if key not in listings:
        listings[key] = _find_folder(root / split_dir, rel.parent)
    folder = listings[key]
    if folder not in listings:
        listings[folder] = _files_by_stem(folder, extensions)
    path = listings[folder].get(_nfc(rel.stem).lower())
    if path is None:
        raise FileNotFoundError(
            f"{json_file}: the {what} of entry {entry_path!r} was not found: no file named "
            f"{rel.stem}.* in {folder}. Check that the data was unpacked completely, or remove the "
            "entry from the JSON.")
    return path


def _list_flat(folder: Path, split: str) -> list[Sample]:
    """Every image file of a flat folder, sorted by name; a missing folder gives [] and a warning.

    Other files (README.txt, macOS `._name` and `.DS_Store` files, sub-folders) are skipped with a
    warning naming them.
    """
    if not folder.is_dir():
        warnings.warn(f"{folder} does not exist: the {split} split is empty", stacklevel=3)
        return []
    names, skipped = [], []
    for e in os.scandir(folder):
        if e.is_file() and is_image_file(e.name):
            names.append(e.name)
        else:
            skipped.append(e.name + ("/" if e.is_dir() else ""))
    if skipped:
        shown = ", ".join(sorted(skipped)[:5]) + (f" and {len(skipped) - 5} more" if len(skipped) > 5 else "")
        warnings.warn(f"{folder}: skipped {len(skipped)} entries that are not image files ({shown}); "
                      f"images need one of the extensions {', '.join(sorted(IMAGE_EXTENSIONS))}",
                      stacklevel=3)
    names.sort()
    if split == "test":
        stems: dict[str, str] = {}
        for name in names:
            other = stems.setdefault(os.path.splitext(name)[0], name)
            if other != name:
                raise ValueError(f"{folder}: test images {other} and {name} share the name "
                                 f"{os.path.splitext(name)[0]}, but the submission holds one mask per "
                                 "name; remove the one that is not a test image")
    return [Sample(key=os.path.splitext(name)[0], image=folder / name) for name in names]


def _class_id(value, where: str, json_file: Path) -> int:
    """An entry's class_id as an int; a float or string must hold a whole number."""
    if isinstance(value, bool):
        value = None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if not isinstance(value, int):
        raise ValueError(f"{json_file}: {where} has class_id {value!r}; class ids are whole numbers 0..K-1")
    return value


def _read_entries(json_file: Path) -> list:
    """The annotation entries (any UTF encoding, whatever the locale)."""
    try:
        entries = json.loads(json_file.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: not valid JSON ({e}); re-download the annotations") from None
    if not isinstance(entries, list):
        raise ValueError(f"{json_file}: expected a list of entries, got {type(entries).__name__}")
    return entries


def _classes(folder_ids: dict[str, dict[int, str]], json_file: Path) -> list[list[str]]:
    """The class folders of each class id 0..K-1; errors for a folder with two ids or ids not 0..K-1."""
    by_id: dict[int, list[str]] = defaultdict(list)
    for folder, ids in sorted(folder_ids.items()):
        if len(ids) > 1 and folder:
            examples = "; ".join(f"class_id {k} in entry {e!r}" for k, e in sorted(ids.items())[:3])
            raise ValueError(
                f"{json_file}: the folder {folder!r} holds images of {len(ids)} class ids ({examples}); "
                "each class folder holds one class: fix the class_id of the wrong entries")
        for k in ids:
            by_id[k].append(folder)
    expected = set(range(len(by_id)))
    if set(by_id) != expected:
        wrong = sorted(set(by_id) - expected)
        entry = folder_ids[by_id[wrong[0]][0]][wrong[0]]
        missing = sorted(expected - set(by_id))
        raise ValueError(
            f"{json_file}: class ids must be 0..{len(by_id) - 1} for its {len(by_id)} classes, but entry "
            f"{entry!r} has class_id {wrong[0]}" + (f" and no entry has {missing[:5]}" if missing else "")
            + "; renumber the classes 0..K-1 (one id per class folder)")
    return [by_id[k] for k in range(len(by_id))]


def load_index(root: str | os.PathLike) -> DatasetIndex:
    """Read a dataset in the challenge layout; each entry's class_id is its label (classes 0..K-1).

    A class is named after its folder (readable names for the challenge's wnids, or class_names.json).
    Errors: a folder holding two class ids, ids that are not 0..K-1, an entry whose file is missing,
    and the same image listed with two classes (listed twice with one class: warned, kept once).
    """
    root = Path(root)
    json_file = root / ANNOTATIONS
    labeled_dir = root / LABELED_DIR
    if not labeled_dir.is_dir() or not json_file.is_file():
        raise FileNotFoundError(
            f"{root}: not a dataset in the challenge layout (need {LABELED_DIR}/ and {ANNOTATIONS}); "
            "point IMSUB_DATA_ROOT at the folder that holds them")
    entries = _read_entries(json_file)

    listings: dict = {}  # folder -> {stem: file}, and (split, folder in the JSON) -> folder on disk
    parsed, folder_ids, seen = [], defaultdict(dict), {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or "class_id" not in entry:
            raise ValueError(f"{json_file}: entry {i} ({entry!r}) lacks 'image' or 'class_id'")
        image_rel, mask_rel = entry["image"], entry.get("mask")
        class_id = _class_id(entry["class_id"], f"entry {image_rel!r}", json_file)
        image = _resolve(root, LABELED_DIR, image_rel, listings, IMAGE_EXTENSIONS, "image", json_file)
        if image in seen:
            first_rel, first_id = seen[image]
            if first_id != class_id:
                raise ValueError(f"{json_file}: {image} is listed twice, as class {first_id} (entry "
                                 f"{first_rel!r}) and as class {class_id} (entry {image_rel!r}); keep the right one")
            warnings.warn(f"{json_file}: entry {image_rel!r} repeats entry {first_rel!r} (the same image "
                          f"{image.name}): used once", stacklevel=2)
            continue
        seen[image] = (image_rel, class_id)
        mask = None
        if mask_rel:
            mask = _resolve(root, MASK_DIR, mask_rel, listings, {".png"}, "mask", json_file)
        parent = _nfc(Path(image_rel).parent.as_posix())
        folder = "" if parent == "." else parent
        folder_ids[folder].setdefault(class_id, image_rel)
        parsed.append(Sample(key=Path(image_rel).with_suffix("").as_posix(), image=image, mask=mask,
                             label=class_id))
    if not parsed:
        raise ValueError(f"{json_file}: no entries; the labeled images are listed there")
    class_folders = _classes(folder_ids, json_file)
    used = {f.split("/")[0] for f in folder_ids}
    unused = sorted(p.name for p in labeled_dir.iterdir()
                    if p.is_dir() and not p.name.startswith(".") and _nfc(p.name) not in used)
    if unused:
        warnings.warn(f"{labeled_dir}: {len(unused)} folders have no entry in {json_file.name} and are not "
                      f"classes: {', '.join(unused[:5])}", stacklevel=2)

    names = dict(KNOWN_CLASS_NAMES)
    names_file = root / CLASS_NAMES_FILE
    if names_file.is_file():
        names.update(json.loads(names_file.read_bytes()))
    named = [[Path(f).name for f in folders if f] for folders in class_folders]
    wnids = ["+".join(folders) or f"class_{k}" for k, folders in enumerate(named)]
    class_names = [" / ".join(names.get(f, f) for f in folders) or wnid for folders, wnid in zip(named, wnids)]
    return DatasetIndex(
        root=root, wnids=wnids, class_names=class_names, labeled=parsed,
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
