"""Tests for helpers.hardware: which precision and memory format a config gets on which device."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import hardware
from helpers.config import Config

CPU = torch.device("cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_is_opt_in_and_needs_the_instructions(monkeypatch, native):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.amp_dtype(Config(cpu_bf16=True), CPU) == (torch.bfloat16 if native else None)
    assert hardware.use_channels_last(Config(cpu_bf16=True), CPU) == native
    # the default: fp32 and contiguous on any CPU, whatever `amp` and `channels_last` say (they are CUDA's)
    assert hardware.amp_dtype(Config(amp=True), CPU) is None
    assert not hardware.use_channels_last(Config(channels_last=True), CPU)


def test_mps_stays_in_fp32_and_contiguous(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    mps = torch.device("mps")
    cfg = Config(amp=True, channels_last=True, cpu_bf16=True)
    assert hardware.amp_dtype(cfg, mps) is None
    assert not hardware.use_channels_last(cfg, mps)


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
    assert hardware.device_of(Config(device="")) == CPU
    assert hardware.describe(Config(device="cpu")).startswith("cpu: fp32 precision, contiguous")
    assert hardware.describe(Config(device="cpu", cpu_bf16=True)).startswith("cpu: bf16 mixed precision, channels_last")


def test_the_probe_answers_a_bool():
    assert isinstance(hardware.cpu_has_native_bf16(), bool)


def test_cpu_bf16_training_step_runs_where_supported():
    if not hardware.cpu_has_native_bf16():
        pytest.skip("this CPU has no bf16 instructions")
    cfg = Config(device="cpu", cpu_bf16=True)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 2)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 8, 8).contiguous(memory_format=torch.channels_last)
    with hardware.autocast(CPU, hardware.amp_dtype(cfg, CPU)):
        loss = F.cross_entropy(model(x).float(), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters())


def test_resolve_and_to_layout_agree_with_the_single_answers(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: True)
    for cfg in (Config(device="cpu"), Config(device="cpu", cpu_bf16=True)):
        device, dtype, channels_last = hardware.resolve(cfg)
        assert (device, dtype, channels_last) == (CPU, hardware.amp_dtype(cfg, CPU),
                                                  hardware.use_channels_last(cfg, CPU))
    x = torch.randn(2, 3, 4, 5)
    assert hardware.to_layout(x, False) is x
    assert hardware.to_layout(x, True).is_contiguous(memory_format=torch.channels_last)
