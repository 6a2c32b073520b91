"""Tests for helpers.selfsup: the NT-Xent loss, pretraining that learns without labels, exact resume, and the encoder's way into the classifier and the U-Net."""
from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from helpers import pipeline, probes, selfsup
from helpers.cache import CachedImages
from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.config import Config
from helpers.segmentation import new_segmenter

from .resume import assert_identical_runs, crash_after_saves

SIZE = 24
KINDS = 4


class TinyEncoder(nn.Module):
    """conv-BN-ReLU x3, global average pool: a 32-d feature vector."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


def _tiny(seed: int = 0) -> selfsup.SimCLR:
    torch.manual_seed(seed)
    model = selfsup.SimCLR(TinyEncoder(), 32, hidden_dim=64, out_dim=32)
    model.spec = {"arch": "tiny", "num_classes": KINDS, "small_stem": True, "image_size": SIZE,
                  "class_names": [f"k{k}" for k in range(KINDS)], "kind": selfsup.KIND}
    return model


def _patterns(n: int, seed: int, size: int = SIZE) -> CachedImages:
    """Structure learnable without labels: horizontal stripes, vertical stripes, checkers or flat, at random phase and tint.

    Crops, flips, colour jitter, grayscale and blur keep the kind, and the tint (random channel gains)
    is the kind of change colour jitter makes, so SimCLR can learn the kinds while a random network
    mostly sees the tint (the label is stored only to score the kNN monitor).
    """
    g = torch.Generator().manual_seed(seed)
    kinds = torch.arange(n) % KINDS
    r = torch.arange(size).view(size, 1)
    c = torch.arange(size).view(1, size)
    images = []
    for k in kinds.tolist():
        phase = int(torch.randint(0, 6, (1,), generator=g))
        rows, cols = torch.div(r + phase, 3, rounding_mode="floor"), torch.div(c + phase, 3, rounding_mode="floor")
        pattern = [rows % 2 + 0 * c, cols % 2 + 0 * r, (rows + cols) % 2, torch.zeros(size, size)][k].float()
        tint = torch.rand(3, 1, 1, generator=g) * 1.2 + 0.2
        images.append((tint * (40 + 170 * pattern if k < 3 else torch.full((size, size), 125.0))).clamp(0, 255))
    return CachedImages(images=torch.stack(images).to(torch.uint8), masks=None, labels=kinds.long(),
                        keys=[f"p{seed}_{i}" for i in range(n)], sizes=[(size, size)] * n, files=[""] * n)


def _cfg(tmp_path, **kw) -> Config:
    values = dict(preset="smoke", image_size=SIZE, batch_size=16, ssl_batch_size=32, ssl_epochs=2,
                  ssl_lr=3e-3, ssl_temperature=0.2, ssl_min_scale=0.3, warmup_epochs=0, optimizer="adamw",
                  weight_decay=1e-4, grad_clip=5.0, device="cpu", run_dir=tmp_path / "runs", seed=0)
    values.update(kw)
    return Config(**values)


# ----------------------------------------------------------------------------- the loss
def test_nt_xent_matches_the_formula_written_out():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    t = 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    terms = []
    for i in range(10):
        partner = (i + 5) % 10
        others = [j for j in range(10) if j != i]
        denominator = sum(math.exp(float(z[i] @ z[j]) / t) for j in others)
        terms.append(-math.log(math.exp(float(z[i] @ z[partner]) / t) / denominator))
    assert selfsup.nt_xent_loss(z1, z2, t).item() == pytest.approx(sum(terms) / 10, rel=1e-5)


def test_nt_xent_rewards_views_that_find_their_partner():
    z = torch.eye(6)  # six orthogonal directions
    matched = selfsup.nt_xent_loss(z, z.clone(), 0.1)
    shuffled = selfsup.nt_xent_loss(z, z.roll(1, 0), 0.1)
    assert matched.item() < 0.01 < math.log(11) < shuffled.item()
    assert int(selfsup.partner_accuracy(z, z)) == 12 and int(selfsup.partner_accuracy(z, z.roll(1, 0))) == 0
    z1 = torch.randn(4, 8, requires_grad=True)
    selfsup.nt_xent_loss(z1, torch.randn(4, 8), 0.2).backward()
    assert torch.isfinite(z1.grad).all() and z1.grad.abs().sum() > 0


def test_projection_head_and_model_shapes():
    head = selfsup.projection_head(32, 64, 16)
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert head(torch.randn(5, 32)).shape == (5, 16)
    assert _tiny()(torch.randn(3, 3, SIZE, SIZE)).shape == (3, 32)


# ----------------------------------------------------------------------------- training
def test_pretraining_learns_the_structure_without_labels(tmp_path):
    train, val = _patterns(96, seed=1), _patterns(32, seed=2)
    images = CachedImages(train.images, None, torch.full((96,), -1, dtype=torch.long), train.keys, train.sizes,
                          train.files)  # the pretraining set carries no label
    model = _tiny(0)
    cfg = _cfg(tmp_path, ssl_epochs=10, ssl_batch_size=16)
    before = selfsup.knn_monitor(model.encoder, train, val, cfg, SIZE)
    result = selfsup.pretrain(model, images, cfg, knn_train=train, knn_val=val, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert min(losses[-3:]) < 0.88 * losses[0], losses
    assert result.history[-1]["train_partner_acc"] > result.history[0]["train_partner_acc"]
    knn = [h["knn_acc"] for h in result.history]
    assert all(0 <= k <= 1 for k in knn)
    assert before < 0.6 and knn[-1] >= 0.9, (before, knn)  # random features mostly see the tint
    assert result.best_epoch == 10  # the last epoch is kept: no label chooses the weights
    ckpt = torch.load(result.checkpoint, weights_only=True)  # the weights file: the last epoch's weights
    assert ckpt["best_epoch"] == ckpt["epoch"] == 10
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k


def test_history_without_monitor_and_bad_inputs(tmp_path):
    result = selfsup.pretrain(_tiny(), _patterns(40, seed=3), _cfg(tmp_path, ssl_epochs=1), progress=False)
    assert math.isnan(result.history[0]["knn_acc"])
    assert {"train_loss", "train_partner_acc", "lr", "seconds"} <= set(result.history[0])
    with pytest.raises(ValueError, match="at least 2"):
        selfsup.pretrain(_tiny(), _patterns(1, seed=3), _cfg(tmp_path), progress=False)
    with pytest.raises(TypeError, match="SimCLR"):
        selfsup.pretrain(TinyEncoder(), _patterns(8, seed=3), _cfg(tmp_path), progress=False)


def test_resume_gives_the_same_continuation(tmp_path, monkeypatch):
    images, train, val = _patterns(64, seed=4), _patterns(16, seed=5), _patterns(8, seed=6)
    straight = selfsup.pretrain(_tiny(), images, _cfg(tmp_path / "a", ssl_epochs=4), knn_train=train,
                                knn_val=val, progress=False)
    crash_cfg = _cfg(tmp_path / "b", ssl_epochs=4)
    crash_after_saves(monkeypatch, lambda: selfsup.pretrain(_tiny(), images, crash_cfg, knn_train=train,
                                                            knn_val=val, progress=False))
    # the latest epoch is always the best here: until the last epoch the state alone holds its weights
    assert torch.load(tmp_path / "b" / "runs" / "ssl_encoder.resume.pt", weights_only=True)["epoch"] == 2
    assert not (tmp_path / "b" / "runs" / "ssl_encoder.pt").exists()
    resumed = selfsup.pretrain(_tiny(seed=9), images, crash_cfg, knn_train=train, knn_val=val, progress=False)
    assert resumed.resumed_from == 2
    assert_identical_runs(straight, resumed)
    assert [h["knn_acc"] for h in straight.history] == [h["knn_acc"] for h in resumed.history]



def test_other_pretraining_settings_are_a_new_training(tmp_path, capsys):
    images, cfg = _patterns(32, seed=4), _cfg(tmp_path, ssl_epochs=1)
    selfsup.pretrain(_tiny(), images, cfg, progress=False)
    hotter = selfsup.pretrain(_tiny(), images, _cfg(tmp_path, ssl_epochs=1, ssl_temperature=0.5), progress=False)
    assert hotter.resumed_from == 0 and "temperature: 0.2 -> 0.5" in capsys.readouterr().out
    other = selfsup.pretrain(_tiny(), _patterns(32, seed=7), cfg, progress=False)
    assert other.resumed_from == 0 and "the training images or labels" in capsys.readouterr().out
    assert len(list((tmp_path / "runs").glob("ssl_encoder@*.pt"))) == 4  # two trainings set aside: weights, state


def test_pretraining_images_leave_out_validation():
    labeled = _patterns(12, seed=7)
    labeled.masks = torch.zeros(12, SIZE, SIZE, dtype=torch.uint8)
    train, val = labeled.subset(range(8)), labeled.subset(range(8, 12))
    unlabeled = _patterns(5, seed=8)
    images = selfsup.pretraining_images(train, unlabeled)
    assert images.keys == train.keys + unlabeled.keys and images.masks is None
    assert not set(images.keys) & set(val.keys)
    assert selfsup.pretraining_images(train, None).keys == train.keys


# ----------------------------------------------------------------------------- into the classifier and the U-Net
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A resnet18 SimCLR checkpoint from one short pretraining run, and its config."""
    tmp = tmp_path_factory.mktemp("ssl")
    cfg = _cfg(tmp, arch="resnet18", image_size=32, ssl_epochs=1, ssl_batch_size=8, init="ssl")
    index = SimpleNamespace(num_classes=KINDS, class_names=[f"k{k}" for k in range(KINDS)])
    torch.manual_seed(0)
    model = selfsup.new_ssl_model(cfg, index)
    selfsup.pretrain(model, _patterns(16, seed=10, size=32), cfg, progress=False)
    return cfg, index, model


