"""Tests of the demo dataset generator: layout, masks, truth, determinism, quirks, ensure_demo."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import demo
from helpers.masks import IGNORE_ID, read_mask

SMALL = dict(num_classes=3, per_class=4, num_unlabeled=6, num_test=5)


def _generate(out: Path, seed: int = 0, workers: int = 1) -> Path:
    """The small demo used by most tests."""
    return demo.generate_demo(out, seed=seed, progress=False, workers=workers, **SMALL)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under folder (relative posix path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _near(mask: np.ndarray, r: int) -> np.ndarray:
    """Pixels within r (square distance) of a True pixel of mask."""
    h, w = mask.shape
    padded = np.pad(mask, r)
    out = np.zeros_like(mask)
    for dy in range(2 * r + 1):
        for dx in range(2 * r + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small demo (seed 0); returns the output folder (parent of ImageNet-Subset)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    root = _generate(out)
    assert root == out.absolute() / "ImageNet-Subset"
    return out


def test_layout_and_names(small):
    root = small / "ImageNet-Subset"
    assert sorted(p.name for p in small.iterdir()) == ["ImageNet-Subset", "demo_info.json", "truth"]
    assert not list(small.parent.glob(".demo.partial-*")), "temporary folder left behind"
    wnids = sorted(p.name for p in (root / "train-semi").iterdir())
    assert wnids == demo.demo_wnids(3) and all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    assert sorted(p.name for p in (root / "train-semi-segmentation").iterdir()) == wnids

    entries = json.loads((root / "train_semi_annotations_with_seg_ids.json").read_text())
    assert len(entries) == 3 * 4
    seen_images, seen_masks = set(), set()
    for e in entries:
        assert set(e) == {"image", "mask", "class_id", "segmentation_ids"}
        wnid, name = e["image"].split("/")
        stem = name[:-len(".jpg")]
        assert name.endswith(".jpg") and re.fullmatch(rf"{wnid}_\d+", stem), e
        assert e["mask"] == f"{wnid}/{stem}.png"
        assert e["class_id"] == wnids.index(wnid) and e["segmentation_ids"] == [e["class_id"] + 1]
        assert (root / "train-semi" / wnid / f"{stem}.JPEG").is_file()  # disk says .JPEG
        assert not (root / "train-semi" / wnid / f"{stem}.jpg").exists()
        seen_images.add(f"{wnid}/{stem}.JPEG")
        seen_masks.add(e["mask"])
    assert {p.relative_to(root / "train-semi").as_posix() for p in (root / "train-semi").rglob("*.*")} == seen_images
    assert {p.relative_to(root / "train-semi-segmentation").as_posix()
            for p in (root / "train-semi-segmentation").rglob("*.*")} == seen_masks

    assert sorted(p.name for p in (root / "test").iterdir()) == [f"{i:05d}.JPEG" for i in range(5)]
    unlabeled = sorted(p.name for p in (root / "train-unlabeled").iterdir())
    assert len(unlabeled) == 6 and not any(w in n for n in unlabeled for w in wnids)
    names = json.loads((root / "class_names.json").read_text())
    assert list(names) == wnids and names[wnids[0]] == "striped disc" and len(set(names.values())) == 3


def test_masks_match_images_and_hold_only_allowed_colours(small):
    root = small / "ImageNet-Subset"
    entries = json.loads((root / "train_semi_annotations_with_seg_ids.json").read_text())
    truth = {e["image"]: e["class_id"] for e in json.loads((small / "truth/test/classification.json").read_text())}
    pairs = [(root / "train-semi" / e["image"].replace(".jpg", ".JPEG"), root / "train-semi-segmentation" / e["mask"],
              e["class_id"]) for e in entries]
    pairs += [(root / "test" / name, small / "truth/test/segmentation" / name.replace(".JPEG", ".png"), k)
              for name, k in truth.items()]
    for image, mask, k in pairs:
        with Image.open(mask) as m:
            assert m.mode == "RGB", mask
            colours = {tuple(c) for c in np.asarray(m).reshape(-1, 3).tolist()}
            mask_size = m.size
        assert colours <= {(0, 0, 0), (k + 1, 0, 0), (232, 3, 0)}, (mask, colours)
        assert {(0, 0, 0), (k + 1, 0, 0), (232, 3, 0)} <= colours, f"{mask}: object, background and band expected"
        with Image.open(image) as im:
            assert im.size == mask_size, image
        ids = read_mask(mask)
        band, obj = ids == IGNORE_ID, ids == k + 1
        assert obj.mean() > 0.05 and band.mean() < 0.2 * obj.mean() + 0.05
        # The band lies along the boundary: nearly all its pixels have object and background pixels
        # within 5 px (slivers thinner than the band are all band).
        assert _near(obj, 5)[band].mean() > 0.97 and _near(ids == 0, 5)[band].mean() > 0.97, mask


def test_truth_is_complete(small):
    root, truth = small / "ImageNet-Subset", small / "truth"
    cls = json.loads((truth / "test/classification.json").read_text())
    assert [e["image"] for e in cls] == sorted(p.name for p in (root / "test").iterdir())
    assert all(set(e) == {"image", "class_id"} and 0 <= e["class_id"] < 3 for e in cls)
    assert sorted(p.name for p in (truth / "test/segmentation").iterdir()) == [f"{i:05d}.png" for i in range(5)]
    unl = json.loads((truth / "unlabeled.json").read_text())
    assert sorted(e["image"] for e in unl) == sorted(p.name for p in (root / "train-unlabeled").iterdir())
    assert {e["class_id"] for e in unl} == {0, 1, 2}  # balanced over the classes
    info = json.loads((small / "demo_info.json").read_text())
    assert info["version"] == demo.DEMO_VERSION and info["params"] == {**SMALL, "seed": 0}


def test_deterministic_by_seed_whatever_the_workers(small, tmp_path):
    same = _generate(tmp_path / "same", seed=0, workers=2).parent
    a, b = _files(small), _files(same)
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert not differing, f"same seed gave different bytes: {differing[:5]}"

    other = _files(_generate(tmp_path / "other", seed=1).parent)
    assert other["ImageNet-Subset/train_semi_annotations_with_seg_ids.json"] != \
        a["ImageNet-Subset/train_semi_annotations_with_seg_ids.json"]
    assert other["truth/test/segmentation/00000.png"] != a["truth/test/segmentation/00000.png"]
    assert other["ImageNet-Subset/test/00000.JPEG"] != a["ImageNet-Subset/test/00000.JPEG"]


def test_quirky_files_are_what_they_claim(small):
    root = small / "ImageNet-Subset"
    quirks = json.loads((small / "demo_info.json").read_text())["quirks"]
    for split in ("train-semi", "train-unlabeled", "test"):
        assert {q for f, q in quirks.items() if f.startswith(split + "/")} == {"gray", "cmyk", "png"}, split
    for path in sorted(root.rglob("*.JPEG")):
        rel = path.relative_to(root).as_posix()
        head = path.read_bytes()[:8]
        with Image.open(path) as im:
            kind = quirks.get(rel)
            if kind == "png":
                assert head.startswith(b"\x89PNG") and im.format == "PNG", rel
            else:
                assert head.startswith(b"\xff\xd8") and im.format == "JPEG", rel
                assert im.mode == {"gray": "L", "cmyk": "CMYK", None: "RGB"}[kind], (rel, im.mode)


def test_load_index_reads_the_demo(small):
    from helpers.data import load_index
    from helpers.images import load_image

    index = load_index(small / "ImageNet-Subset")
    assert (index.num_classes, len(index.labeled), len(index.unlabeled), len(index.test)) == (3, 12, 6, 5)
    assert index.class_names[:2] == ["striped disc", "checkered ring"]
    assert all(load_image(s.image).mode == "RGB" for s in index.labeled + index.unlabeled + index.test)


def test_ensure_demo_generates_only_when_needed(tmp_path, monkeypatch):
    out = tmp_path / "d"
    params = dict(num_classes=2, per_class=3, num_unlabeled=3, num_test=3, progress=False)
    root = demo.ensure_demo(out, **params)
    assert (root / "test" / "00002.JPEG").is_file()

    real = demo.generate_demo
    calls = []
    monkeypatch.setattr(demo, "generate_demo", lambda *a, **k: calls.append(k) or real(*a, **k))
    assert demo.ensure_demo(out, **params) == root and calls == []  # same parameters: nothing to do
    (out / "demo_info.json").unlink()  # incomplete (interrupted) -> regenerated
    demo.ensure_demo(out, **params)
    assert len(calls) == 1 and (out / "demo_info.json").is_file()
    demo.ensure_demo(out, **{**params, "num_test": 4})  # other parameters -> regenerated
    assert len(calls) == 2 and (root / "test" / "00003.JPEG").is_file()
    assert json.loads((out / "demo_info.json").read_text())["params"]["num_test"] == 4
    assert not list(tmp_path.glob(".d.partial*"))


def test_two_processes_asking_at_once_generate_the_demo_once(tmp_path):
    """Two notebooks (or test workers) on a fresh checkout: one generates, the other waits and reuses it."""
    import subprocess
    import sys

    code = ("import sys; from helpers.demo import ensure_demo; "
            "ensure_demo(sys.argv[1], num_classes=2, per_class=3, num_unlabeled=30, num_test=30, workers=1)")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "d")], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert sum("demo data: 66 images" in out for out in outputs) == 1, outputs  # generated once
    assert len(list((tmp_path / "d" / "ImageNet-Subset" / "test").iterdir())) == 30
    assert not list(tmp_path.glob(".d.partial*"))


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="notes.txt"):
        demo.generate_demo(out, progress=False, **SMALL)
    assert (out / "notes.txt").read_text() == "keep me"


def test_classes_are_distinct_and_bounded():
    specs = [demo.class_spec(k) for k in range(demo.MAX_CLASSES)]
    assert len(set(specs)) == demo.MAX_CLASSES >= 50
    assert len({shape for shape, _ in specs[:10]}) == 10  # the default 10 classes: one shape each
    assert len(set(demo.demo_class_names(50))) == 50 and demo.demo_wnids(50) == sorted(demo.demo_wnids(50))
    with pytest.raises(ValueError, match="num_classes"):
        demo.generate_demo(Path("unused"), num_classes=demo.MAX_CLASSES + 1, progress=False)


def test_colour_is_not_a_class_cue():
    # The same class drawn with different random streams gets different object colours.
    means = []
    for i in range(6):
        image, ids = demo.render_example(0, np.random.default_rng([123, i]))
        means.append(np.asarray(image)[ids == 1].mean(axis=0))
    assert np.ptp(np.array(means), axis=0).max() > 60


def test_cli(tmp_path, capsys):
    demo.main(["--out", str(tmp_path / "cli"), "--classes", "2", "--per-class", "3", "--unlabeled", "2",
               "--test", "3", "--seed", "5"])
    root = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert root == (tmp_path / "cli" / "ImageNet-Subset").absolute()
    assert json.loads((tmp_path / "cli" / "demo_info.json").read_text())["params"]["seed"] == 5
