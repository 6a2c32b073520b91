import json

import numpy as np
import pytest

from helpers.masks import IGNORE_ID, write_mask
from helpers.metrics import SegmentationScore, accuracy, confusion_matrix, miou, score_submission, segmentation_counts


def test_accuracy():
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    assert accuracy(np.array([3]), np.array([3])) == 1.0
    with pytest.raises(ValueError):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_confusion_matrix_rows_true_columns_predicted():
    pred = [0, 2, 1, 1, 0]
    true = [0, 1, 1, 2, 0]
    # true 0: predicted 0 twice; true 1: predicted 2 and 1; true 2: predicted 1
    expected = np.array([[2, 0, 0],
                         [0, 1, 1],
                         [0, 1, 0]])
    np.testing.assert_array_equal(confusion_matrix(pred, true, 3), expected)
    assert confusion_matrix(pred, true, 4).shape == (4, 4)
    with pytest.raises(ValueError):
        confusion_matrix([3], [0], 3)


def test_ignore_pixels_dropped_and_absent_id_counts_as_zero():
    # num_classes = 2 -> ids 0, 1, 2. The ignore pixel (1, 1) is predicted 2: dropped, so id 2 is
    # absent from both prediction and truth.
    true = np.array([[0, 0, 1, 1],
                     [0, IGNORE_ID, 1, 1]])
    pred = np.array([[0, 1, 1, 1],
                     [0, 2, 1, 0]])
    # kept (true, pred): (0,0) (0,1) (1,1) (1,1) (0,0) (1,1) (1,0)
    # id 0: I = 2, P = 3, T = 3 -> 2 / 4 = 0.5
    # id 1: I = 3, P = 4, T = 4 -> 3 / 5 = 0.6
    # id 2: P + T = 0 -> IoU 0, kept in the mean (as the ImageNet-S evaluator does)
    score = SegmentationScore(2)
    score.update(pred, true)
    r = score.result()
    np.testing.assert_allclose(r["iou"], [0.5, 0.6, 0.0])
    assert r["miou"] == pytest.approx(1.1 / 3)
    assert r["miou_present"] == pytest.approx(0.55)
    assert r["pixel_acc"] == pytest.approx(5 / 7)
    # object vs background: truth object pixels 4, predicted object pixels 4, both 3 -> 3 / 5
    assert r["fg_iou"] == pytest.approx(0.6)
    assert r["n_pixels"] == 7 and r["n_images"] == 1
    np.testing.assert_array_equal(score.true_area, [3, 4, 0])
    np.testing.assert_array_equal(score.predicted_area, [3, 4, 0])
    np.testing.assert_array_equal(score.intersection, [2, 3, 0])


def test_wrong_image_class_costs_both_classes():
    # image A (class id 1) right, image B (class id 2) predicted as id 1
    true_a = np.array([[0, 1], [1, 1]])
    true_b = np.array([[0, 2], [2, 2]])
    pred_b = np.array([[0, 1], [1, 1]])
    # id 0: I = 2, P = 2, T = 2 -> 1
    # id 1: I = 3, P = 3 + 3 = 6, T = 3 -> 3 / 6 = 0.5
    # id 2: I = 0, P = 0, T = 3 -> 0
    score = SegmentationScore(2)
    score.update(true_a, true_a)
    score.update(pred_b, true_b)
    np.testing.assert_allclose(score.result()["iou"], [1.0, 0.5, 0.0])
    assert miou([true_a, pred_b], [true_a, true_b], 2) == pytest.approx(0.5)
    assert miou([true_a, true_b], [true_a, true_b], 2) == pytest.approx(1.0)


