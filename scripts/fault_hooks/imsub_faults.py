"""Fault-injection hooks: log what a run does, and stop it dead at a chosen point so it can be killed there.

Installed by sitecustomize.py (same folder) in every process of a run when IMSUB_FAULT_DIR is set.
Every hook appends one JSON line to $IMSUB_FAULT_DIR/events.jsonl ({"t", "pid", "ev", "point",
"path", ...}); the harness reads them to know where a kill landed and what the next attempt resumed.

IMSUB_FAULT_ARM="point[@text][#n]" pauses the n-th time (default 1) this process reaches `point`
with `text` in its path, after logging {"ev": "hit"}: the harness kills the run during the pause.
Training (helpers.engine.fit_task, as classification and segmentation call it) is logged too.
The points, each inside the operation it names:

    cache-build        while a decoded-image cache is built (after 5 images are decoded)
    cache-write        half of a cache file written (to its `.tmp`, as helpers writes it)
    checkpoint-write   half of a checkpoint written (to its `.tmp`, as helpers writes it)
    submission-write   20 masks written into the temporary submission folder
    submission-swap    the old submission folder moved aside, the new one not yet in place
"""
from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from pathlib import Path

_lock = threading.Lock()
_counts: dict[str, int] = {}


def _log(ev: str, point: str = "", path: str = "", **extra) -> None:
    line = json.dumps({"t": time.time(), "pid": os.getpid(), "ev": ev, "point": point, "path": str(path), **extra})
    fd = os.open(Path(os.environ["IMSUB_FAULT_DIR"]) / "events.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())  # one O_APPEND write per line: lines never interleave
    finally:
        os.close(fd)


def _armed(point: str, path: str) -> bool:
    """Whether this call is the armed one (counts matching calls of this process)."""
    m = re.fullmatch(r"([\w-]+)(?:@([^#]*))?(?:#(\d+))?", os.environ.get("IMSUB_FAULT_ARM", ""))
    if not m or m.group(1) != point or (m.group(2) and m.group(2) not in str(path)):
        return False
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        return _counts[point] == int(m.group(3) or 1)


def _hold(point: str, path: str) -> None:
    """Log the hit and wait to be killed (then go on, so that a harness bug cannot hang a run forever)."""
    _log("hit", point, path)
    time.sleep(float(os.environ.get("IMSUB_FAULT_HOLD", "120")))
    _log("hit-timeout", point, path)


def _target(f) -> str:
    """The file name behind torch.save's target (a path, a file, or a wrapper with .file)."""
    if isinstance(f, (str, os.PathLike)):
        return str(f)
    inner = getattr(f, "file", f)
    return str(getattr(inner, "name", ""))


def install() -> None:
    """Wrap torch.save / torch.load, os.replace / os.rename, the cache build and the mask writer."""
    import torch

    import helpers.cache as cache
    import helpers.classification as classification
    import helpers.segmentation as segmentation
    import helpers.submission as submission

    cache_dir = os.environ.get("IMSUB_CACHE_DIR", "\0")
    run_dir = os.environ.get("IMSUB_RUN_DIR", "\0")
    real_save, real_load = torch.save, torch.load
    real_replace, real_rename = os.replace, os.rename
    real_build, real_decode, real_write_mask = cache._build, cache.load_image_with_size, submission.write_mask

    def save(obj, f, *args, **kwargs):
        path = _target(f)
        if not path.startswith((cache_dir, run_dir)):
            return real_save(obj, f, *args, **kwargs)
        point = "cache-write" if path.startswith(cache_dir) else "checkpoint-write"
        _log("begin", point, path)
        if _armed(point, path):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            data = buf.getvalue()
            f = open(path, "wb") if isinstance(f, (str, os.PathLike)) else f  # noqa: SIM115
            f.write(data[: len(data) // 2])
            f.flush()
            _hold(point, path)
            f.write(data[len(data) // 2:])
        else:
            real_save(obj, f, *args, **kwargs)
        _log("end", point, path)

    def load(f, *args, **kwargs):
        out = real_load(f, *args, **kwargs)
        path = _target(f)
        if isinstance(out, dict):
            kind = "cache-read" if path.startswith(cache_dir) else "loaded"
            _log(kind, "", path, epoch=out.get("epoch"), epochs=out.get("epochs"))
        return out

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        _log("saved", "", dst)

    def rename(src, dst, *args, **kwargs):
        real_rename(src, dst, *args, **kwargs)
        if re.fullmatch(r"\..+\.(old|tmp)-\d+", Path(src).name) or re.fullmatch(r"\..+\.old-\d+", Path(dst).name):
            _log("rename", "", dst, src=str(src))
        if re.fullmatch(r"\..+\.old-\d+", Path(dst).name) and _armed("submission-swap", str(src)):
            _hold("submission-swap", str(src))

    state = {"desc": "", "n": 0}

    def build(samples, size, num_classes, with_masks, skip_broken, progress, workers, desc):
        state["desc"], state["n"] = desc, 0
        _log("begin", "cache-build", desc)
        result = real_build(samples, size, num_classes, with_masks, skip_broken, progress, workers, desc)
        _log("end", "cache-build", desc)
        return result

    def decode(path, *args, **kwargs):
        with _lock:
            state["n"] += 1
            n = state["n"]
        if n == 5 and _armed("cache-build", state["desc"]):
            _hold("cache-build", state["desc"])
        return real_decode(path, *args, **kwargs)

    def training(real):
        def fit_task(model, task, cfg, *args, run_name: str, **kwargs):
            _log("begin", "training", run_name)
            result = real(model, task, cfg, *args, run_name=run_name, **kwargs)
            _log("end", "training", run_name)
            return result
        return fit_task

    written = {"n": 0}

    def write_mask(path, ids):
        real_write_mask(path, ids)
        with _lock:
            written["n"] += 1
            n = written["n"]
        if n == 1:
            _log("begin", "submission-write", Path(path).parent.parent)
        if n == 20 and _armed("submission-write", str(path)):
            _hold("submission-write", str(path))

    torch.save, torch.load = save, load
    os.replace, os.rename = replace, rename
    cache._build, cache.load_image_with_size = build, decode
    submission.write_mask = write_mask
    classification.fit_task, segmentation.fit_task = training(classification.fit_task), training(segmentation.fit_task)
    _log("start", "", os.environ.get("IMSUB_RUN_DIR", ""))