def _trunk(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix) and not k.startswith(prefix + "fc.")}


def test_the_encoder_loads_into_the_classifier_and_the_unet(pretrained, capsys):
    cfg, index, model = pretrained
    path = selfsup.start_encoder(cfg, index.num_classes)
    assert path == selfsup.ssl_checkpoint(cfg) and "self-supervised encoder" in capsys.readouterr().out
    encoder = _trunk(model.state_dict(), "encoder.")
    assert len(encoder) == 120  # resnet18: conv and BatchNorm tensors, no fc
    classifier = pipeline.new_classifier(cfg, index, encoder_from=path)
    for k, v in encoder.items():
        assert torch.equal(classifier.state_dict()[k], v), k
    assert classifier.fc.out_features == KINDS
    unet = new_segmenter(cfg, index, encoder_from=path)
    for k, v in encoder.items():
        assert torch.equal(unet.encoder.state_dict()[k], v), k
    scratch_cfg = dataclasses.replace(cfg, init="scratch")
    assert selfsup.start_encoder(scratch_cfg) is None and "random weights" in capsys.readouterr().out


def test_a_mismatched_or_missing_encoder_file_fails_naming_it(pretrained, tmp_path):
    cfg, index, _ = pretrained
    path = selfsup.ssl_checkpoint(cfg)
    other_arch = dataclasses.replace(cfg, arch="resnet34")
    with pytest.raises(ValueError, match=f"{path}.*arch"):
        selfsup.start_encoder(other_arch)
    with pytest.raises(ValueError, match=str(path)):
        pipeline.new_classifier(other_arch, index, encoder_from=path)
    with pytest.raises(ValueError, match=str(path)):
        new_segmenter(other_arch, index, encoder_from=path)
    # a file whose spec says resnet18 but whose weights do not fit
    bad = tmp_path / "runs" / "ssl_encoder.pt"
    ckpt = load_checkpoint(path)
    ckpt["model"]["encoder.conv1.weight"] = torch.zeros(64, 3, 3, 3)
    save_checkpoint(bad, ckpt)
    bad_cfg = dataclasses.replace(cfg, run_dir=tmp_path / "runs")
    for load in (lambda: selfsup.start_encoder(bad_cfg), lambda: pipeline.new_classifier(bad_cfg, index, encoder_from=bad),
                 lambda: new_segmenter(bad_cfg, index, encoder_from=bad)):
        with pytest.raises(ValueError, match=f"{bad}.*shape mismatch"):
            load()
    # a classifier checkpoint is no self-supervised encoder
    save_checkpoint(bad, {"model_spec": {"arch": "resnet18", "num_classes": KINDS}, "model": ckpt["model"]})
    with pytest.raises(ValueError, match=f"{bad}.*not a self-supervised encoder"):
        selfsup.start_encoder(bad_cfg)
    missing = dataclasses.replace(cfg, run_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="ssl_encoder.pt.*02_self_supervised"):
        selfsup.start_encoder(missing)
    with pytest.raises(ValueError, match="unknown init 'imagenet'"):
        selfsup.start_encoder(dataclasses.replace(cfg, init="imagenet"))


