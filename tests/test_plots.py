"""Tests for helpers.plots: the widget browser draws each page into its Image widget."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402

from helpers import plots  # noqa: E402
from helpers.data import load_index  # noqa: E402

from .test_data import make_dataset  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_browse_draws_a_page_per_slider_position(tmp_path):
    index = load_index(make_dataset(tmp_path / "ds"))
    mask = np.zeros((10, 20), dtype=np.int64)
    predictions = {index.labeled[1].key: (0, mask)}
    controls, picture = plots.browse(index.labeled, index.class_names, predictions).children
    previous, slider, following = controls.children
    assert slider.max == len(index.labeled) - 1
    first = bytes(picture.value)
    assert first.startswith(PNG_MAGIC)
    slider.value = 1  # the page with a prediction: three panels, a wider picture
    second = bytes(picture.value)
    assert second.startswith(PNG_MAGIC) and second != first
    following.click()  # "next" moves on one image, "previous" back; both wrap around
    assert slider.value == 2 and bytes(picture.value) not in (first, second)
    previous.click(), previous.click(), previous.click()
    assert slider.value == slider.max
    assert len(matplotlib.pyplot.get_fignums()) == 0, "browse must close the figures it draws"


def test_show_grid_legend_names_the_classes_shown():
    import torch

    images = [np.zeros((8, 8, 3), dtype=np.uint8)] * 2
    second = torch.zeros(8, 8, dtype=torch.uint8)
    second[0, :4], second[4:] = 255, 3
    masks = [np.full((8, 8), 2, dtype=np.uint8), second]
    fig = plots.show_grid(images, masks, class_names=["cat", "dog", "fox", "owl"])
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert labels == ["dog", "fox", "ignore band"]  # ids 2 and 3: classes 1 and 2; no background entry
    colors = plots.palette(61)
    assert len({tuple(c) for c in colors[1:]}) == 60  # 60 distinct class colours before they repeat
    matplotlib.pyplot.close("all")


def test_plot_embedding_colours_points_by_class_and_stars_the_marked():
    fig, ax = matplotlib.pyplot.subplots()
    xy = np.array([[0, 0], [1, 1], [2, 2], [3, 3]], dtype=float)
    plots.plot_embedding(ax, xy, [0, 1, 1, 0], ["cat", "dog"], marked=[False, False, True, True], title="t")
    labels = [c.get_label() for c in ax.collections if not c.get_label().startswith("_")]
    assert labels == ["cat", "dog"]  # one legend entry per class, none for the stars
    sizes = sorted(len(c.get_offsets()) for c in ax.collections)
    assert sizes == [1, 1, 1, 1] and len(ax.collections) == 4
    colors = plots.palette(3)[1:] / 255.0
    np.testing.assert_allclose(ax.collections[0].get_facecolor()[0][:3], colors[0])
    assert ax.get_title() == "t"
    matplotlib.pyplot.close("all")
