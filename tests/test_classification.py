"""Tests for helpers.engine, helpers.ema and helpers.classification: fit history, learning, EMA math, exact resume, TTA, the FixMatch branch."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import helpers.checkpoints as checkpoints
from helpers.cache import CachedImages
from helpers.classification import ClassificationTask, evaluate, fit, predict_proba
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
                  device="cpu", run_dir=tmp_path / "runs", seed=0,
                  select_best_epoch=True)  # these tests check the best-epoch machinery; the presets keep the last
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
        for v in model.state_dict().values():
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


def test_resume_refuses_other_classes_and_resume_false_starts_over(tmp_path):
    """Other settings are a new training (tests/test_changed_settings.py); another class count is an error."""
    cfg = _cfg(tmp_path, epochs=1)
    fit(_tiny(), _data(32), None, cfg, run_name="c", progress=False)
    path = tmp_path / "runs" / "c.pt"
    with pytest.raises(ValueError, match=r"c\.resume\.pt.*trained for 3 classes but the data has 5"):
        fit(_tiny(num_classes=5), _data(32), None, cfg, run_name="c", progress=False)
    # resume=False starts over and overwrites
    result = fit(_tiny(), _data(32), None, _cfg(tmp_path, epochs=1, lr=0.5), run_name="c",
                 resume=False, progress=False)
    assert result.resumed_from == 0 and path.is_file() and not list(path.parent.glob("c@*"))


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


def test_fixmatch_loss_uses_the_weak_views_confident_guesses():
    from helpers.consistency import fixmatch_loss

    weak = torch.tensor([[4.0, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
    strong = torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    loss, mask, pseudo = fixmatch_loss(weak, strong, threshold=0.9)
    assert pseudo.tolist() == [0, 1, 2] and mask.tolist() == [1.0, 0.0, 1.0]  # row 1 is unsure
    ce = torch.nn.functional.cross_entropy(strong.detach(), torch.tensor([0, 1, 2]), reduction="none")
    assert loss.item() == pytest.approx(float((ce[0] + ce[2]) / 3))  # mean over all, masked rows count 0
    loss.backward()
    assert weak.grad is None or torch.count_nonzero(weak.grad) == 0  # no gradient through the targets
    assert torch.count_nonzero(strong.grad[1]) == 0 and torch.count_nonzero(strong.grad[0]) > 0
    # the targets come from the weak view: swapping the views changes them
    _, _, swapped = fixmatch_loss(strong, weak, threshold=0.0)
    assert swapped.tolist() == [1, 0, 2]


def test_augment_false_trains_on_the_plain_resized_images(tmp_path):
    from helpers.augment import center_resize, normalize
    from helpers.classification import ClassificationTask

    cfg = _cfg(tmp_path)
    data = _data(16, size=20)
    plain = ClassificationTask(data, None, cfg, augment=False)
    plain.to_device(torch.device("cpu"))
    gen = torch.Generator().manual_seed(0)
    plain.start_epoch(1, 8, gen)
    x, y, _ = plain.next_batch(0, 8, gen)
    idx = plain.perm[:8]
    torch.testing.assert_close(x, normalize(center_resize(data.images[idx], None, SIZE)[0]))
    assert torch.equal(y, data.labels[idx])
    augmented = ClassificationTask(data, None, cfg)
    augmented.to_device(torch.device("cpu"))
    augmented.start_epoch(1, 8, torch.Generator().manual_seed(0))
    xa, _, _ = augmented.next_batch(0, 8, torch.Generator().manual_seed(0))
    assert not torch.allclose(xa, x)
    assert plain.settings()["augment"] is False and "augment" not in augmented.settings()
    result = fit(_tiny(), data, None, cfg, run_name="noaug", augment=False, progress=False)
    assert torch.load(result.checkpoint, weights_only=True)["settings"]["augment"] is False


def test_extract_features_are_the_input_of_fc(tmp_path):
    from helpers.classification import extract_features
    from helpers.models import build_classifier

    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    model = build_classifier("resnet18", NUM_CLASSES, small_stem=True).eval()
    data = _data(5)
    feats = extract_features(model, data, cfg, batch_size=2)
    assert feats.shape == (5, 512)
    logits = model.fc(feats)
    torch.testing.assert_close(logits.softmax(1), predict_proba(model, data, cfg, tta=False), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="ResNet"):
        extract_features(_tiny().features, data, cfg)


def _unlabeled_batch(n: int = 6, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=gen), torch.randn(n, 3, SIZE, SIZE, generator=gen)


def test_step_loss_is_supervised_plus_weighted_consistency_from_the_weak_view(tmp_path):
    """Fails if the unlabeled loss leaves the objective, or if the targets come from the strong view."""
    from helpers.classification import ClassificationTask
    from helpers.consistency import fixmatch_loss

    cfg = _cfg(tmp_path, consistency_threshold="0.0")
    data, unl = _data(8), _data(6, seed=2, labeled=False)
    task = ClassificationTask(data, None, cfg, unl, unlabeled_weight=0.7, threshold=0.0, num_classes=NUM_CLASSES)
    task.to_device(torch.device("cpu"))
    model = _tiny(1).eval()  # eval: BatchNorm uses running statistics, so batch composition does not matter
    x = torch.randn(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    xw, xs = _unlabeled_batch()
    loss, stats = task.step_loss(model, (x, y, (xw, xs, torch.arange(6))), channels_last=False)
    with torch.no_grad():
        expected_u, mask, _ = fixmatch_loss(model(xw), model(xs), 0.0)
        expected = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing) + 0.7 * expected_u
        from_strong, _, _ = fixmatch_loss(model(xs), model(xs), 0.0)
    assert expected_u > 0 and not torch.isclose(expected_u, from_strong)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    assert stats[2] == mask.sum() == 6


def test_fit_returns_the_ema_weights(tmp_path, monkeypatch):
    """Fails if fit hands back the raw weights instead of their moving average."""
    import helpers.engine as engine

    emas = []

    class WatchedEMA(engine.EMA):
        """The EMA as the engine runs it, also keeping the raw weights of its last update."""

        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            emas.append(self)

        def update(self, model):
            super().update(model)
            self.raw = engine.cpu_state(model)

    monkeypatch.setattr(engine, "EMA", WatchedEMA)
    cfg = _cfg(tmp_path, epochs=3, ema_decay=0.5)
    result = fit(_tiny(), _data(32), None, cfg, run_name="ema", progress=False)
    ema_state, raw_state = engine.cpu_state(emas[0].model), emas[0].raw
    assert any(not torch.equal(ema_state[k], raw_state[k]) for k in raw_state if raw_state[k].is_floating_point())
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ema_state[k]), k


def test_online_pseudo_label_diagnostics_read_the_given_truth(tmp_path):
    cfg = _cfg(tmp_path, epochs=2)
    unl = _data(40, seed=2, labeled=False)
    truth = torch.arange(40) % NUM_CLASSES  # what _data's labels would be
    result = fit(_tiny(), _data(32), None, cfg, run_name="diag", unlabeled=unl, threshold=0.0,
                 unlabeled_truth=truth, progress=False)
    for h in result.history:
        assert 0 <= h["pseudo_acc"] <= 1 and h["mask_rate"] == pytest.approx(1.0) and h["threshold"] == 0.0
    with pytest.raises(ValueError, match="unlabeled_truth has 3 labels for 40"):
        fit(_tiny(), _data(32), None, cfg, run_name="bad", unlabeled=unl, unlabeled_truth=truth[:3], progress=False)


def test_adaptive_threshold_follows_the_predictions():
    from helpers.consistency import AdaptiveThreshold, consistency_loss

    sat = AdaptiveThreshold(4, momentum=0.5)
    torch.testing.assert_close(sat.thresholds(), torch.full((4,), 0.25))  # 1 / C at the start
    probs = torch.tensor([[0.9, 0.1, 0.0, 0.0], [0.7, 0.1, 0.1, 0.1]])
    th = sat.update(probs)
    level = 0.5 * 0.25 + 0.5 * 0.8  # EMA of the mean top probability
    share = 0.5 * 0.25 + 0.5 * torch.tensor([0.8, 0.1, 0.05, 0.05])
    torch.testing.assert_close(th, level * share / share.max())
    assert th[0] > th[1]  # the class the model favours needs more confidence
    _, mask, pseudo = consistency_loss(probs, torch.zeros(2, 4), th)
    assert pseudo.tolist() == [0, 0] and mask.tolist() == [1.0, 1.0]
    again = AdaptiveThreshold(4)
    again.load_state_dict(sat.state_dict())
    torch.testing.assert_close(again.thresholds(), th)
    with pytest.raises(ValueError, match="momentum"):
        AdaptiveThreshold(4, momentum=1.0)


def test_distribution_alignment_pulls_towards_the_target():
    from helpers.consistency import DistributionAlignment

    align = DistributionAlignment(2, momentum=0.0)  # running mean = this batch's mean
    probs = torch.tensor([[0.9, 0.1], [0.7, 0.3]])  # mean [0.8, 0.2]: class 0 favoured
    out = align(probs)
    torch.testing.assert_close(out.sum(1), torch.ones(2))
    assert out[:, 0].mean() < probs[:, 0].mean()  # class 0 down-weighted
    expected = probs * torch.tensor([0.5 / 0.8, 0.5 / 0.2])
    torch.testing.assert_close(out, expected / expected.sum(1, keepdim=True))


def test_round_settings_are_checked(tmp_path):
    unl = _data(8, seed=2, labeled=False)
    with pytest.raises(ValueError, match="consistency threshold"):
        fit(_tiny(), _data(16), None, _cfg(tmp_path), run_name="t", unlabeled=unl, threshold="high", progress=False)
    with pytest.raises(ValueError, match="weak view"):
        fit(_tiny(), _data(16), None, _cfg(tmp_path, weak_view="tiny"), run_name="t", unlabeled=unl, progress=False)
    with pytest.raises(ValueError, match="ema_decay"):
        fit(_tiny(), _data(16), None, _cfg(tmp_path, ema_teacher=True), run_name="t", unlabeled=unl, progress=False)


def test_adaptive_round_with_alignment_and_paper_weak_view_runs(tmp_path):
    cfg = _cfg(tmp_path, epochs=2, weak_view="flip_translate", distribution_alignment=True, unlabeled_ratio=2)
    result = fit(_tiny(), _data(32), None, cfg, run_name="adaptive", unlabeled=_data(40, seed=2, labeled=False),
                 threshold="adaptive", progress=False)
    settings = torch.load(result.checkpoint, weights_only=True)["settings"]
    assert settings["threshold"] == "adaptive" and settings["mu"] == 2 and settings["weak_view"] == "flip_translate"
    for h in result.history:
        assert 0 < h["threshold"] < 1 and 0 <= h["mask_rate"] <= 1


def test_adaptive_round_resumes_exactly_and_ema_teacher_gives_the_targets(tmp_path, monkeypatch):
    from helpers.classification import ClassificationTask

    unl = _data(40, seed=2, labeled=False)
    kwargs = dict(unlabeled=unl, threshold="adaptive", progress=False)
    straight_cfg = _cfg(tmp_path / "a", epochs=4, ema_decay=0.9, ema_teacher=True, distribution_alignment=True)
    straight = fit(_tiny(), _data(40), _data(9, seed=1), straight_cfg, run_name="r", **kwargs)
    crash_cfg = _cfg(tmp_path / "b", epochs=4, ema_decay=0.9, ema_teacher=True, distribution_alignment=True)
    crash_after_saves(monkeypatch, lambda: fit(_tiny(), _data(40), _data(9, seed=1), crash_cfg, run_name="r", **kwargs))
    ckpt = torch.load(tmp_path / "b" / "runs" / "r.resume.pt", weights_only=True)
    assert ckpt["train"]["task"]["adaptive"]["level"] > 0  # the thresholds' state is saved ...
    resumed = fit(_tiny(seed=9), _data(40), _data(9, seed=1), crash_cfg, run_name="r", **kwargs)
    assert_identical_runs(straight, resumed)  # ... and restored: the same continuation
    assert [h["threshold"] for h in straight.history] == [h["threshold"] for h in resumed.history]

    class Sure(nn.Module):  # a teacher certain that everything is class 2
        def forward(self, x):
            return torch.tensor([0.0, 0.0, 9.0]).expand(x.shape[0], 3)

    truth = torch.full((40,), 2)
    task = ClassificationTask(_data(8), None, crash_cfg, unl, num_classes=NUM_CLASSES, threshold=0.5,
                              unlabeled_truth=truth)
    task.to_device(torch.device("cpu"))
    task.set_teacher(Sure())
    xw, xs = _unlabeled_batch()
    batch = (torch.zeros(2, 3, SIZE, SIZE), torch.tensor([0, 1]), (xw, xs, torch.arange(6)))
    _, stats = task.step_loss(_tiny(5).eval(), batch, channels_last=False)
    assert stats[2] == 6 and stats[4] == 6  # all six targets are the teacher's class 2
    task.set_teacher(None)
    assert task.teacher is None


def test_fixed_schedule_keeps_the_last_epoch(tmp_path):
    data, val = _data(48), _data(12, seed=1)
    cfg = _cfg(tmp_path, epochs=4, select_best_epoch=False)
    result = fit(_tiny(), data, val, cfg, run_name="last", progress=False)
    ckpt, state = (torch.load(f, weights_only=True) for f in (result.checkpoint, result.resume_file))
    assert result.best_epoch == 4 and ckpt["settings"]["select_best_epoch"] is False
    assert ckpt["best_epoch"] == state["epoch"] == 4  # no EMA: the last epoch's weights themselves
    for k, v in result.model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k]), k
    other = fit(_tiny(), data, val, _cfg(tmp_path, epochs=4, select_best_epoch=True), run_name="last", progress=False)
    assert other.resumed_from == 0  # the other rule is another training


def test_strong_label_view_augments_the_labeled_batch_strongly(tmp_path):
    """cfg.label_view="strong": the labeled images get the strong view (cutout shows on flat images)."""
    flat = _data(16)
    flat.images[:] = torch.tensor([200, 40, 90], dtype=torch.uint8).view(1, 3, 1, 1)
    spreads = {}
    for view in ("weak", "strong"):
        task = ClassificationTask(flat, None, _cfg(tmp_path, label_view=view))
        task.to_device(torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        task.start_epoch(1, 16, generator)
        x, y, unl = task.next_batch(0, 16, generator)
        assert x.shape == (16, 3, SIZE, SIZE) and unl is None
        spreads[view] = x.flatten(2).std(dim=2).amax(dim=1)  # per image: largest spread over its pixels
        assert ("label_view" in task.settings()) == (view == "strong")  # a resume cannot mix the two
    assert spreads["weak"].max() < 1e-3 and (spreads["strong"] > 0.1).all()
    with pytest.raises(ValueError, match="label view"):
        ClassificationTask(flat, None, _cfg(tmp_path, label_view="heavy"))


def test_crop_min_scale_sets_how_far_the_classifiers_views_zoom_in(tmp_path):
    """cfg.crop_min_scale: at 1 every view shows the whole image, small values zoom in (labeled and unlabeled views)."""
    dot = _data(64)
    dot.images[:] = 0
    dot.images[:, :, SIZE // 2 - 2:SIZE // 2 + 2, SIZE // 2 - 2:SIZE // 2 + 2] = 255  # a white centre, 1/16 of the image
    unlabeled = _data(64, labeled=False)
    unlabeled.images[:] = dot.images
    spread = {}
    for scale in (1.0, 0.05):
        cfg = _cfg(tmp_path, crop_min_scale=scale)
        task = ClassificationTask(dot, None, cfg, unlabeled=unlabeled, unlabeled_weight=1.0, threshold=0.8)
        task.to_device(torch.device("cpu"))
        generator = torch.Generator().manual_seed(0)
        task.start_epoch(1, 64, generator)
        x, _, (xw, xs, _) = task.next_batch(0, 64, generator)
        # the share of bright pixels per view: near 1/16 without zoom, anything from 0 to 1 with it
        spread[scale] = [(v.mean(dim=1) > 0).float().mean(dim=(1, 2)).std().item() for v in (x, xw)]
        assert ("crop_min_scale" in task.settings()) == (scale != 0.35)  # a resume cannot mix crops
    assert all(zoomed > 3 * whole for zoomed, whole in zip(spread[0.05], spread[1.0])), spread
    with pytest.raises(ValueError, match="crop_min_scale"):
        ClassificationTask(dot, None, _cfg(tmp_path, crop_min_scale=0.0))
