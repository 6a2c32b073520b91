"""Tests for helpers.segmentation and helpers.mask_prediction: training (learning, checkpoint, exact resume), encoder transfer,
TTA, masks from predictions, exact original-size resizing, streaming and scoring at the original size."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from helpers.cache import CachedImages
from helpers.checkpoints import save_checkpoint
from helpers.config import Config
from helpers.data import Sample
from helpers.mask_prediction import (
    _prune_probability_channels,
    evaluate_segmentation,
    masks_from_predictions,
    predict_masks_original,
    predict_segmentation,
    resize_to_original,
)
from helpers.masks import IGNORE_ID, write_mask
from helpers.models import build_classifier, model_spec
from helpers.segmentation import fit_segmenter, load_segmenter, new_segmenter, validate_segmenter

from .resume import assert_identical_runs, crash_after_saves

NUM_CLASSES = 2
SIZE = 16
DECODER = (16, 16, 8, 8)  # a small decoder keeps the tests fast; the encoder is the real resnet18
INDEX = SimpleNamespace(num_classes=NUM_CLASSES, class_names=["red thing", "green thing"])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one thread avoids OpenMP sync overhead (3x faster on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(tmp_path, **kw) -> Config:
    values = dict(preset="smoke", image_size=SIZE, batch_size=8, seg_epochs=2, warmup_epochs=0, seg_lr=0.05,
                  weight_decay=5e-4, optimizer="sgd", ema_decay=0.0, grad_clip=5.0, arch="resnet18",
                  small_stem=True, device="cpu", run_dir=Path(tmp_path) / "runs", seed=0, mask_method="pixel",
                  select_best_epoch=True)  # these tests check the best-epoch machinery; the presets keep the last
    values.update(kw)
    return Config(**values)


def _segmenter(cfg: Config, seed: int = 0, **kw):
    torch.manual_seed(seed)
    return new_segmenter(cfg, INDEX, decoder_channels=DECODER, **kw)


def _squares(n: int, seed: int = 0, size: int = SIZE, ignore_row: bool = True) -> CachedImages:
    """Dark noise with one bright square per image; class k is bright in colour channel k."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 50, (n, 3, size, size), generator=gen)
    masks = torch.zeros(n, size, size, dtype=torch.uint8)
    labels = torch.arange(n) % NUM_CLASSES
    for i in range(n):
        side = int(torch.randint(size // 3, size // 2 + 1, (1,), generator=gen))
        y0, x0 = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=gen))
        k = int(labels[i])
        images[i, :, y0:y0 + side, x0:x0 + side] = 60
        images[i, k, y0:y0 + side, x0:x0 + side] = 250
        masks[i, y0:y0 + side, x0:x0 + side] = k + 1
    if ignore_row:
        masks[0, 0, :] = 255  # some ignored pixels
    return CachedImages(images=images.to(torch.uint8), masks=masks, labels=labels.long(),
                        keys=[f"s{seed}_{i}" for i in range(n)], sizes=[(size, size)] * n, files=[""] * n)


