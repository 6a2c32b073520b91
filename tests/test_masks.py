import numpy as np
import pytest
import torch
from PIL import Image

from helpers.masks import (
    IGNORE_ID,
    IGNORE_INDEX,
    class_to_id,
    id_to_class,
    ids_to_index,
    ids_to_rgb,
    index_to_ids,
    read_label_mask,
    read_mask,
    rgb_to_ids,
    write_mask,
)


def test_ignore_colour_is_232_3_0():
    assert tuple(ids_to_rgb(np.array([[IGNORE_ID]]))[0, 0]) == (232, 3, 0)
    assert rgb_to_ids(np.array([[[232, 3, 0]]], dtype=np.uint8))[0, 0] == 1000


def test_class_id_mapping():
    assert class_to_id(0) == 1 and class_to_id(49) == 50
    assert id_to_class(class_to_id(7)) == 7


@pytest.mark.parametrize("ids", [[0, 1, 50, 255, 256, 1000, 4097, 65535]])
def test_rgb_round_trip_numpy_and_torch(ids):
    a = np.array(ids, dtype=np.int32).reshape(2, 4)
    rgb = ids_to_rgb(a)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3)
    assert (rgb[..., 2] == 0).all()
    np.testing.assert_array_equal(rgb_to_ids(rgb), a)
    t = torch.tensor(a)
    assert torch.equal(rgb_to_ids(ids_to_rgb(t)), t)
    np.testing.assert_array_equal(ids_to_rgb(t).numpy(), rgb)


def test_out_of_range_ids_rejected():
    with pytest.raises(ValueError):
        ids_to_rgb(np.array([[65536]]))
    with pytest.raises(ValueError):
        ids_to_rgb(np.array([[-1]]))


def test_png_round_trip_with_ids_above_255(tmp_path):
    ids = np.array([[0, 3, 1000], [300, 51, 0]], dtype=np.int32)
    write_mask(tmp_path / "m.png", ids)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), ids)
    write_mask(tmp_path / "t.png", torch.tensor(ids))
    np.testing.assert_array_equal(read_mask(tmp_path / "t.png"), ids)


def test_index_map_round_trip_and_ignore():
    ids = np.array([[0, 4, 1000], [4, 0, 1000]])
    index = ids_to_index(ids, num_classes=10)
    assert index.dtype == np.uint8
    np.testing.assert_array_equal(index, [[0, 4, IGNORE_INDEX], [4, 0, IGNORE_INDEX]])
    np.testing.assert_array_equal(index_to_ids(index), ids)
    t = ids_to_index(torch.tensor(ids), num_classes=10)
    assert torch.equal(t, torch.tensor(index))
    assert torch.equal(index_to_ids(t), torch.tensor(ids, dtype=torch.int32))


def test_index_map_rejects_unknown_ids_naming_the_source():
    with pytest.raises(ValueError, match="bad.png.*11"):
        ids_to_index(np.array([[0, 11]]), num_classes=10, source="bad.png")


def test_read_mask_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_mask(tmp_path / "missing.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="junk.png"):
        read_mask(tmp_path / "junk.png")


def _rgb_mask(path, colours):
    rgb = np.zeros((4, len(colours), 3), dtype=np.uint8)
    rgb[:, :] = colours
    Image.fromarray(rgb, "RGB").save(path)
    return path


def test_label_mask_accepts_background_its_class_and_ignore(tmp_path):
    path = _rgb_mask(tmp_path / "ok.png", [(0, 0, 0), (3, 0, 0), (232, 3, 0)])
    index = read_label_mask(path, class_id=2, num_classes=5)
    assert index.dtype == np.uint8 and index[0].tolist() == [0, 3, IGNORE_INDEX]
    assert read_label_mask(path, class_id=-1, num_classes=5)[0].tolist() == [0, 3, IGNORE_INDEX]


@pytest.mark.parametrize("colour, meaning", [
    ((2, 0, 0), r"\(2, 0, 0\) x 4 px \(class 1\)"),  # another class of the dataset
    ((3, 0, 200), r"\(3, 0, 200\) x 4 px \(no id of this dataset\)"),  # a colour picture, not an id map
    ((116, 1, 0), r"\(116, 1, 0\) x 4 px \(no id of this dataset\)"),  # anti-aliased ignore band edge
])
def test_label_mask_with_other_colours_names_file_colours_and_fix(tmp_path, colour, meaning):
    path = _rgb_mask(tmp_path / "n0_1.png", [(0, 0, 0), (3, 0, 0), colour])
    with pytest.raises(ValueError, match=r"n0_1\.png: the mask holds colours other than background \(0, 0, 0\), "
                                         r"its class \(3, 0, 0\) and ignore \(232, 3, 0\): " + meaning
                                         + r".*fix the mask .* or remove its entry"):
        read_label_mask(path, class_id=2, num_classes=5)


def test_label_mask_unreadable_names_the_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match=r"broken\.png: cannot be read as a PNG mask"):
        read_label_mask(path, class_id=0, num_classes=5)
    with pytest.raises(FileNotFoundError, match=r"gone\.png"):
        read_label_mask(tmp_path / "gone.png", class_id=0, num_classes=5)
