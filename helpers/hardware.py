"""How a model runs on the hardware at hand: the device, the mixed-precision dtype, the memory format.

- CUDA: mixed precision (`cfg.amp`) in bf16 on Ampere and newer, fp16 with a GradScaler (see
  `needs_grad_scaler`) on older GPUs; channels_last (`cfg.channels_last`).
- CPU: fp32 by default. `cfg.cpu_bf16` turns on bf16 autocast + channels_last when the cores have
  bf16 instructions (AVX512-BF16 or AMX: recent Xeon and EPYC). On this project's 2-core EPYC that
  made the whole cpu-preset run 1.5x faster but cost 4 to 7 points of demo test accuracy in each of
  3 seeds (README, "Quality on the demo data"), so it is opt-in. Without bf16 instructions it stays fp32:
  emulated bf16 would be slower.
Weights stay fp32 either way; only the matmuls and convolutions run in the lower precision.
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from .config import Config


def device_of(cfg: Config) -> torch.device:
    """The torch device a config trains on (cfg.device, CPU if unset)."""
    return torch.device(cfg.device or "cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), so bf16 autocast speeds it up."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # an older torch without the probes: stay in fp32
        return False


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for this config on this device, or None for plain fp32."""
    if device.type == "cuda" and cfg.amp:
        major, _ = torch.cuda.get_device_capability(device)
        return torch.bfloat16 if major >= 8 else torch.float16
    if device.type == "cpu" and cfg.cpu_bf16 and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """torch.autocast for `dtype` on `device`, or a no-op context when dtype is None."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(dtype: torch.dtype | None) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return dtype == torch.float16


def use_channels_last(cfg: Config, device: torch.device) -> bool:
    """Whether to keep activations and weights in channels_last on this device."""
    if device.type == "cuda":
        return bool(cfg.channels_last)
    return device.type == "cpu" and amp_dtype(cfg, device) is not None  # oneDNN's bf16 path wants it


def resolve(cfg: Config) -> tuple[torch.device, torch.dtype | None, bool]:
    """(device, autocast dtype or None, channels_last): what every training and prediction loop asks first."""
    device = device_of(cfg)
    return device, amp_dtype(cfg, device), use_channels_last(cfg, device)


def to_layout(x: Tensor, channels_last: bool) -> Tensor:
    """A model input in channels_last memory format when asked, else unchanged."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def describe(cfg: Config) -> str:
    """One line for a notebook: device, precision and memory format this config will use."""
    device, dtype, channels_last = resolve(cfg)
    precision = {None: "fp32", torch.bfloat16: "bf16 mixed", torch.float16: "fp16 mixed"}[dtype]
    layout = "channels_last" if channels_last else "contiguous"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{name}: {precision} precision, {layout}, {torch.get_num_threads()} CPU threads"