def test_knn_monitor_uses_the_encoder_features(pretrained):
    cfg, _, model = pretrained
    train, val = _patterns(12, seed=11, size=32), _patterns(8, seed=12, size=32)
    expected = probes.knn_accuracy(probes.features(model.encoder, train, cfg, 32), train.labels,
                                   probes.features(model.encoder, val, cfg, 32), val.labels)
    assert selfsup.knn_monitor(model.encoder, train, val, cfg, 32) == expected


# ----------------------------------------------------------------------------- init "auto": the encoder must beat random weights
@pytest.fixture(scope="module")
def learned_patterns(tmp_path_factory):
    """A TinyEncoder before and after pretraining on the pattern images, and both features of a labeled set."""
    tmp = tmp_path_factory.mktemp("auto")
    cfg = _cfg(tmp, ssl_epochs=10, ssl_batch_size=16)
    labeled = _patterns(96, seed=4)
    model = _tiny(0)
    random_features = probes.features(model.encoder, labeled, cfg, SIZE)
    images = CachedImages(labeled.images, None, torch.full((96,), -1, dtype=torch.long), labeled.keys,
                          labeled.sizes, labeled.files)
    selfsup.pretrain(model, images, cfg, progress=False)
    return cfg, labeled, random_features, probes.features(model.encoder, labeled, cfg, SIZE)