def test_out_of_range_predicted_ids_are_wrong_pixels():
    true = np.array([[0, 1], [1, 1]])
    # 3 == K (one past the last id) and 7 would alias to valid ids if wrapped or clipped
    pred = np.array([[0, 3], [7, 1]])
    # id 0: I 1, P 1, T 1 -> 1;  id 1: I 1, P 1, T 3 -> 1/3;  id 2: absent -> 0
    score = SegmentationScore(2)
    score.update(pred, true)
    np.testing.assert_allclose(score.result()["iou"], [1.0, 1 / 3, 0.0])
    np.testing.assert_array_equal(score.predicted_area, [1, 1, 0])
    np.testing.assert_array_equal(score.true_area, [1, 3, 0])
    # negative ids and a predicted 1000 (only TRUE 1000 is dropped) are wrong too
    score = SegmentationScore(2)
    score.update(np.array([[IGNORE_ID, -1], [1, 1]]), true)
    # id 0: I 0, P 0, T 1 -> 0;  id 1: I 2, P 2, T 3 -> 2/3
    np.testing.assert_allclose(score.result()["iou"], [0.0, 2 / 3, 0.0])
    assert score.result()["pixel_acc"] == pytest.approx(0.5)


def test_size_mismatch_and_missing_prediction_are_all_wrong():
    true_a = np.array([[0, 1], [1, 1]])
    true_b = np.array([[0, 0], [0, 1]])
    # A right; B predicted with the wrong size (all zeros, which would otherwise be 3 of 4 right)
    # id 0: I 1, P 1, T 1 + 3 = 4 -> 1/4;  id 1: I 3, P 3, T 3 + 1 = 4 -> 3/4;  id 2: 0
    for bad in (np.zeros((3, 2), dtype=np.int32), None):
        score = SegmentationScore(2)
        score.update(true_a, true_a)
        score.update(bad, true_b)
        r = score.result()
        np.testing.assert_allclose(r["iou"], [0.25, 0.75, 0.0])
        assert r["miou"] == pytest.approx(1 / 3)
        assert r["pixel_acc"] == pytest.approx(4 / 8)


def test_counts_are_summed_over_images_not_averaged():
    # num_classes = 1 -> ids 0, 1
    true_a, pred_a = np.array([[1, 1, 1, 1]]), np.array([[1, 1, 1, 1]])
    true_b, pred_b = np.array([[0, 0, 0, 1]]), np.array([[0, 0, 0, 0]])
    # summed: id 0: I 3, P 4, T 3 -> 3/4;  id 1: I 4, P 4, T 5 -> 4/5;  mIoU = 0.775
    # (per-image mean of id 1 would be (1 + 0) / 2 = 0.5; per-image mIoU mean differs as well)
    score = SegmentationScore(1)
    score.update(pred_a, true_a)
    score.update(pred_b, true_b)
    r = score.result()
    np.testing.assert_allclose(r["iou"], [0.75, 0.8])
    assert r["miou"] == pytest.approx(0.775)
    assert r["n_images"] == 2


def test_counts_accept_any_integer_dtype_and_reject_bad_truth():
    true = np.array([[0, 1], [IGNORE_ID, 2]], dtype=np.int32)
    pred = np.array([[0, 1], [5, 2]])
    expected = segmentation_counts(pred, true, 2)
    assert expected.shape == (3, 4) and expected.sum() == 3
    for dt in (np.uint8, np.int16, np.uint16, np.int64):
        np.testing.assert_array_equal(segmentation_counts(pred.astype(dt), true.astype(np.int64), 2), expected)
    with pytest.raises(ValueError, match="outside 0..2"):
        segmentation_counts(pred, np.array([[0, 1], [3, 2]]), 2, source="gt.png")
    with pytest.raises(ValueError, match="integer"):
        segmentation_counts(pred.astype(float), true, 2)


def test_torch_tensors_accepted():
    torch = pytest.importorskip("torch")
    true = torch.tensor([[0, 1], [1, 1]])
    pred = torch.tensor([[0, 1], [1, 0]])
    # id 0: I 1, P 2, T 1 -> 1/2;  id 1: I 2, P 2, T 3 -> 2/3
    assert miou([pred], [true], 1) == pytest.approx((0.5 + 2 / 3) / 2)
    assert accuracy(torch.tensor([1, 2]), torch.tensor([1, 1])) == 0.5