class Oracle(nn.Module):
    """Reads the answer off `_squares`-style inputs: bright pixels are the object, the bright channel its class."""

    num_classes = NUM_CLASSES

    def forward(self, x):
        fg = x.amax(dim=1) > 1.0  # normalized: the object's channel is ~2.3, the background below ~-0.9
        cls = x[:, :NUM_CLASSES].argmax(dim=1)
        seg = torch.stack([~fg] + [fg & (cls == k) for k in range(NUM_CLASSES)], dim=1).float() * 20 - 10
        return {"fg": (fg.float() * 20 - 10)[:, None], "seg": seg}


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run shared by several tests: 32 images, batch 8, 5 epochs = 20 steps."""
    tmp = tmp_path_factory.mktemp("seg")
    cfg = _cfg(tmp, seg_epochs=5)
    train, val = _squares(32), _squares(8, seed=1)
    result = fit_segmenter(_segmenter(cfg), train, val, cfg, run_name="segmenter", progress=False)
    return cfg, train, val, result


def test_fit_segmenter_learns_and_checkpoints(trained):
    cfg, _, _, result = trained
    hist = result.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    for h in hist:
        for key in ("train_loss", "train_pixel_acc", "val_loss", "val_miou", "val_fg_iou", "lr", "seconds",
                    "images_per_s", "data_share"):
            assert key in h and math.isfinite(h[key]), key
        assert 0 <= h["val_miou"] <= 1 and 0 <= h["val_fg_iou"] <= 1 and 0 <= h["train_pixel_acc"] <= 1
    assert hist[-1]["train_loss"] < 0.7 * hist[0]["train_loss"]
    assert hist[-1]["train_pixel_acc"] > 0.85  # the squares are easy
    # best epoch by validation mIoU, weights in the checkpoint's "model" entry and in the returned model
    assert result.metric == "val_miou" and math.isnan(result.best_val_acc)
    assert result.best_value == max(h["val_miou"] for h in hist) == hist[result.best_epoch - 1]["val_miou"]
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert result.checkpoint == cfg.run_dir / "segmenter.pt"
    assert ckpt["model_spec"]["kind"] == "unet" and ckpt["model_spec"]["num_classes"] == NUM_CLASSES
    assert ckpt["settings"]["task"] == "segmentation" and ckpt["settings"]["lr"] == cfg.seg_lr
    assert ckpt["best_val_miou"] == result.best_value
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    assert not list(cfg.run_dir.glob("*.tmp"))


def test_load_segmenter_round_trip(trained, tmp_path):
    cfg, _, val, result = trained
    model = load_segmenter(cfg, "segmenter", num_classes=NUM_CLASSES)
    assert not model.training and model.spec["kind"] == "unet"
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(ValueError, match="trained for 2 classes but the data has 5"):
        load_segmenter(cfg, "segmenter", num_classes=5)
    # a classifier checkpoint is refused with a clear message
    cls_cfg = _cfg(tmp_path)
    spec = model_spec("resnet18", NUM_CLASSES, True, SIZE, INDEX.class_names)
    save_checkpoint(cls_cfg.run_dir / "classifier.pt",
                    {"model_spec": spec, "model": build_classifier("resnet18", NUM_CLASSES, True).state_dict()})
    with pytest.raises(ValueError, match="no segmenter"):
        load_segmenter(cls_cfg, "classifier")


def test_resume_gives_identical_continuation(tmp_path, monkeypatch):
    train, val = _squares(16), _squares(4, seed=1)
    straight_cfg = _cfg(tmp_path / "a", seg_epochs=3, ema_decay=0.9)
    straight = fit_segmenter(_segmenter(straight_cfg), train, val, straight_cfg, run_name="r", progress=False)

    crash_cfg = _cfg(tmp_path / "b", seg_epochs=3, ema_decay=0.9)
    crash_after_saves(monkeypatch, lambda: fit_segmenter(_segmenter(crash_cfg), train, val, crash_cfg,
                                                         run_name="r", progress=False))

    resumed = fit_segmenter(_segmenter(crash_cfg, seed=123), train, val, crash_cfg, run_name="r", progress=False)
    assert resumed.resumed_from == 2
    assert_identical_runs(straight, resumed)
    assert [h["val_miou"] for h in straight.history] == [h["val_miou"] for h in resumed.history]

    # other masks are other training data: a new training, the earlier one set aside
    changed = _squares(16)
    changed.masks[3] = 0
    other = fit_segmenter(_segmenter(crash_cfg), changed, val, crash_cfg, run_name="r", progress=False)
    assert other.resumed_from == 0 and len(list((tmp_path / "b" / "runs").glob("r@*.pt"))) == 2


def test_best_epoch_follows_the_shipped_mask_method(tmp_path):
    train, val = _squares(16), _squares(6, seed=1)
    right = torch.nn.functional.one_hot(val.labels, NUM_CLASSES).float() * 0.8 + 0.1
    cfg = _cfg(tmp_path, seg_epochs=4, mask_method="fusion")
    result = fit_segmenter(_segmenter(cfg), train, val, cfg, run_name="fusion", val_class_probs=right,
                           progress=False)
    for h in result.history:
        assert h["val_miou"] == h["val_miou_fusion"]
        for m in ("pixel", "fg+class", "fusion"):
            assert 0 <= h[f"val_miou_{m}"] <= 1, m
    assert result.best_value == max(h["val_miou_fusion"] for h in result.history)
    assert torch.load(result.checkpoint, weights_only=True)["settings"]["mask_method"] == "fusion"
    # another method is another training: not resumed from this one
    other = fit_segmenter(_segmenter(cfg), train, val, cfg, run_name="fusion", val_class_probs=right,
                          method="pixel", progress=False)
    assert other.resumed_from == 0 and other.best_value == max(h["val_miou_pixel"] for h in other.history)
    with pytest.raises(ValueError, match="val_class_probs"):
        fit_segmenter(_segmenter(cfg), train, val, cfg, run_name="x", method="fg+class", progress=False)
    with pytest.raises(ValueError, match="unknown mask method"):
        fit_segmenter(_segmenter(cfg), train, val, cfg, run_name="x", method="best", progress=False)


def test_validation_scores_methods_with_the_classifier_probabilities(tmp_path):
    cfg = _cfg(tmp_path)
    val = _squares(6, seed=3, ignore_row=False)
    right = torch.nn.functional.one_hot(val.labels, NUM_CLASSES).float()
    wrong = 1.0 - right  # every image's class wrong, with full confidence
    good = validate_segmenter(Oracle(), val, cfg, method="fg+class", class_probs=right)
    assert good["val_miou"] == good["val_miou_fg+class"] == pytest.approx(1.0)
    assert good["val_miou_pixel"] == pytest.approx(1.0)
    bad = validate_segmenter(Oracle(), val, cfg, method="fg+class", class_probs=wrong)
    assert bad["val_miou_fg+class"] < 0.5  # the objects get the wrong class
    assert bad["val_miou_pixel"] == pytest.approx(1.0)  # the pixel map ignores the classifier
    # fusion: the classifier's probabilities times the seg head's vote; the oracle's vote is certain
    assert bad["val_miou_fusion"] < 0.5 < good["val_miou_fusion"]
    none = validate_segmenter(Oracle(), val, cfg, method="pixel")
    assert math.isnan(none["val_miou_fg+class"]) and none["val_miou"] == pytest.approx(1.0)


def test_fit_segmenter_rejects_bad_masks(tmp_path):
    cfg = _cfg(tmp_path)
    data = _squares(8)
    no_masks = CachedImages(data.images, None, data.labels, data.keys, data.sizes, data.files)
    with pytest.raises(ValueError, match="carry no masks"):
        fit_segmenter(_segmenter(cfg), no_masks, None, cfg, run_name="x", progress=False)
    with pytest.raises(ValueError, match="new_segmenter"):
        fit_segmenter(nn.Conv2d(3, 3, 1), data, None, cfg, run_name="x", progress=False)
    data.masks[0, 5, 5] = NUM_CLASSES + 1
    with pytest.raises(ValueError, match=r"indices \[3\].*2 classes"):
        fit_segmenter(_segmenter(cfg), data, None, cfg, run_name="x", progress=False)


# ----------------------------------------------------------------------------- encoder transfer
def test_encoder_from_classifier_checkpoint(tmp_path, capsys):
    cfg = _cfg(tmp_path)
    torch.manual_seed(7)
    classifier = build_classifier("resnet18", NUM_CLASSES, small_stem=True)
    with torch.no_grad():  # non-default BN buffers, so that buffers are checked too
        for _name, buf in classifier.named_buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    spec = model_spec("resnet18", NUM_CLASSES, True, SIZE, INDEX.class_names)
    path = save_checkpoint(cfg.run_dir / "classifier_baseline.pt", {"model_spec": spec, "model": classifier.state_dict()})

    for source in (path, "classifier_baseline"):  # a file, or a run name in cfg.run_dir
        seg = _segmenter(cfg, encoder_from=source)
        out = capsys.readouterr().out
        assert "missing: none" in out and "fc.weight" in out and "fc.bias" in out
        enc = seg.encoder.state_dict()
        cls_state = {k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
        assert set(enc) == set(cls_state)
        for k, v in cls_state.items():
            assert torch.equal(enc[k], v), k

    other = build_classifier("resnet18", NUM_CLASSES, small_stem=False)
    save_checkpoint(cfg.run_dir / "big_stem.pt",
                    {"model_spec": model_spec("resnet18", NUM_CLASSES, False, SIZE, INDEX.class_names),
                     "model": other.state_dict()})
    with pytest.raises(ValueError, match="small_stem"):
        _segmenter(cfg, encoder_from="big_stem")


# ----------------------------------------------------------------------------- prediction
def test_predict_segmentation_tta_flips_back(tmp_path):
    cfg = _cfg(tmp_path)
    model = _segmenter(cfg, seed=3).eval()
    data = _squares(5)
    fg, cls = predict_segmentation(model, data, cfg, tta=False, batch_size=2, dtype=torch.float32)
    fg_f, cls_f = predict_segmentation(model, data.images.flip(3), cfg, tta=False, batch_size=3,
                                       dtype=torch.float32)
    fg_t, cls_t = predict_segmentation(model, data, cfg, tta=True, batch_size=2, dtype=torch.float32)
    assert fg.shape == (5, SIZE, SIZE) and cls.shape == (5, NUM_CLASSES + 1, SIZE, SIZE)
    torch.testing.assert_close(cls.sum(1), torch.ones(5, SIZE, SIZE))
    torch.testing.assert_close(fg_t, (fg + fg_f.flip(-1)) / 2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cls_t, (cls + cls_f.flip(-1)) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(fg, fg_f.flip(-1))
    half, _ = predict_segmentation(model, data, cfg)
    assert half.dtype == torch.float16


def _hand_made():
    """2 images of 2 x 4 pixels, 2 classes (K = 3)."""
    fg = torch.tensor([[[0.9, 0.9, 0.1, 0.1], [0.9, 0.9, 0.1, 0.5]],
                       [[0.2, 0.2, 0.2, 0.2], [0.2, 0.2, 0.2, 0.8]]])
    cls = torch.zeros(2, 3, 2, 4)
    # image 0: background right, class 1 (id 2) strongly on the left, one pixel of class 0 (id 1)
    cls[0, 0] = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.1, 0.1, 0.9, 0.5]])
    cls[0, 2] = torch.tensor([[0.85, 0.85, 0.05, 0.05], [0.85, 0.1, 0.05, 0.3]])
    cls[0, 1] = 1 - cls[0, 0] - cls[0, 2]
    # image 1: background except the last pixel, which is mildly class 0 (id 1)
    cls[1, 0] = 0.8
    cls[1, 1] = 0.1
    cls[1, 2] = 0.1
    cls[1, :, 1, 3] = torch.tensor([0.2, 0.48, 0.32])
    return fg, cls


def test_masks_from_predictions_methods():
    fg, cls = _hand_made()
    pixel = masks_from_predictions(fg, cls, None, "pixel")
    assert pixel.dtype == torch.long
    assert pixel.tolist() == [[[2, 2, 0, 0], [2, 1, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 1]]]

    # fg+class: fg head > 0.5 (0.5 itself is background), labelled with the given class
    fgc = masks_from_predictions(fg, cls, torch.tensor([0, 1]), "fg+class")
    assert fgc.tolist() == [[[1, 1, 0, 0], [1, 1, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 2]]]
    # classifier probabilities are accepted: their argmax is the class
    probs = torch.tensor([[0.3, 0.7], [0.6, 0.4]])
    assert masks_from_predictions(fg, cls, probs, "fg+class").tolist() == \
        [[[2, 2, 0, 0], [2, 2, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 1]]]

    # fusion: fg = mean(fg head, 1 - P(bg)) > 0.5; class = argmax classifier prob x fg-weighted pixel vote
    fused_fg = [[[1, 1, 0, 0], [1, 1, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 1]]]
    unsure = torch.tensor([[0.55, 0.45], [0.55, 0.45]])  # the pixels outvote a hesitant classifier...
    out = masks_from_predictions(fg, cls, unsure, "fusion")
    assert out.tolist() == [[[2 * v for v in row] for row in img] for img in fused_fg[:1]] + [fused_fg[1]]
    sure = torch.tensor([[0.99, 0.01], [0.01, 0.99]])  # ...but not a confident one
    out = masks_from_predictions(fg, cls, sure, "fusion")
    assert out.tolist() == [fused_fg[0], [[2 * v for v in row] for row in fused_fg[1]]]
    # no classifier: the vote alone; class indices: their class
    assert masks_from_predictions(fg, cls, None, "fusion")[0].max() == 2
    assert masks_from_predictions(fg, cls, torch.tensor([0, 1]), "fusion").tolist() == \
        [fused_fg[0], [[2 * v for v in row] for row in fused_fg[1]]]

    with pytest.raises(ValueError, match="needs the image classes"):
        masks_from_predictions(fg, cls, None, "fg+class")
    with pytest.raises(ValueError, match="unknown method"):
        masks_from_predictions(fg, cls, None, "argmax")
    with pytest.raises(ValueError, match="0..1"):
        masks_from_predictions(fg, cls, torch.tensor([0, 2]), "fg+class")


@pytest.mark.parametrize("size", [(375, 499), (333, 500), (17, 3), (1, 7), (16, 16)])
def test_resize_to_original_exact_size(size):
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 16, 16, generator=gen)
    out = resize_to_original(scores, size)
    assert tuple(out.shape) == size and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) <= 2
    # a constant map stays constant; labels map the winning channel to its id
    const = torch.tensor([0.2, 0.7, 0.1]).view(3, 1, 1).expand(3, 16, 16).half()
    assert set(resize_to_original(const, size).unique().tolist()) == {1}
    assert set(resize_to_original(const, size, labels=torch.tensor([0, 5, 9])).unique().tolist()) == {5}
    reference = torch.nn.functional.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)
    assert torch.equal(out, reference[0].argmax(0))
    index = torch.full((16, 16), 4, dtype=torch.uint8)
    assert tuple(resize_to_original(index, size).shape) == size
    assert set(resize_to_original(index, size).unique().tolist()) == {4}


def test_resize_to_original_resizes_scores_before_argmax():
    # a fg probability step at columns 2|3 of 8, upsampled x3: the edge lands exactly at column 9
    p = torch.zeros(4, 8)
    p[:, 3:] = 1.0
    scores = torch.stack([1 - p, p])
    out = resize_to_original(scores, (12, 24), labels=torch.tensor([0, 7]))
    expected = torch.zeros(12, 24, dtype=torch.long)
    expected[:, 9:] = 7
    assert torch.equal(out, expected)
    # a soft map: resizing probabilities (not the index map) moves the edge to where p crosses 0.5
    soft = torch.tensor([[0.0, 0.0, 0.4, 0.4, 1.0, 1.0]])
    out = resize_to_original(torch.stack([1 - soft, soft]), (1, 12))
    # upsampled p at the 12 output pixels: 0 0 0 0.1 0.3 0.4 0.4 0.55 0.85 1 1 1
    assert out.tolist() == [[0] * 7 + [1] * 5]
    with pytest.raises(ValueError, match="positive"):
        resize_to_original(scores, (0, 5))


def test_pruned_probability_channels_give_the_same_masks():
    gen = torch.Generator().manual_seed(0)
    for _seed in range(5):
        logits = torch.randn(11, 8, 8, generator=gen)
        logits[:3] += 5  # like a trained model: a few classes compete, the others stay small
        probs = logits.softmax(dim=0)
        labels = torch.arange(11) * 3
        kept, kept_labels = _prune_probability_channels(probs, labels)
        assert 0 < kept.shape[0] < 11  # it does drop classes...
        for size in ((37, 23), (8, 8), (3, 5)):  # ...without changing any pixel
            assert torch.equal(resize_to_original(kept, size, kept_labels), resize_to_original(probs, size, labels))


def test_predict_masks_original_streams_original_sizes(tmp_path):
    cfg = _cfg(tmp_path)
    model = _segmenter(cfg, seed=1).eval()
    data = _squares(4)
    data.sizes = [(375, 499), (17, 3), (1, 7), (40, 33)]
    classes = torch.tensor([0, 1, 1, 0])
    got = list(predict_masks_original(model, data, cfg, classes, "fg+class", batch_size=3))
    assert [k for k, _ in got] == data.keys
    for (_key, ids), size, k in zip(got, data.sizes, classes.tolist()):
        assert ids.shape == size and ids.dtype == np.int32
        assert set(np.unique(ids).tolist()) <= {0, k + 1}
    # "pixel" at the original size equals resizing predict_segmentation's probabilities there
    fg, cls = predict_segmentation(model, data, cfg, dtype=torch.float32)
    for i, (key, ids) in enumerate(predict_masks_original(model, data, cfg, None, "pixel")):
        expected = resize_to_original(cls[i], data.sizes[i]).numpy()
        assert np.array_equal(ids, expected), key
        assert ids.max() <= NUM_CLASSES and IGNORE_ID not in ids


def test_evaluate_segmentation_perfect_prediction(tmp_path):
    cfg = _cfg(tmp_path)
    data = _squares(4, seed=2, ignore_row=False)
    # originals 2x / 3x the cache size: object edges fall on upsampled pixel edges. Bilinear
    # upsampling rounds the squares' corners, so, as in the real masks, object borders are ignored.
    data.sizes = [(32, 32), (32, 48), (48, 32), (48, 48)]
    samples = []
    for i, key in enumerate(data.keys):
        h, w = data.sizes[i]
        ids = data.masks[i].long()  # index k + 1 is id k + 1
        ids = ids.repeat_interleave(h // SIZE, 0).repeat_interleave(w // SIZE, 1).numpy()
        padded = np.pad(ids, 1, mode="edge")
        border = np.zeros(ids.shape, dtype=bool)
        for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
            border |= padded[dy:dy + h, dx:dx + w] != ids
        assert border.any() and not border.all()
        ids[border] = IGNORE_ID  # dropped by the scorer
        path = tmp_path / f"{key}.png"
        write_mask(path, ids.astype(np.int32))
        samples.append(Sample(key=key, image=tmp_path / f"{key}.JPEG", mask=path, label=int(data.labels[i])))
    result = evaluate_segmentation(Oracle(), data, samples, cfg, image_classes=data.labels,
                                   methods=("pixel", "fg+class", "fusion"))
    for method, res in result.items():
        assert res["miou_present"] == pytest.approx(1.0), method
        assert res["miou"] == pytest.approx(1.0), method  # every id occurs here
        assert res["fg_iou"] == pytest.approx(1.0) and res["n_images"] == 4
    wrong = evaluate_segmentation(Oracle(), data, samples, cfg, image_classes=1 - data.labels,
                                  methods=("fg+class",))["fg+class"]
    assert wrong["fg_iou"] == pytest.approx(1.0) and wrong["iou"][1:].max() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="samples and data differ"):
        evaluate_segmentation(Oracle(), data, samples[::-1], cfg, image_classes=data.labels)


# ----------------------------------------------------------------------------- semi-supervised segmentation
def test_paired_views_share_their_geometry():
    from helpers.augment import color_jitter, normalize, paired_views, random_resized_affine, strong_colour

    images = _squares(4).images
    weak, strong = paired_views(images, SIZE, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    x, _ = random_resized_affine(images, None, SIZE, scale=(0.35, 1.0), generator=gen)  # one warp ...
    torch.testing.assert_close(weak, normalize(color_jitter(x, 0.2, 0.2, 0.2, 0.02, generator=gen)))
    torch.testing.assert_close(strong, normalize(strong_colour(x, gen)))  # ... for both views
    assert not torch.allclose(weak, strong)


def test_dense_consistency_loss_by_hand():
    from helpers.segmentation import dense_consistency_loss

    seg_weak = torch.zeros(1, 3, 1, 2)
    seg_weak[0, 2, 0, 0] = 10.0  # pixel (0, 0): sure of class index 2; pixel (0, 1): unsure
    weak = {"seg": seg_weak, "fg": torch.zeros(1, 1, 1, 2)}
    strong = {"seg": torch.zeros(1, 3, 1, 2, requires_grad=True), "fg": torch.zeros(1, 1, 1, 2, requires_grad=True)}
    loss, mask = dense_consistency_loss(weak, strong, threshold=0.9)
    assert mask.tolist() == [[[1.0, 0.0]]]
    # confident pixel: CE of uniform logits = log 3, BCE of logit 0 against "object" = log 2; mean over 2 pixels
    assert loss.item() == pytest.approx((math.log(3) + math.log(2)) / 2, rel=1e-5)
    loss.backward()
    assert strong["seg"].grad[0, :, 0, 1].abs().sum() == 0 and strong["seg"].grad[0, :, 0, 0].abs().sum() > 0


def test_step_loss_adds_the_weighted_dense_consistency(tmp_path):
    """Fails if the unlabeled term leaves the U-Net's objective."""
    from helpers.segmentation import SegmentationTask, dense_consistency_loss, segmentation_loss

    cfg = _cfg(tmp_path, seg_consistency_weight=0.5, seg_consistency_threshold=0.0)
    train = _squares(8)
    task = SegmentationTask(train, None, cfg, NUM_CLASSES, unlabeled=_squares(8, seed=5))
    model = _segmenter(cfg).eval()
    gen = torch.Generator().manual_seed(0)
    x, target = torch.randn(2, 3, SIZE, SIZE, generator=gen), train.masks[:2]
    weak, strong = torch.randn(2, 3, SIZE, SIZE, generator=gen), torch.randn(2, 3, SIZE, SIZE, generator=gen)
    loss, stats = task.step_loss(model, (x, target, (weak, strong)), channels_last=False)
    with torch.no_grad():
        expected_u, _ = dense_consistency_loss(model(weak), model(strong), 0.0)
        expected = segmentation_loss(model(x), target) + 0.5 * expected_u
    assert expected_u > 0
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-4, atol=1e-5)
    assert stats[3] == stats[4] == 2 * SIZE * SIZE  # threshold 0: every pixel is confident


def test_fit_segmenter_with_unlabeled_images(tmp_path):
    cfg = _cfg(tmp_path, seg_epochs=2, seg_consistency_weight=1.0, seg_consistency_threshold=0.5)
    unl = _squares(16, seed=4)
    result = fit_segmenter(_segmenter(cfg), _squares(16), _squares(4, seed=1), cfg, run_name="semi",
                           unlabeled=unl, progress=False)
    settings = torch.load(result.checkpoint, weights_only=True)["settings"]
    assert settings["num_unlabeled"] == 16 and settings["seg_consistency_weight"] == 1.0
    for h in result.history:
        assert 0 <= h["pixel_mask_rate"] <= 1
    off = _cfg(tmp_path, seg_epochs=1)  # weight 0: the unlabeled images are not used
    plain = fit_segmenter(_segmenter(off), _squares(16), None, off, run_name="plain", unlabeled=unl, progress=False)
    assert "num_unlabeled" not in torch.load(plain.checkpoint, weights_only=True)["settings"]
    assert "pixel_mask_rate" not in plain.history[0]