def test_leave_one_out_knn_never_counts_an_image_as_its_own_neighbour():
    features = torch.eye(4).repeat_interleave(2, 0)  # pairs of identical images
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert probes.knn_leave_one_out(features, labels, k=1).all()  # each finds its twin
    odd = torch.tensor([0, 1, 1, 2, 2, 3, 3, 0])  # each twin pair split across classes
    assert not probes.knn_leave_one_out(features, odd, k=1).any()  # with itself it would score 100 %


def test_paired_gain_needs_more_than_a_few_lucky_images():
    base = torch.zeros(100, dtype=torch.bool)
    few = base.clone()
    few[:3] = True
    assert not probes.paired_gain(few, base)["clearly_better"]  # +3 points, within the noise
    many = base.clone()
    many[:30] = True
    result = probes.paired_gain(many, base)
    assert result["clearly_better"] and result["gain"] == pytest.approx(0.3) and result["n"] == 100
    assert not probes.paired_gain(base, many)["clearly_better"]


def test_the_encoder_check_follows_what_the_labels_can_use(learned_patterns):
    _, labeled, random_features, pretrained = learned_patterns
    check = selfsup.encoder_check(pretrained, random_features, labeled.labels)  # labels = the pattern kind
    assert check["clearly_better"] and check["knn_pretrained"] > check["knn_random"] + 0.2, check
    # A dataset where pretraining cannot help: the classes have nothing to do with what the images show.
    unrelated = torch.randperm(96, generator=torch.Generator().manual_seed(0)) % KINDS
    check = selfsup.encoder_check(pretrained, random_features, unrelated)
    assert not check["clearly_better"], check


def test_init_auto_starts_from_random_weights_unless_the_encoder_won(pretrained, capsys):
    cfg, index, _ = pretrained
    auto = dataclasses.replace(cfg, init="auto")
    pipeline.record(auto, ssl_helps=False)  # what 02 records where the encoder did not beat random weights
    assert pipeline.resolved_init(auto) == "scratch" and selfsup.start_encoder(auto) is None
    assert "did not clearly beat random weights" in capsys.readouterr().out
    assert not selfsup.encoder_worth_trying(auto)  # 04 trains no U-Net from it either
    assert selfsup.encoder_worth_trying(cfg)  # IMSUB_INIT=ssl forces it
    assert pipeline.resolved_init(cfg) == "ssl" and selfsup.start_encoder(cfg) == selfsup.ssl_checkpoint(cfg)
    pipeline.record(auto, ssl_helps=True)
    assert pipeline.resolved_init(auto) == "ssl" and selfsup.start_encoder(auto) == selfsup.ssl_checkpoint(cfg)
    assert selfsup.encoder_worth_trying(auto)
    (cfg.run_dir / pipeline.SUMMARY_FILE).unlink()  # before 02 has run: random weights
    assert pipeline.resolved_init(auto) == "scratch"
