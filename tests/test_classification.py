"""Tests for helpers.engine, helpers.ema and helpers.classification: fit history, learning, EMA math, exact resume, TTA, the FixMatch branch."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers.checkpoints as checkpoints
from helpers.cache import CachedImages
from helpers.classification import evaluate, fit, predict_proba
from helpers.config import Config
from helpers.ema import EMA
from helpers.engine import lr_at

from .resume import assert_identical_runs, crash_after_saves

NUM_CLASSES = 3
SIZE = 16


class TinyNet(nn.Module):
    """conv-BN-ReLU-pool-linear: BN gives float and int buffers, enough to test EMA and resume."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)
        self.spec = {"arch": "tiny", "num_classes": num_classes, "small_stem": True,
                     "image_size": SIZE, "class_names": [f"c{k}" for k in range(num_classes)]}

    def forward(self, x):
        return self.fc(self.features(x))


def _tiny(seed: int = 0, num_classes: int = NUM_CLASSES) -> TinyNet:
    torch.manual_seed(seed)
    return TinyNet(num_classes)


def _data(n: int = 48, seed: int = 0, labeled: bool = True, size: int = SIZE) -> CachedImages:
    """An easy separable task: class k is a dominant colour channel k plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % NUM_CLASSES
    base = torch.randint(0, 90, (n, 3, size, size), generator=gen)
    base[torch.arange(n), labels] += 150
    return CachedImages(
        images=base.clamp(0, 255).to(torch.uint8), masks=None,
        labels=labels.long() if labeled else torch.full((n,), -1, dtype=torch.long),
        keys=[f"k{seed}_{i}" for i in range(n)], sizes=[(size, size)] * n, files=[""] * n)


def _cfg(tmp_path, **kw) -> Config:
    values = dict(preset="smoke", image_size=SIZE, batch_size=16, epochs=2, warmup_epochs=1, lr=0.05,
                  weight_decay=5e-4, optimizer="sgd", label_smoothing=0.1, ema_decay=0.0, grad_clip=5.0,
                  device="cpu", run_dir=tmp_path / "runs", seed=0)
    values.update(kw)
    return Config(**values)


def test_fit_history_fields_and_checkpoint(tmp_path):
    cfg = _cfg(tmp_path)
    result = fit(_tiny(), _data(48), _data(12, seed=1), cfg, run_name="classifier", progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    for h in result.history:
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s",
                    "data_share"):
            assert key in h and math.isfinite(h[key]), key
        assert 0 <= h["train_acc"] <= 1 and 0 <= h["val_acc"] <= 1
        assert 0 < h["data_share"] < 1
        assert h["images_per_s"] > 0
    # 48 images / batch 16: 3 steps per epoch, 3 warmup steps, cosine over the last 3
    assert result.history[0]["lr"] == pytest.approx(cfg.lr)
    assert result.history[1]["lr"] == pytest.approx(lr_at(5, 6, 3, cfg.lr))
    assert result.checkpoint == tmp_path / "runs" / "classifier.pt"
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert ckpt["epoch"] == 2 and ckpt["model_spec"]["num_classes"] == NUM_CLASSES
    assert len(ckpt["history"]) == 2
    best = result.history[result.best_epoch - 1]["val_acc"]
    assert result.best_val_acc == best == max(h["val_acc"] for h in result.history)
    # the returned model holds the best weights, which are the checkpoint's "model" entry
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    assert not list(tmp_path.glob("runs/*.tmp"))


def test_lr_schedule_warmup_then_cosine():
    assert lr_at(0, 10, 2, 1.0) == pytest.approx(0.5)
    assert lr_at(1, 10, 2, 1.0) == pytest.approx(1.0)
    assert lr_at(2, 10, 2, 1.0) == pytest.approx(1.0)
    assert lr_at(6, 10, 2, 1.0) == pytest.approx(0.5)
    assert lr_at(9, 10, 2, 1.0) < 0.05
    assert lr_at(3, 10, 0, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.3)))


def test_loss_decreases_on_separable_task(tmp_path):
    cfg = _cfg(tmp_path, epochs=6, lr=0.1, warmup_epochs=0, label_smoothing=0.0)
    data = _data(96)
    result = fit(_tiny(), data, data, cfg, run_name="learn", progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.7 * losses[0]
    assert result.best_val_acc >= 0.9
    assert evaluate(result.model, data, cfg)["accuracy"] >= 0.9


def test_ema_update_math():
    model = _tiny(0)
    ema = EMA(model, decay=0.9, warmup=False)
    old = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():  # new weights and buffers, int counter changed too
        for k, v in model.state_dict().items():
            if v.is_floating_point():
                v.add_(torch.randn_like(v))
            else:
                v.fill_(7)
    ema.update(model)
    new = model.state_dict()
    for k, v in ema.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, 0.9 * old[k] + 0.1 * new[k], rtol=1e-6, atol=1e-6)
            assert not torch.equal(v, new[k])
        else:
            assert torch.equal(v, new[k]), k  # num_batches_tracked copied
    assert ema.num_updates == 1
    # the EMA copy never requires grad and is independent of the model
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_ema_warmup_and_state_roundtrip():
    ema = EMA(_tiny(0), decay=0.999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0)
    ema.num_updates = 10_000
    assert ema.current_decay() == pytest.approx(0.999)
    other = EMA(_tiny(1), decay=0.999)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 10_000
    for k, v in other.model.state_dict().items():
        assert torch.equal(v, ema.model.state_dict()[k])


def test_resume_gives_identical_continuation(tmp_path, monkeypatch):
    ema_decay = 0.9  # EMA on: its weights and update count must be restored too
    train, val = _data(40), _data(9, seed=1)
    straight_cfg = _cfg(tmp_path / "a", epochs=4, ema_decay=ema_decay)
    straight = fit(_tiny(), train, val, straight_cfg, run_name="r", progress=False)

    crash_cfg = _cfg(tmp_path / "b", epochs=4, ema_decay=ema_decay)
    crash_after_saves(monkeypatch, lambda: fit(_tiny(), train, val, crash_cfg, run_name="r", progress=False))
    assert torch.load(tmp_path / "b" / "runs" / "r.resume.pt", weights_only=True)["epoch"] == 2

    # a differently initialised model: everything must come from the checkpoint
    resumed = fit(_tiny(seed=123), train, val, crash_cfg, run_name="r", progress=False)
    assert resumed.resumed_from == 2
    assert_identical_runs(straight, resumed)

    # a finished run is returned as is, without training
    again = fit(_tiny(seed=5), train, val, crash_cfg, run_name="r", progress=False)
    assert len(again.history) == 4
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k


def test_resume_refuses_other_settings_or_classes(tmp_path):
    cfg = _cfg(tmp_path, epochs=1)
    fit(_tiny(), _data(32), None, cfg, run_name="c", progress=False)
    path = tmp_path / "runs" / "c.pt"
    with pytest.raises(ValueError, match=r"c\.resume\.pt.*other run settings.*lr.*delete c\.pt and c\.resume\.pt"):
        fit(_tiny(), _data(32), None, _cfg(tmp_path, epochs=1, lr=0.5), run_name="c", progress=False)
    with pytest.raises(ValueError, match=r"c\.resume\.pt.*trained for 3 classes but the data has 5"):
        fit(_tiny(num_classes=5), _data(32), None, cfg, run_name="c", progress=False)
    with pytest.raises(ValueError, match="images or labels changed"):
        fit(_tiny(), _data(32, seed=7), None, cfg, run_name="c", progress=False)
    # resume=False starts over and overwrites
    result = fit(_tiny(), _data(32), None, _cfg(tmp_path, epochs=1, lr=0.5), run_name="c",
                 resume=False, progress=False)
    assert result.resumed_from == 0 and path.is_file()


def test_fit_rejects_unlabeled_training_images(tmp_path):
    with pytest.raises(ValueError, match="without a label"):
        fit(_tiny(), _data(16, labeled=False), None, _cfg(tmp_path), run_name="x", progress=False)


def test_predict_proba_tta_is_mean_of_plain_and_flipped(tmp_path):
    cfg = _cfg(tmp_path)
    model = _tiny(3).eval()
    data = _data(10, size=20)  # the eval path resizes 20 -> 16
    plain = predict_proba(model, data, cfg, tta=False, batch_size=4)
    flipped = predict_proba(model, data.images.flip(3), cfg, tta=False, batch_size=3)
    both = predict_proba(model, data, cfg, tta=True, batch_size=4)
    assert plain.shape == (10, NUM_CLASSES) and plain.device.type == "cpu"
    torch.testing.assert_close(plain.sum(1), torch.ones(10))
    torch.testing.assert_close(both, (plain + flipped) / 2, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(plain, flipped)
    assert not model.training


def test_evaluate_ignores_unknown_labels(tmp_path):
    cfg = _cfg(tmp_path)
    model = _tiny(0)
    data = _data(12)
    data.labels[:4] = -1
    out = evaluate(model, data, cfg)
    preds = out["predictions"]
    expected = float((preds[4:] == data.labels[4:]).float().mean())
    assert out["accuracy"] == pytest.approx(expected) and out["num_labeled"] == 8
    assert preds.shape == (12,) and math.isfinite(out["loss"])


def test_fixmatch_branch_logs_mask_rate(tmp_path):
    cfg = _cfg(tmp_path, epochs=2)
    result = fit(_tiny(), _data(32), _data(9, seed=1), cfg, run_name="fixmatch",
                 unlabeled=_data(40, seed=2), threshold=0.0, progress=False)
    for h in result.history:
        assert h["mask_rate"] == pytest.approx(1.0)  # threshold 0 keeps every pseudo-label
        assert math.isfinite(h["unlabeled_loss"]) and h["unlabeled_loss"] > 0
        assert 0 <= h["pseudo_acc"] <= 1  # these unlabeled images carry their true labels
    none = fit(_tiny(), _data(32), None, cfg, run_name="fixmatch_strict",
               unlabeled=_data(40, seed=2, labeled=False), threshold=1.01, progress=False)
    for h in none.history:
        assert h["mask_rate"] == 0.0 and h["unlabeled_loss"] == 0.0
        assert math.isnan(h["pseudo_acc"])


def test_checkpoint_seconds_throttles_saves_but_keeps_the_last_epoch(tmp_path, monkeypatch):
    saved = []
    real_save = checkpoints.TrainingFiles.save
    monkeypatch.setattr(checkpoints.TrainingFiles, "save",
                        lambda self, state, weights=None: saved.append(state["epoch"]) or real_save(self, state, weights))
    fit(_tiny(), _data(), _data(16, seed=1), _cfg(tmp_path, epochs=3, checkpoint_seconds=1e9), run_name="slow", progress=False)
    assert saved == [3]
    saved.clear()
    fit(_tiny(), _data(), _data(16, seed=1), _cfg(tmp_path, epochs=3), run_name="every", progress=False)
    assert saved == [1, 2, 3]
