import json

import numpy as np
import pytest
from PIL import Image

from helpers.data import KNOWN_CLASS_NAMES, load_index, split_labeled
from helpers.masks import write_mask


def make_dataset(root, wnids=("n01443537", "n01491361", "n01531178"), per_class=4, ext=".JPEG",
                 unlabeled=3, test=2):
    """A tiny dataset in the challenge layout; the JSON names .jpg files like the real one."""
    entries = []
    for k, wnid in enumerate(sorted(wnids)):
        (root / "train-semi" / wnid).mkdir(parents=True)
        (root / "train-semi-segmentation" / wnid).mkdir(parents=True)
        for i in range(per_class):
            stem = f"{wnid}_{i}"
            Image.new("RGB", (20, 10), (k * 40, 0, 0)).save(root / "train-semi" / wnid / (stem + ext), "JPEG")
            write_mask(root / "train-semi-segmentation" / wnid / (stem + ".png"), np.full((10, 20), k + 1))
            entries.append({"image": f"{wnid}/{stem}.jpg", "mask": f"{wnid}/{stem}.png",
                            "class_id": k, "segmentation_ids": [k + 1]})
    (root / "train_semi_annotations_with_seg_ids.json").write_text(json.dumps(entries))
    for split, n, fmt in (("train-unlabeled", unlabeled, "u{:03d}.JPEG"), ("test", test, "{:05d}.JPEG")):
        if n is None:
            continue
        (root / split).mkdir()
        for i in range(n):
            Image.new("RGB", (8, 8)).save(root / split / fmt.format(i), "JPEG")
    return root


def test_index_resolves_jpg_entries_to_JPEG_files(tmp_path):
    index = load_index(make_dataset(tmp_path))
    assert index.num_classes == 3
    assert len(index.labeled) == 12 and len(index.unlabeled) == 3 and len(index.test) == 2
    s = index.labeled[0]
    assert s.image.suffix == ".JPEG" and s.image.is_file() and s.mask.is_file()
    assert s.key == "n01443537/n01443537_0" and s.label == 0
    assert index.class_names[:2] == ["goldfish", "tiger shark"]
    assert [t.key for t in index.test] == ["00000", "00001"]


def test_extension_case_does_not_matter(tmp_path):
    index = load_index(make_dataset(tmp_path, ext=".jpg"))
    assert index.labeled[0].image.suffix == ".jpg"


def test_class_count_comes_from_the_data(tmp_path):
    wnids = [f"n{9000000 + i:08d}" for i in range(7)]
    index = load_index(make_dataset(tmp_path, wnids=wnids, per_class=3))
    assert index.num_classes == 7
    assert index.class_names == wnids  # unknown wnids are shown as themselves
    (tmp_path / "class_names.json").write_text(json.dumps({wnids[0]: "striped disc"}))
    assert load_index(tmp_path).class_names[0] == "striped disc"


def test_missing_image_error_names_the_entry(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train-semi" / "n01491361" / "n01491361_2.JPEG").unlink()
    with pytest.raises(FileNotFoundError, match=r"n01491361/n01491361_2\.jpg"):
        load_index(root)


def test_missing_mask_error_names_the_entry(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train-semi-segmentation" / "n01531178" / "n01531178_1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"mask of entry 'n01531178/n01531178_1.png'"):
        load_index(root)


def _set_entries(root, change):
    """Rewrite the JSON with change(entries): a new list, or None after changing entries in place."""
    path = root / "train_semi_annotations_with_seg_ids.json"
    entries = json.loads(path.read_text())
    new = change(entries)
    entries = entries if new is None else new
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")


def test_a_folder_holding_two_class_ids_is_an_error(tmp_path):
    root = make_dataset(tmp_path)
    _set_entries(root, lambda entries: entries[0].update(class_id=2))
    with pytest.raises(ValueError, match=r"folder 'n01443537' holds images of 2 class ids .*"
                                         r"class_id 2 in entry 'n01443537/n01443537_0\.jpg'.*fix the class_id"):
        load_index(root)


@pytest.mark.parametrize("ids, bad", [((0, 1, 5), 5), ((1, 2, 3), 3), ((-1, 0, 1), -1)])
def test_class_ids_must_be_0_to_k_minus_1(tmp_path, ids, bad):
    root = make_dataset(tmp_path)
    folder_id = dict(zip(("n01443537", "n01491361", "n01531178"), ids))

    def renumber(entries):
        for e in entries:
            e["class_id"] = folder_id[e["image"].split("/")[0]]

    _set_entries(root, renumber)
    with pytest.raises(ValueError, match=rf"class ids must be 0\.\.2 for its 3 classes, but entry .* has "
                                         rf"class_id {bad}.*renumber"):
        load_index(root)


def test_class_ids_come_from_the_json_not_the_folder_order(tmp_path):
    """The issue's example: mixed-case folders numbered in the JSON's own (case-insensitive) order."""
    folders = {"Abyssinian": 0, "american_bulldog": 1, "Bengal": 2}
    entries = []
    for folder, k in folders.items():
        for d in ("train-semi", "train-semi-segmentation"):
            (tmp_path / d / folder).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (20, 10)).save(tmp_path / "train-semi" / folder / f"{folder}_{i}.jpg", "JPEG")
            write_mask(tmp_path / "train-semi-segmentation" / folder / f"{folder}_{i}.png", np.full((10, 20), k + 1))
            entries.append({"image": f"{folder}/{folder}_{i}.jpg", "mask": f"{folder}/{folder}_{i}.png",
                            "class_id": k, "segmentation_ids": [k + 1]})
    (tmp_path / "train_semi_annotations_with_seg_ids.json").write_text(json.dumps(entries[::-1]))
    (tmp_path / "test").mkdir()
    (tmp_path / "train-unlabeled").mkdir()
    index = load_index(tmp_path)
    assert index.num_classes == 3
    assert index.wnids == ["Abyssinian", "american_bulldog", "Bengal"]
    assert index.class_names == ["Abyssinian", "american_bulldog", "Bengal"]
    assert {s.key.split("/")[0]: s.label for s in index.labeled} == folders


