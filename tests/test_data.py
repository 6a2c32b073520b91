import json

import pytest
from PIL import Image

from helpers.data import KNOWN_CLASS_NAMES, load_index, split_labeled
from helpers.masks import write_mask

import numpy as np


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


def test_wrong_class_id_is_reported(tmp_path):
    root = make_dataset(tmp_path)
    path = root / "train_semi_annotations_with_seg_ids.json"
    entries = json.loads(path.read_text())
    entries[0]["class_id"] = 2
    path.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match="class_id 2.*class 0"):
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
