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


# ----------------------------------------------------------------------------- CUDA paths, on the CPU
@pytest.mark.parametrize("capability, gpu, dtype", [
    ((6, 0), "Tesla P100-PCIE-16GB", torch.float16),  # Kaggle's P100: fp16 + GradScaler
    ((7, 5), "Tesla T4", torch.float16),              # Colab's and Kaggle's T4: no bf16
    ((8, 0), "NVIDIA A100-SXM4-40GB", torch.bfloat16),
    ((8, 9), "NVIDIA L4", torch.bfloat16),
])
def test_cuda_precision_follows_the_device_capability(monkeypatch, capability, gpu, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu)
    cuda = torch.device("cuda")
    assert hardware.amp_dtype(Config(device="cuda"), cuda) == dtype
    assert hardware.needs_grad_scaler(hardware.amp_dtype(Config(device="cuda"), cuda)) == (dtype == torch.float16)
    assert hardware.amp_dtype(Config(device="cuda", amp=False), cuda) is None
    assert hardware.use_channels_last(Config(device="cuda"), cuda)
    assert not hardware.use_channels_last(Config(device="cuda", channels_last=False), cuda)
    name = {torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    assert hardware.describe(Config(device="cuda")).startswith(f"{gpu}: {name} mixed precision, channels_last")


def _fp16_on_cpu(monkeypatch) -> None:
    """Make fit_task take the T4 path on the CPU: fp16 autocast and an enabled GradScaler."""
    import helpers.engine as engine

    monkeypatch.setattr(engine, "resolve", lambda cfg: (CPU, torch.float16, False))


def test_fp16_training_uses_a_grad_scaler_and_resumes_it_exactly(tmp_path, monkeypatch):
    from helpers.engine import fit_task

    from .resume import assert_identical_runs, crash_after_saves, last_resumable, record_states
    from .test_training_files import ScriptedTask, _scfg

    _fp16_on_cpu(monkeypatch)
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]

    def run(folder, first_epoch=0):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        torch.nn.init.constant_(model.weight, 300.0)  # fp16 gradients overflow at the first scales
        return fit_task(model, LoudTask(values, first_epoch=first_epoch), _scfg(tmp_path / folder),
                        run_name="fp16", epochs=6, progress=False)

    class LoudTask(ScriptedTask):
        def step_loss(self, model, data, channels_last):
            loss, stats = super().step_loss(model, data, channels_last)
            assert model(data[0]).dtype == torch.float16  # autocast really ran in fp16
            return loss, stats

    states = record_states(monkeypatch)
    straight = run("a")
    scaler = last_resumable(states)["scaler"]  # after epoch 5
    assert scaler["scale"] < 65536.0  # it backed off: the scaler's state matters for an exact resume
    crash_after_saves(monkeypatch, lambda: run("b"), saves=3)
    assert torch.load(tmp_path / "b" / "runs" / "fp16.resume.pt", weights_only=True)["train"]["scaler"]["scale"] > 0
    del states[:]
    resumed = run("b", first_epoch=3)
    assert resumed.resumed_from == 3
    assert_identical_runs(straight, resumed)
    assert last_resumable(states)["scaler"] == scaler


def test_bf16_and_fp32_need_no_scaler_state(tmp_path, monkeypatch):
    import helpers.engine as engine
    from helpers.engine import fit_task

    from .test_training_files import ScriptedTask, _scfg

    from .resume import last_resumable, record_states

    states = record_states(monkeypatch)
    for dtype in (None, torch.bfloat16):
        monkeypatch.setattr(engine, "resolve", lambda cfg, dtype=dtype: (CPU, dtype, False))
        del states[:]
        fit_task(torch.nn.Linear(4, 1), ScriptedTask([0.1, 0.2]), _scfg(tmp_path / str(dtype)),
                 run_name="x", epochs=2, progress=False)
        assert last_resumable(states)["scaler"] == {}
