"""Checkpoint files: atomic save, safe load (weights_only), clear errors, and the files of a training run.

`TrainingFiles` holds the files of the policy `helpers.engine.fit_task` follows: a small best-weights
file written only when the best improved (and is not the epoch just saved, which the state holds),
a resume state written at most every `every_seconds` and after the last epoch, both on local disk
and copied to a persistent mirror folder (Drive, /kaggle/working). A training with other settings
sets the earlier one's files aside as `<run>@<tag>.*` (`set_aside`, `take_back`; helpers.engine decides).
`read_save_log` totals what checkpointing cost a run (the rows `TrainingFiles.log` appends).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .fileops import RecordingWriter, write_error

# Who writes a checkpoint, by the first word of its file name (the run_name); used in error messages.
_PRODUCERS = {
    "classifier_pseudo": "notebooks/03_pseudo_labeling.ipynb (or `python -m helpers run`)",
    "classifier_ssl": "notebooks/02_self_supervised.ipynb (or `python -m helpers run`)",
    "classifier": "notebooks/01_classifier_baseline.ipynb (or `python -m helpers run`)",
    "unet": "notebooks/04_unet_segmentation.ipynb (or `python -m helpers run`)",
    "ssl": "notebooks/02_self_supervised.ipynb (or `python -m helpers run`)",
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


# ----------------------------------------------------------------------------- training files
STATE_SUFFIX = ".resume.pt"
HISTORY_SUFFIX = ".history.csv"  # per-epoch records beside the checkpoints (helpers.tracking writes them)
RUN_FILE_SUFFIXES = (".pt", STATE_SUFFIX, HISTORY_SUFFIX)  # a training's files: weights, state, history
SAVE_LOG = "checkpoint_log.csv"  # one row per training call that saved: what checkpointing cost
_LOG_FIELDS = ("run", "saves", "weights_writes", "mb_local", "mb_mirrored", "seconds")


def _clock() -> float:
    """The clock that throttles saves (a function, so that a benchmark can simulate time)."""
    return time.monotonic()


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> int:
    """Copy a file through `<dst>.tmp` + os.replace (a reader never sees half a file); returns the bytes copied."""
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst.stat().st_size


def mirror_file(path: str | os.PathLike, mirror_dir: str | os.PathLike | None) -> int:
    """Copy `path` into `mirror_dir` (atomically); a failing mirror (Drive gone, read-only) warns, never raises.

    Returns the bytes copied (0 without a mirror or when the copy failed).
    """
    if mirror_dir is None:
        return 0
    path = Path(path)
    target = Path(mirror_dir) / path.name
    try:
        return copy_atomic(path, target)
    except OSError as exc:
        warnings.warn(f"could not copy {path} to the mirror folder {mirror_dir} ({exc}); the run goes on "
                      "and tries again at the next checkpoint, but until then a restarted session "
                      "resumes from an older copy", stacklevel=2)
        return 0


def restore_missing(run_dir: str | os.PathLike, mirror_dir: str | os.PathLike | None,
                    skip_suffix: str = STATE_SUFFIX) -> list[Path]:
    """Copy files the mirror holds and `run_dir` lacks into `run_dir` (a new session); returns what was copied.

    Files ending in `skip_suffix` (the large resume states) and the weights of trainings set aside
    (`<run>@<tag>.pt`) are left for `TrainingFiles` to fetch when a training needs them.
    """
    if mirror_dir is None or not Path(mirror_dir).is_dir():
        return []
    skip = (".tmp", skip_suffix) if skip_suffix else (".tmp",)
    copied = []
    for src in sorted(Path(mirror_dir).iterdir()):
        dst = Path(run_dir) / src.name
        aside = "@" in src.name and src.name.endswith(".pt")
        if src.is_file() and not src.name.endswith(skip) and not aside and not dst.exists():
            copy_atomic(src, dst)
            copied.append(dst)
    return copied


@dataclass
class SaveStats:
    """What a training's checkpointing cost: saves, files written, bytes, seconds."""

    saves: int = 0
    weights_writes: int = 0
    state_writes: int = 0
    bytes_local: int = 0
    bytes_mirrored: int = 0
    seconds: float = 0.0


