"""Checkpoint files: atomic save, safe load (weights_only), clear errors for missing or mismatched files."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from .fileops import RecordingWriter, write_error

# Who writes a checkpoint, by the first word of its file name (the run_name); used in error messages.
_PRODUCERS = {
    "classifier_pseudo": "notebooks/02_pseudo_labeling.ipynb (or `python -m helpers run`)",
    "classifier": "notebooks/01_classifier_baseline.ipynb (or `python -m helpers run`)",
    "unet": "notebooks/03_unet_segmentation.ipynb (or `python -m helpers run`)",
}


_ELSEWHERE = "IMSUB_RUN_DIR (checkpoints), IMSUB_CACHE_DIR (caches), or `python -m helpers run --out DIR`"


def _producer(path: Path) -> str:
    """A hint naming the notebook or function that writes this checkpoint."""
    stem = path.stem.lower()
    for prefix, who in _PRODUCERS.items():
        if stem.startswith(prefix):
            return who
    return f"the training run named {path.stem!r} (helpers.classification.fit(..., run_name={path.stem!r}))"


def save_checkpoint(path: str | os.PathLike, payload: dict) -> Path:
    """Write `payload` with torch.save atomically (`<name>.tmp` in the same folder, then os.replace)."""
    path = Path(path)
    if not isinstance(payload, dict):
        raise TypeError(f"{path}: a checkpoint payload must be a dict, got {type(payload).__name__}")
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            writer = RecordingWriter(f)
            torch.save(payload, writer)
        os.replace(tmp, path)
    except BaseException as exc:
        # A crash (or Ctrl-C) mid-write must leave the previous checkpoint as it was.
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, (OSError, RuntimeError)):  # torch reports a failed write as a RuntimeError
            reason = writer.error if writer is not None and writer.error is not None else exc
            raise write_error(path, reason, "checkpoint", _ELSEWHERE) from exc
        raise
    return path


def checkpoint_num_classes(payload: dict) -> int | None:
    """The class count recorded in a checkpoint's model_spec (None if it has no spec)."""
    spec = payload.get("model_spec") if isinstance(payload, dict) else None
    if isinstance(spec, dict) and "num_classes" in spec:
        return int(spec["num_classes"])
    return None


def load_checkpoint(path: str | os.PathLike, num_classes: int | None = None, map_location="cpu") -> dict:
    """Load a checkpoint (weights_only=True); check its model_spec's class count against `num_classes`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"checkpoint {path} not found; it is written by {_producer(path)}. Run that first, "
            "or point run_dir (IMSUB_RUN_DIR) at the folder that holds it.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem is reported with the file name
        raise ValueError(
            f"checkpoint {path} cannot be read with torch.load(weights_only=True) ({exc}); "
            "it is damaged or was not written by helpers.checkpoints.save_checkpoint: delete it and "
            "rerun the step that produces it") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {path} holds a {type(payload).__name__}, expected a dict; delete it")
    found = checkpoint_num_classes(payload)
    if num_classes is not None and found is not None and found != int(num_classes):
        raise ValueError(
            f"checkpoint {path} was trained for {found} classes but the data has {num_classes}; "
            "delete it or point run_dir elsewhere")
    return payload
