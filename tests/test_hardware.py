"""Tests for helpers.hardware: which precision and memory format a config gets on which device."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import hardware
from helpers.config import Config

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_uses_bf16_only_where_the_cores_have_it(monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.amp_dtype(Config(amp=True), CPU) == (torch.bfloat16 if native else None)
    assert hardware.amp_dtype(Config(amp=False), CPU) is None


def test_mps_and_unknown_devices_stay_in_fp32_and_contiguous():
    mps = torch.device("mps")
    assert hardware.amp_dtype(Config(amp=True), mps) is None
    assert not hardware.use_channels_last(Config(channels_last=True), mps)
    assert hardware.use_channels_last(Config(channels_last=True), CPU)
    assert not hardware.use_channels_last(Config(channels_last=False), CPU)


def test_only_fp16_needs_a_grad_scaler():
    assert hardware.needs_grad_scaler(torch.float16)
    assert not hardware.needs_grad_scaler(torch.bfloat16)
    assert not hardware.needs_grad_scaler(None)


def test_autocast_runs_convolutions_in_the_chosen_dtype():
    x, w = torch.randn(2, 3, 8, 8), torch.randn(4, 3, 3, 3)
    with hardware.autocast(CPU, None):
        assert F.conv2d(x, w).dtype == torch.float32
    with hardware.autocast(CPU, torch.bfloat16):
        assert F.conv2d(x, w).dtype == torch.bfloat16


def test_device_of_defaults_to_cpu_and_describe_names_the_choice(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    cfg = Config(device="", amp=True, channels_last=True)
    assert hardware.device_of(cfg) == CPU
    line = hardware.describe(cfg)
    assert line.startswith("cpu: bf16 mixed precision, channels_last")
    assert "fp32" in hardware.describe(Config(device="cpu", amp=False))


def test_the_probe_answers_a_bool():
    assert isinstance(hardware.cpu_has_native_bf16(), bool)