class TrainingFiles:
    """The checkpoint files of one training run: local, throttled by time, mirrored to a persistent folder.

    `<run_name>.pt` holds the best weights and the model_spec (what inference and encoder transfer
    load); fit_task rewrites it only when a better epoch has been found since it was last written.
    `<run_name>.resume.pt` holds what continuing needs (current weights, optimizer, EMA, scaler, RNG,
    history). A save writes the weights file first, then the state: a kill in between leaves a
    weights file newer than the state, which resuming accepts (see helpers.engine), never an older one.
    """

    def __init__(self, run_dir: str | os.PathLike, run_name: str, *, every_seconds: float = 0.0,
                 mirror_dir: str | os.PathLike | None = None):
        self.weights = Path(run_dir) / f"{run_name}.pt"
        self.state = Path(run_dir) / f"{run_name}{STATE_SUFFIX}"
        self.every_seconds = float(every_seconds)
        self.mirror_dir = Path(mirror_dir) if mirror_dir else None
        self.stats = SaveStats()
        self._last = self._epoch_end = _clock()

    def due(self, last_epoch: bool) -> bool:
        """Whether to save after the epoch that just ended: after the last one always (every_seconds 0: always).

        Otherwise when waiting one more epoch (as long as this one) would leave more than
        every_seconds since the last save: no stretch of unsaved work exceeds every_seconds.
        """
        now = _clock()
        epoch, self._epoch_end = now - self._epoch_end, now
        return last_epoch or self.every_seconds <= 0 or now - self._last + epoch > self.every_seconds

    def save(self, state: dict, weights: dict | None = None) -> None:
        """Write the weights payload (when given), then the state payload, locally and then to the mirror."""
        start = time.perf_counter()
        written = ([self._write(self.weights, weights)] if weights is not None else []) + [
            self._write(self.state, state)]
        self._mirror(written)
        self.stats.saves += 1
        self.stats.state_writes += 1
        self.stats.seconds += time.perf_counter() - start
        self._last = _clock()

    def save_weights(self, weights: dict) -> None:
        """Write only the weights file (locally, then to the mirror)."""
        start = time.perf_counter()
        self._mirror([self._write(self.weights, weights)])
        self.stats.seconds += time.perf_counter() - start

    def _write(self, path: Path, payload: dict) -> Path:
        save_checkpoint(path, payload)
        self.stats.bytes_local += path.stat().st_size
        self.stats.weights_writes += path == self.weights
        return path

    def _mirror(self, paths: list[Path]) -> None:
        for path in paths:  # in the order written: the mirror never holds weights older than its state
            self.stats.bytes_mirrored += mirror_file(path, self.mirror_dir)

    def log(self) -> None:
        """Append this call's saves, weights writes, MB written (locally, to the mirror) and seconds to run_dir/checkpoint_log.csv."""
        st = self.stats
        if not (st.saves or st.weights_writes):
            return
        path = self.weights.parent / SAVE_LOG
        if not path.is_file() and self.mirror_dir is not None and (self.mirror_dir / SAVE_LOG).is_file():
            with contextlib.suppress(OSError):  # a new session: continue the rows the mirror kept
                copy_atomic(self.mirror_dir / SAVE_LOG, path)
        row = [self.weights.stem, st.saves, st.weights_writes, round(st.bytes_local / 1e6, 1),
               round(st.bytes_mirrored / 1e6, 1), round(st.seconds, 2)]
        old = path.read_text() if path.is_file() else ",".join(_LOG_FIELDS) + "\n"
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(old + ",".join(map(str, row)) + "\n")
            os.replace(tmp, path)
        except OSError as exc:  # a record, not a checkpoint: never worth stopping a finished training for
            warnings.warn(f"could not write {path} ({exc})", stacklevel=2)
            return
        mirror_file(path, self.mirror_dir)

    def set_aside(self, tag: str) -> str:
        """Rename this training's files to `<run>@<tag>.*` (locally, in the mirror, its TensorBoard folder); returns that name.

        A training whose settings changed keeps the earlier one this way instead of overwriting it.
        """
        run = self.weights.name.removesuffix(".pt")
        self._rename(run, f"{run}@{tag}", RUN_FILE_SUFFIXES)  # weights first: see _rename
        return f"{run}@{tag}"

    def take_back(self, tag: str) -> bool:
        """Rename a training set aside as `<run>@<tag>` back to `<run>` (locally or in the mirror); whether there was one."""
        run = self.weights.name.removesuffix(".pt")
        return self._rename(f"{run}@{tag}", run, (STATE_SUFFIX, ".pt", HISTORY_SUFFIX))  # state first

    def _rename(self, old: str, new: str, suffixes: tuple[str, ...]) -> bool:
        # The order makes a kill between two renames harmless: set aside, the weights go first (the
        # training keeps its state, so the next start sets it aside again); taken back, the state goes
        # first (the training resumes, its weights file re-chosen with a warning). Neither overwrites a file.
        found = False
        folders = [self.weights.parent] + ([self.mirror_dir] if self.mirror_dir is not None else [])
        for folder in folders:
            for suffix in suffixes:
                src = folder / f"{old}{suffix}"
                try:
                    if src.is_file():
                        os.replace(src, folder / f"{new}{suffix}")
                        found = True
                except OSError as exc:
                    if folder == self.weights.parent:
                        raise
                    warnings.warn(f"could not rename {src} in the mirror folder ({exc}); the local copy "
                                  "is renamed, the mirror's may be overwritten", stacklevel=3)
        board = self.weights.parent / "tensorboard" / old
        if board.is_dir():
            target = board.with_name(new)
            if target.exists():
                shutil.rmtree(target)
            os.replace(board, target)
        return found

    def _fetch(self, path: Path) -> Path | None:
        """The local file, copied from the mirror first when only the mirror has it; None if neither."""
        if not path.is_file() and self.mirror_dir is not None and (self.mirror_dir / path.name).is_file():
            copy_atomic(self.mirror_dir / path.name, path)
            print(f"restored {path.name} from {self.mirror_dir}")
        return path if path.is_file() else None

    def load_state(self, num_classes: int | None = None) -> tuple[dict, Path] | None:
        """(payload, file) to resume from: the state file, else a weights file of the older one-file format."""
        path = self._fetch(self.state)
        if path is not None:
            return load_checkpoint(path, num_classes=num_classes), path
        path = self._fetch(self.weights)
        if path is not None:
            payload = load_checkpoint(path, num_classes=num_classes)
            if "train" in payload:  # written before the split into two files: best weights + state
                return payload, path
        return None

    def load_weights(self, num_classes: int | None = None) -> dict | None:
        """The weights payload (fetched from the mirror if needed), None when there is none."""
        path = self._fetch(self.weights)
        return load_checkpoint(path, num_classes=num_classes) if path is not None else None


