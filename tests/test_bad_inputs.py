"""The bad-input corpus (scripts/bad_input_corpus.py): every case has its documented outcome, an
error naming the file and what to do, or the file skipped and reported, or loaded as it is."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bad_input_corpus.py"
spec = importlib.util.spec_from_file_location("bad_input_corpus", SCRIPT)
corpus = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = corpus  # dataclasses look their module up there
spec.loader.exec_module(corpus)


@pytest.mark.parametrize("case", corpus.CASES, ids=[c.name for c in corpus.CASES])
def test_documented_outcome(case, tmp_path):
    outcome, observed, ok = corpus.run_case(case, tmp_path)
    assert observed == case.expect, outcome.message
    assert ok, f"the report does not match {case.message!r}:\n{outcome.message}"
    if case.expect == "error":
        assert outcome.loaded == set()
    if case.expect == "loaded":  # the file's image is really in the cache, at the cache size
        assert case.file in outcome.loaded


def test_the_clean_dataset_reads_without_a_word(tmp_path):
    root = corpus.make_clean(tmp_path / "ImageNet-Subset")
    outcome = corpus.check(root, tmp_path / "work")
    assert (outcome.kind, outcome.message) == ("ok", "")
    assert len(outcome.loaded) == 12 + 4 + 3


def test_the_bomb_is_a_valid_png_over_the_limit(tmp_path):
    path = tmp_path / "bomb.png"
    corpus.write_bomb(path, side=300)
    with Image.open(path) as im:
        assert im.size == (300, 300) and im.mode == "1"
        assert not np.asarray(im).any()
    corpus.write_bomb(path)
    assert path.stat().st_size < 200_000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