def test_the_real_layout_reads_as_before(tmp_path):
    """wnid folders numbered in sorted order, entries in any order: labels = sorted folder position."""
    root = make_dataset(tmp_path)
    _set_entries(root, lambda entries: entries[::-1])
    index = load_index(root)
    assert index.wnids == ["n01443537", "n01491361", "n01531178"]
    assert index.class_names == ["goldfish", "tiger shark", "goldfinch"]
    assert all(index.wnids[s.label] == s.key.split("/")[0] for s in index.labeled)
    assert [s.key for s in index.labeled][:2] == ["n01531178/n01531178_3", "n01531178/n01531178_2"]


def test_class_id_types(tmp_path):
    root = make_dataset(tmp_path)
    def as_text_and_float(entries):
        for e in entries[:4]:
            e["class_id"] = str(e["class_id"])
        for e in entries[4:8]:
            e["class_id"] = float(e["class_id"])

    _set_entries(root, as_text_and_float)
    assert [s.label for s in load_index(root).labeled] == [0] * 4 + [1] * 4 + [2] * 4
    for bad in (1.5, True, None, "one"):
        _set_entries(root, lambda entries: entries[0].update(class_id=bad))  # noqa: B023 - called at once
        with pytest.raises(ValueError, match=r"entry 'n01443537/n01443537_0\.jpg' has class_id .*whole numbers"):
            load_index(root)


def test_duplicated_entries(tmp_path):
    root = make_dataset(tmp_path)
    _set_entries(root, lambda entries: entries + [dict(entries[1])])
    with pytest.warns(UserWarning, match=r"entry 'n01443537/n01443537_1\.jpg' repeats .*used once"):
        index = load_index(root)
    assert len(index.labeled) == 12 and len({s.image for s in index.labeled}) == 12
    _set_entries(root, lambda entries: entries[-1].update(class_id=1))
    with pytest.raises(ValueError, match=r"n01443537_1\.JPEG is listed twice, as class 0 .* and as class 1"):
        load_index(root)


def test_a_folder_without_entries_is_not_a_class(tmp_path):
    root = make_dataset(tmp_path)
    (root / "train-semi" / "stray").mkdir()
    with pytest.warns(UserWarning, match="1 folders have no entry .*: stray"):
        assert load_index(root).num_classes == 3


def test_non_ascii_names_and_decomposed_unicode_on_disk(tmp_path):
    import unicodedata

    root = make_dataset(tmp_path, wnids=("chat_noir", "zèbre", "猫"))
    for d in ("train-semi", "train-semi-segmentation"):  # as a zip made on macOS stores them
        (root / d / "zèbre").rename(root / d / unicodedata.normalize("NFD", "zèbre"))
    index = load_index(root)
    assert index.class_names == ["chat_noir", "zèbre", "猫"]
    assert [s.label for s in index.labeled if s.key.startswith("zèbre/")] == [1] * 4
    assert all(s.image.is_file() and s.mask.is_file() for s in index.labeled)


def test_non_image_files_in_flat_folders_are_skipped_and_reported(tmp_path):
    root = make_dataset(tmp_path)
    (root / "test" / "README.txt").write_text("not an image")
    (root / "test" / "._00000.JPEG").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    (root / "test" / "extra").mkdir()
    with pytest.warns(UserWarning, match=r"test: skipped 3 entries that are not image files \(\._00000\.JPEG, "
                                         r"README\.txt, extra/\)"):
        index = load_index(root)
    assert [t.key for t in index.test] == ["00000", "00001"]


def test_two_test_images_with_one_stem_are_an_error(tmp_path):
    root = make_dataset(tmp_path)
    Image.new("RGB", (8, 8)).save(root / "test" / "00001.png")
    with pytest.raises(ValueError, match=r"test images 00001\.JPEG and 00001\.png share the name 00001"):
        load_index(root)


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="challenge layout"):
        load_index(tmp_path)


def test_absent_unlabeled_and_test_folders_warn_and_go_on(tmp_path):
    root = make_dataset(tmp_path, unlabeled=None, test=None)
    with pytest.warns(UserWarning) as record:
        index = load_index(root)
    assert any("train-unlabeled" in str(w.message) for w in record)
    assert any("test split is empty" in str(w.message) for w in record)
    assert index.unlabeled == [] and index.test == [] and len(index.labeled) == 12


def test_split_is_stratified_and_repeatable(tmp_path):
    index = load_index(make_dataset(tmp_path, per_class=5))
    train, val = split_labeled(index.labeled, val_per_class=2, seed=3)
    assert len(val) == 6 and len(train) == 9
    assert sorted(s.label for s in val) == [0, 0, 1, 1, 2, 2]
    assert not {s.key for s in train} & {s.key for s in val}
    assert split_labeled(index.labeled, 2, seed=3) == (train, val)
    assert split_labeled(index.labeled, 2, seed=4)[1] != val
    with pytest.raises(ValueError, match="too few"):
        split_labeled(index.labeled, val_per_class=5)


def test_known_names_cover_the_challenge_classes():
    assert len(KNOWN_CLASS_NAMES) == 50
    assert KNOWN_CLASS_NAMES["n12998815"] == "agaric"
