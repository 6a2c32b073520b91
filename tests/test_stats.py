"""Tests for helpers.stats: notebook 00's statistics survive unreadable files and report them."""
from __future__ import annotations

import pytest
from PIL import Image

from helpers.data import Sample
from helpers.stats import image_sizes


def test_image_sizes_skip_and_report_unreadable_files(tmp_path):
    good = tmp_path / "good.JPEG"
    Image.new("RGB", (30, 20)).save(good, "JPEG")
    empty = tmp_path / "empty.JPEG"
    empty.write_bytes(b"")
    samples = [Sample("good", good), Sample("empty", empty), Sample("gone", tmp_path / "gone.JPEG")]
    with pytest.warns(UserWarning, match=r"2 of 3 images are unreadable .*empty\.JPEG: the file is empty.*gone\.JPEG"):
        sizes = image_sizes(samples)
    assert sizes.tolist() == [[20, 30]]