def _write_folder(folder, entries):
    (folder / "segmentation").mkdir(parents=True)
    (folder / "classification.json").write_text(json.dumps(
        [{"image": name, "class_id": cls} for name, cls, _ in entries if cls is not None]))
    for name, _, ids in entries:
        if ids is not None:
            write_mask(folder / "segmentation" / f"{name.split('.')[0]}.png", np.array(ids))


def test_score_submission_hand_computed(tmp_path):
    truth = tmp_path / "truth"
    _write_folder(truth, [("00000.JPEG", 0, [[0, 1], [1, IGNORE_ID]]),
                          ("00001.JPEG", 1, [[2, 2], [0, 0]]),
                          ("00002.JPEG", 1, [[0, 2], [2, 2]])])
    sub = tmp_path / "sub"
    _write_folder(sub, [("00000.JPEG", 0, [[0, 1], [1, 1]]),   # right (ignore pixel predicted 1: dropped)
                        ("00001.JPEG", 0, None),               # wrong class, mask missing
                        ("00002.JPEG", None, [[0, 2], [2, 2]])])  # no class entry, mask right
    # id 0: T 1 + 2 + 1 = 4, P 1 + 0 + 1 = 2, I 2 -> 2 / 4 = 0.5
    # id 1: T 2, P 2, I 2 -> 1
    # id 2: T 2 + 3 = 5, P 3, I 3 -> 3 / 5 = 0.6       mIoU = 2.1 / 3 = 0.7
    r = score_submission(sub, truth, 2)
    assert r["accuracy"] == pytest.approx(1 / 3)
    assert r["miou"] == pytest.approx(0.7)
    np.testing.assert_allclose(r["iou"], [0.5, 1.0, 0.6])
    assert (r["n_images"], r["missing_classes"], r["missing_masks"]) == (3, 1, 1)

    # an unreadable mask and a wrong-size one count as missing as well
    (sub / "segmentation" / "00002.png").write_bytes(b"not a png")
    write_mask(sub / "segmentation" / "00001.png", np.zeros((3, 3), dtype=np.int32))
    r = score_submission(sub, truth, 2)
    # id 0: T 4, P 1, I 1 -> 1/4;  id 1: 1;  id 2: T 5, P 0 -> 0
    np.testing.assert_allclose(r["iou"], [0.25, 1.0, 0.0])
    assert r["missing_masks"] == 2


def test_score_submission_reads_a_zip_and_names_broken_truth(tmp_path):
    import zipfile

    truth = tmp_path / "truth"
    _write_folder(truth, [("a.JPEG", 1, [[0, 2], [2, 2]]), ("b.JPEG", 0, [[1, 1], [0, 0]])])
    zip_path = tmp_path / "s.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.write(truth / "classification.json", "classification.json")
        zf.write(truth / "segmentation" / "a.png", "segmentation/a.png")
        zf.write(truth / "segmentation" / "b.png", "segmentation/b.png")
    r = score_submission(zip_path, truth, 2)
    assert r["accuracy"] == 1.0 and r["miou"] == pytest.approx(1.0)

    (truth / "segmentation" / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match="b.png"):
        score_submission(zip_path, truth, 2)
    with pytest.raises(FileNotFoundError, match="classification.json"):
        score_submission(tmp_path / "truth" / "segmentation", truth, 2)


def test_a_truth_without_masks_scores_accuracy_alone(tmp_path):
    from helpers.metrics import NO_MASKS, format_score

    truth = tmp_path / "truth"
    _write_folder(truth, [("a.JPEG", 1, None), ("b.JPEG", 0, None)])
    (truth / "segmentation").rmdir()  # photos that come with classes only (nette10)
    sub = tmp_path / "sub"
    _write_folder(sub, [("a.JPEG", 1, [[0, 2]]), ("b.JPEG", 1, [[1, 1]])])
    r = score_submission(sub, truth, 2)
    assert r["accuracy"] == 0.5 and not r["has_masks"]
    assert r["miou"] is None and r["fg_iou"] is None and r["iou"] is None  # n/a, never a 0 that reads as a score
    assert format_score(r["miou"]) == NO_MASKS and format_score(0.25) == "0.250"
    assert score_submission(sub, sub, 2)["has_masks"]
