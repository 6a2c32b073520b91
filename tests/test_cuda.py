"""The CUDA paths on a real GPU (the whole module is skipped without one): mixed precision by device
capability, the GradScaler, channels_last, cudnn.benchmark, training and resuming the classifier and
the U-Net on the device. The same paths are tested on the CPU with the capability monkeypatched in
tests/test_hardware.py; these tests check that the GPU agrees.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import hardware
from helpers.classification import fit, predict_proba
from helpers.config import get_config
from helpers.segmentation import fit_segmenter

from . import test_classification as tc
from . import test_segmentation as ts
from .resume import crash_after_saves, last_resumable, record_states
from .test_data import make_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")


def _expected_dtype() -> torch.dtype:
    major, _ = torch.cuda.get_device_capability(CUDA)
    return torch.bfloat16 if major >= 8 else torch.float16


def test_the_gpu_preset_picks_the_device_and_its_precision(tmp_path):
    cfg = get_config("gpu", data_root=make_dataset(tmp_path / "ImageNet-Subset"))
    assert cfg.device == "cuda" and cfg.image_size == 160
    device, dtype, channels_last = hardware.resolve(cfg)
    assert device.type == "cuda" and dtype == _expected_dtype() and channels_last
    conv = nn.Conv2d(3, 8, 3).to(CUDA, memory_format=torch.channels_last)
    x = hardware.to_layout(torch.randn(2, 3, 32, 32, device=CUDA), channels_last)
    with hardware.autocast(device, dtype):
        assert conv(x).dtype == dtype
    print(hardware.describe(cfg))


def _close_histories(a: list[dict], b: list[dict], key: str) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert math.isclose(x[key], y[key], rel_tol=2e-2, abs_tol=1e-3), (key, x[key], y[key])


def test_classifier_trains_and_resumes_on_the_gpu(tmp_path, monkeypatch):
    train, val = tc._data(64), tc._data(12, seed=1)
    straight_cfg = tc._cfg(tmp_path / "a", epochs=4, ema_decay=0.9, device="cuda")
    states = record_states(monkeypatch)
    straight = fit(tc._tiny(), train, val, straight_cfg, run_name="r", progress=False)
    assert torch.backends.cudnn.benchmark
    assert all(math.isfinite(h["train_loss"]) for h in straight.history)
    state = last_resumable(states)
    scaler = state["scaler"]
    assert bool(scaler) == (_expected_dtype() == torch.float16)  # a GradScaler exactly with fp16
    assert state["rng"]["cuda"] is not None

    cfg = tc._cfg(tmp_path / "b", epochs=4, ema_decay=0.9, device="cuda")
    crash_after_saves(monkeypatch, lambda: fit(tc._tiny(), train, val, cfg, run_name="r", progress=False))
    resumed = fit(tc._tiny(seed=123), train, val, cfg, run_name="r", progress=False)
    assert resumed.resumed_from == 2
    # cuDNN may pick non-deterministic kernels (cudnn.benchmark): the continuation agrees to a tolerance
    _close_histories(straight.history, resumed.history, "train_loss")
    for k, v in straight.model.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, resumed.model.state_dict()[k], rtol=2e-2, atol=2e-3)
    probs = predict_proba(resumed.model, val, cfg)
    assert probs.shape == (12, tc.NUM_CLASSES) and torch.isfinite(probs).all()


def test_unet_trains_in_mixed_precision_on_the_gpu(tmp_path):
    cfg = ts._cfg(tmp_path, seg_epochs=3, device="cuda", channels_last=True)
    result = fit_segmenter(ts._segmenter(cfg), ts._squares(32), ts._squares(8, seed=1), cfg,
                           run_name="unet", progress=False)
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_miou"]) for h in result.history)
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.checkpoint.is_file() and result.resume_file.is_file()
    assert all(0 < h["gpu_peak_gb"] < 140 for h in result.history)  # the epoch's peak GPU memory is recorded


def test_fp16_scaler_state_survives_a_resume_on_the_gpu(tmp_path, monkeypatch):
    """fp16 with a GradScaler even on a bf16-capable GPU (what a T4 runs)."""
    import helpers.engine as engine

    monkeypatch.setattr(engine, "resolve", lambda cfg: (CUDA, torch.float16, True))
    train, val = tc._data(64), tc._data(12, seed=1)
    cfg = tc._cfg(tmp_path, epochs=4, device="cuda")
    crash_after_saves(monkeypatch, lambda: fit(tc._tiny(), train, val, cfg, run_name="f", progress=False))
    saved = torch.load(tmp_path / "runs" / "f.resume.pt", weights_only=True)["train"]["scaler"]
    assert saved and saved["scale"] > 0
    resumed = fit(tc._tiny(seed=1), train, val, cfg, run_name="f", progress=False)
    assert resumed.resumed_from == 2 and all(math.isfinite(h["train_loss"]) for h in resumed.history)