def save_log_rows(run_dir: str | os.PathLike) -> list[dict]:
    """The rows of run_dir/checkpoint_log.csv as dicts (run, saves, weights_writes, mb_local, mb_mirrored, seconds)."""
    path = Path(run_dir) / SAVE_LOG
    rows, bad = [], 0
    for line in (path.read_text().splitlines()[1:] if path.is_file() else []):
        fields = line.split(",")
        try:
            if len(fields) != len(_LOG_FIELDS):
                raise ValueError(line)
            rows.append({"run": fields[0], **{k: float(v) for k, v in zip(_LOG_FIELDS[1:], fields[1:])}})
        except ValueError:
            bad += 1
    if bad:  # a record, not a checkpoint: the totals go on without the rows it cannot read
        warnings.warn(f"{path}: skipped {bad} row(s) that are not '{','.join(_LOG_FIELDS)}' with numbers; "
                      "the checkpoint totals leave them out (delete the file to start the record afresh)",
                      stacklevel=2)
    return rows


def read_save_log(run_dir: str | os.PathLike) -> dict:
    """Totals of run_dir/checkpoint_log.csv: trainings, saves, weights writes, MB written locally and to the mirror, seconds."""
    rows = save_log_rows(run_dir)
    return {"trainings": len(rows), **{k: round(sum(r[k] for r in rows), 2) for k in _LOG_FIELDS[1:]}}
