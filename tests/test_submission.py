import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers.submission as submission
from helpers.masks import IGNORE_ID, write_mask
from helpers.metrics import score_submission
from helpers.submission import SubmissionError, check_submission, main, validate_submission, write_submission

NUM_CLASSES = 3  # ids 0..3
REPO = Path(__file__).resolve().parents[1]
# test file name -> (width, height, how it is stored)
TEST_IMAGES = {"00000.JPEG": (6, 4, "JPEG"), "00001.JPEG": (5, 3, "PNG"), "00002.png": (4, 4, "PNG")}


@pytest.fixture
def test_dir(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    for name, (w, h, fmt) in TEST_IMAGES.items():
        Image.new("RGB", (w, h), (120, 30, 60)).save(folder / name, format=fmt)
    (folder / "notes.txt").write_text("not an image")  # ignored: not an image extension
    (folder / "._00000.JPEG").write_bytes(b"\x00\x05\x16\x07")  # ignored: a macOS resource fork
    return folder


def good_entries():
    """One entry per test image; together the masks hold every id 0..3 (so a perfect score is 1.0)."""
    entries = []
    for n, (name, (w, h, _)) in enumerate(TEST_IMAGES.items()):
        ids = np.zeros((h, w), dtype=np.int64)
        ids[1:, 1:3] = n + 1
        entries.append((name, n, ids))
    return entries


@pytest.fixture
def good_sub(tmp_path, test_dir):
    folder = tmp_path / "sub"
    write_submission(folder, good_entries(), test_dir=test_dir, num_classes=NUM_CLASSES)
    return folder


def snapshot(folder):
    """Relative path -> bytes of every file under `folder`."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder):
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


def problems_of(folder, test_dir):
    problems = validate_submission(folder, test_dir, NUM_CLASSES)
    assert problems, "expected the validator to report a problem"
    return "\n".join(problems)


def test_write_then_validate_zip_and_round_trip(tmp_path, test_dir, good_sub):
    assert validate_submission(good_sub, test_dir, NUM_CLASSES) == []
    assert check_submission(good_sub, test_dir, NUM_CLASSES) == 3
    data = json.loads((good_sub / "classification.json").read_text())
    assert data == [{"image": "00000.JPEG", "class_id": 0}, {"image": "00001.JPEG", "class_id": 1},
                    {"image": "00002.png", "class_id": 2}]
    with zipfile.ZipFile(good_sub / "submission.zip") as zf:
        assert sorted(zf.namelist()) == ["classification.json", "segmentation/00000.png",
                                         "segmentation/00001.png", "segmentation/00002.png"]
        assert zf.read("classification.json") == (good_sub / "classification.json").read_bytes()
    with Image.open(good_sub / "segmentation" / "00001.png") as im:
        assert (im.mode, im.size) == ("RGB", (5, 3))
    # the submission scored against itself as truth is perfect (every id 0..3 occurs)
    r = score_submission(good_sub, good_sub, NUM_CLASSES)
    assert r["accuracy"] == 1.0 and r["miou"] == pytest.approx(1.0) and r["n_images"] == 3
    assert score_submission(good_sub / "submission.zip", good_sub, NUM_CLASSES)["miou"] == pytest.approx(1.0)
    assert leftovers(good_sub) == []


def test_rewrite_replaces_previous_submission(tmp_path, test_dir, good_sub):
    entries = good_entries()
    entries[0] = ("00000.JPEG", 2, entries[0][2])
    zip_path = write_submission(good_sub, entries, test_dir=test_dir, num_classes=NUM_CLASSES)
    assert zip_path == good_sub.absolute() / "submission.zip"
    assert json.loads((good_sub / "classification.json").read_text())[0]["class_id"] == 2
    assert leftovers(good_sub) == []


def test_rewrite_keeps_the_folders_readme_out_of_the_zip(test_dir, good_sub):
    (good_sub / "README.md").write_text("# submission/\n")  # as in the repository's submission/ folder
    write_submission(good_sub, good_entries(), test_dir=test_dir, num_classes=NUM_CLASSES)
    assert (good_sub / "README.md").read_text() == "# submission/\n"
    with zipfile.ZipFile(good_sub / "submission.zip") as zf:
        assert "README.md" not in zf.namelist()
    assert validate_submission(good_sub, test_dir, NUM_CLASSES) == []


def test_missing_png(test_dir, good_sub):
    (good_sub / "segmentation" / "00001.png").unlink()
    assert "segmentation/00001.png: missing" in problems_of(good_sub, test_dir)


def test_missing_json_entry(test_dir, good_sub):
    path = good_sub / "classification.json"
    path.write_text(json.dumps(json.loads(path.read_text())[:2]))
    assert "no entry for test image 00002.png" in problems_of(good_sub, test_dir)


def test_wrong_size(test_dir, good_sub):
    write_mask(good_sub / "segmentation" / "00000.png", np.zeros((6, 4), dtype=np.int32))  # transposed
    text = problems_of(good_sub, test_dir)
    assert "segmentation/00000.png: size 4x6" in text and "6x4" in text


def test_bad_ids_but_predicted_ignore_allowed(test_dir, good_sub):
    ids = np.zeros((3, 5), dtype=np.int32)
    ids[0, 0] = IGNORE_ID  # allowed by the format (a wrong pixel when scored)
    write_mask(good_sub / "segmentation" / "00001.png", ids)
    assert validate_submission(good_sub, test_dir, NUM_CLASSES) == []
    ids[1, 1], ids[2, 2] = 4, 999
    write_mask(good_sub / "segmentation" / "00001.png", ids)
    text = problems_of(good_sub, test_dir)
    assert "segmentation/00001.png: holds ids [4, 999]" in text and "1000" not in text
    blue = np.zeros((3, 5, 3), dtype=np.uint8)
    blue[..., 2] = 9
    Image.fromarray(blue).save(good_sub / "segmentation" / "00001.png")
    assert "segmentation/00001.png: blue channel" in problems_of(good_sub, test_dir)


def test_duplicate_entry(test_dir, good_sub):
    path = good_sub / "classification.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data + [{"image": "00001.JPEG", "class_id": 0}]))
    assert "duplicate entry for 00001.JPEG" in problems_of(good_sub, test_dir)


@pytest.mark.parametrize("content, expected", [
    ('{"00000.JPEG": 0}', "must be a JSON list"),
    ("[{not json", "not valid JSON"),
    ('[{"image": "00000.JPEG"}]', "entry 0 must be"),
    ('[{"image": "00000.JPEG", "class_id": 0, "score": 0.9}]', "entry 0 must be"),
    ('[{"image": "00000.JPEG", "class_id": "0"}]', "must be an integer"),
    ('[{"image": "00000.JPEG", "class_id": 1.0}]', "must be an integer"),
    ('[{"image": "00000.JPEG", "class_id": true}]', "must be an integer"),
    ('[{"image": "00000.JPEG", "class_id": 3}]', "class_id 3 outside 0..2"),
    ('[{"image": 0, "class_id": 1}]', '"image" must be a string'),
])
def test_wrong_json_shape(test_dir, good_sub, content, expected):
    (good_sub / "classification.json").write_text(content)
    text = problems_of(good_sub, test_dir)
    assert expected in text and "classification.json" in text


def test_missing_classification_and_segmentation_folder(test_dir, good_sub):
    (good_sub / "classification.json").unlink()
    shutil.rmtree(good_sub / "segmentation")
    text = problems_of(good_sub, test_dir)
    assert "classification.json: missing" in text and "segmentation/: folder missing" in text
    assert validate_submission(good_sub / "nowhere", test_dir, NUM_CLASSES) == [
        f"{good_sub / 'nowhere'}: submission folder not found"]


def test_not_rgb_unreadable_truncated_or_not_png(test_dir, good_sub):
    seg = good_sub / "segmentation"
    Image.new("L", (6, 4)).save(seg / "00000.png")
    (seg / "00001.png").write_bytes(b"garbage, not a PNG")
    text = problems_of(good_sub, test_dir)
    assert "segmentation/00000.png: PNG mode L, must be RGB" in text
    assert "segmentation/00001.png: unreadable PNG" in text
    Image.new("RGB", (4, 4)).save(seg / "00002.png", format="JPEG")
    write_mask(seg / "00000.png", np.zeros((4, 6), dtype=np.int32))
    full = (seg / "00000.png").read_bytes()
    (seg / "00000.png").write_bytes(full[: len(full) // 2])  # truncated
    text = problems_of(good_sub, test_dir)
    assert "segmentation/00002.png: is a JPEG file, not a PNG" in text
    assert "segmentation/00000.png: unreadable PNG" in text


def test_unknown_image_and_extra_mask(test_dir, good_sub):
    path = good_sub / "classification.json"
    data = json.loads(path.read_text())
    data[0]["image"] = "00000.jpg"  # the challenge page's spelling, not the test file's name
    path.write_text(json.dumps(data + [{"image": "00009.JPEG", "class_id": 0}]))
    write_mask(good_sub / "segmentation" / "00009.png", np.zeros((2, 2), dtype=np.int32))
    text = problems_of(good_sub, test_dir)
    assert "'00000.jpg' is not a test image; the test file is '00000.JPEG'" in text
    assert "'00009.JPEG' is not a test image" in text
    assert "segmentation/00009.png: not the mask of any test image" in text
    assert "no entry for test image 00000.JPEG" in text


def test_check_submission_raises_with_every_problem(test_dir, good_sub):
    (good_sub / "segmentation" / "00000.png").unlink()
    (good_sub / "segmentation" / "00002.png").unlink()
    with pytest.raises(SubmissionError) as info:
        check_submission(good_sub, test_dir, NUM_CLASSES)
    assert len(info.value.problems) == 2
    assert "00000.png" in str(info.value) and "00002.png" in str(info.value)


def test_zip_file_is_ignored_by_validator(test_dir, good_sub):
    (good_sub / "submission.zip").unlink()
    assert validate_submission(good_sub, test_dir, NUM_CLASSES) == []


def test_failed_write_leaves_previous_submission_intact(monkeypatch, test_dir, good_sub):
    before = snapshot(good_sub)
    assert "submission.zip" in before
    calls = []
    real_write_mask = submission.write_mask

    def failing_write_mask(path, ids):
        calls.append(path)
        if len(calls) == 3:
            raise RuntimeError("disk full (simulated)")
        real_write_mask(path, ids)

    monkeypatch.setattr(submission, "write_mask", failing_write_mask)
    entries = [(name, 0, np.zeros_like(ids)) for name, _, ids in good_entries()]
    with pytest.raises(RuntimeError, match="simulated"):
        write_submission(good_sub, entries)
    assert len(calls) == 3
    assert snapshot(good_sub) == before
    assert leftovers(good_sub) == []


def test_invalid_new_submission_is_not_swapped_in(test_dir, good_sub):
    before = snapshot(good_sub)
    entries = good_entries()
    entries[1] = ("00001.JPEG", 1, np.zeros((4, 4), dtype=np.int32))  # wrong size
    with pytest.raises(SubmissionError, match="segmentation/00001.png: size 4x4"):
        write_submission(good_sub, entries, test_dir=test_dir, num_classes=NUM_CLASSES)
    with pytest.raises(SubmissionError, match="no entry for test image 00002.png"):
        write_submission(good_sub, good_entries()[:2], test_dir=test_dir, num_classes=NUM_CLASSES)
    assert snapshot(good_sub) == before
    assert leftovers(good_sub) == []


def test_interrupted_swap_is_recovered(tmp_path, test_dir, good_sub):
    # a writer killed between "folder -> .old" and "tmp -> folder" leaves only the .old folder
    before = snapshot(good_sub)
    old = good_sub.with_name(f".{good_sub.name}.old-12345")
    os.rename(good_sub, old)
    dead_tmp = good_sub.with_name(f".{good_sub.name}.tmp-999999999")  # no such process
    dead_tmp.mkdir()
    with pytest.raises(ValueError):
        write_submission(good_sub, [("00000.JPEG", 9, np.zeros((4, 6), dtype=np.int32))],
                         num_classes=NUM_CLASSES)
    assert snapshot(good_sub) == before
    assert leftovers(good_sub) == []


def test_writer_rejects_bad_entries_early(tmp_path):
    folder = tmp_path / "sub"
    ids = np.zeros((2, 2), dtype=np.int32)
    cases = [
        ([("a/00000.JPEG", 0, ids)], "bare test file name"),
        ([("00000.JPEG", 0, ids), ("00000.png", 1, ids)], "duplicate"),
        ([("00000.JPEG", 3, ids)], "class_id 3 outside 0..2"),
        ([("00000.JPEG", "1", ids)], "class_id must be an integer"),
        ([("00000.JPEG", 0, np.full((2, 2), 255))], r"ids \[255\] outside 0..3"),  # a uint8 index map
        ([("00000.JPEG", 0, np.zeros((2, 2, 3), dtype=np.int32))], "H x W integer array"),
        ([("00000.JPEG", 0, -ids - 1)], "ids must lie in"),
        ([], "no entries"),
    ]
    for entries, message in cases:
        with pytest.raises(ValueError, match=message):
            write_submission(folder, entries, num_classes=NUM_CLASSES)
        assert not folder.exists() and leftovers(folder) == []
    with pytest.raises(ValueError, match="needs num_classes"):
        write_submission(folder, [("00000.JPEG", 0, ids)], test_dir=tmp_path)


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="precious.txt"):
        write_submission(folder, [("00000.JPEG", 0, np.zeros((2, 2), dtype=np.int32))])
    assert (folder / "precious.txt").read_text() == "keep me"


def test_torch_ids_accepted(tmp_path):
    torch = pytest.importorskip("torch")
    zip_path = write_submission(tmp_path / "sub", [("x.JPEG", 1, torch.ones(2, 3, dtype=torch.int64))])
    assert zip_path.is_file()
    with Image.open(tmp_path / "sub" / "segmentation" / "x.png") as im:
        assert im.size == (3, 2) and im.getpixel((0, 0)) == (1, 0, 0)


def test_cli_validate_exit_codes(capsys, test_dir, good_sub):
    assert main(["validate", str(good_sub), "--test-dir", str(test_dir), "--num-classes", "3"]) == 0
    assert "OK: 3 images" in capsys.readouterr().out
    # 4 classes: still valid (class ids and mask ids are all in range)
    assert main(["validate", str(good_sub), "--test-dir", str(test_dir), "--num-classes", "4"]) == 0
    capsys.readouterr()
    # 2 classes: class_id 2 and mask id 3 are out of range
    assert main(["validate", str(good_sub), "--test-dir", str(test_dir), "--num-classes", "2"]) == 1
    out = capsys.readouterr().out
    assert "INVALID" in out and "segmentation/00002.png: holds ids [3]" in out
    assert main(["validate", str(good_sub), "--test-dir", str(test_dir / "nowhere"), "--num-classes", "3"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_validate_with_data_root(capsys, tmp_path, test_dir, good_sub):
    root = tmp_path / "ImageNet-Subset"
    (root / "train-unlabeled").mkdir(parents=True)
    entries = []
    for k, wnid in enumerate(["n00000001", "n00000002", "n00000003"]):
        (root / "train-semi" / wnid).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / "train-semi" / wnid / "a.JPEG", format="JPEG")
        entries.append({"image": f"{wnid}/a.jpg", "class_id": k})
    (root / "train_semi_annotations_with_seg_ids.json").write_text(json.dumps(entries))
    shutil.copytree(test_dir, root / "test")
    assert main(["validate", str(good_sub), "--data-root", str(root)]) == 0
    assert "OK: 3 images" in capsys.readouterr().out
    shutil.rmtree(root / "train-semi" / "n00000003")
    (root / "train_semi_annotations_with_seg_ids.json").write_text(json.dumps(entries[:2]))
    assert main(["validate", str(good_sub), "--data-root", str(root)]) == 1  # now only 2 classes


def test_cli_score_as_a_module(tmp_path, good_sub):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = subprocess.run([sys.executable, "-m", "helpers.submission", "score", str(good_sub), "--truth",
                          str(good_sub), "--num-classes", "3"], capture_output=True, text=True, env=env,
                         cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "accuracy: 1.0000" in run.stdout and "mIoU:     1.0000" in run.stdout
    run = subprocess.run([sys.executable, "-m", "helpers.submission", "validate", str(good_sub),
                          "--test-dir", str(tmp_path / "test"), "--num-classes", "2"],
                         capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert run.returncode == 1 and "class_id 2 outside 0..1" in run.stdout
