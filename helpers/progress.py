"""Live progress of a headless run: the kernels report each training's epochs, the runner prints one line.

Inside a notebook the trainings show their own tqdm bars; a headless run (`python -m helpers run`)
cannot show those, so `report` (called by the training loop after every epoch) also writes the
training's state to the small JSON file named by $IMSUB_PROGRESS_FILE, which the runner sets for
each kernel. `RunProgress`, in the runner, combines it with the notebook, its section and cell, and
the stage times of the run folder's earlier runs: one updating line on a terminal, a plain line
every ~30 s ($IMSUB_PROGRESS_SECONDS) when the output is a file or a CI log.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

PROGRESS_ENV = "IMSUB_PROGRESS_FILE"
EVERY_ENV = "IMSUB_PROGRESS_SECONDS"


def report(**fields) -> None:
    """Write a training's progress for the headless runner; does nothing outside `python -m helpers run`."""
    path = os.environ.get(PROGRESS_ENV)
    if not path:
        return
    fields["time"] = time.time()
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(fields, f)
        os.replace(tmp, path)
    except OSError:  # progress is a courtesy: a full or read-only disk must not stop the training
        pass


def read_report(path: str | os.PathLike) -> dict:
    """The last progress a kernel wrote ({} when none or unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def duration(seconds: float) -> str:
    """12 s, 4 min 05 s, 1 h 03 min."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def training_text(p: dict) -> str:
    """One training's state: "classifier_baseline epoch 12/100 loss 1.234 val 0.450, ~3 min 10 s left"."""
    if not p.get("run"):
        return ""
    parts = [f"{p['run']} epoch {p.get('epoch', 0)}/{p.get('epochs', '?')}"]
    for key in ("loss", "val", "knn"):
        value = p.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            parts.append(f"{key} {value:.3f}")
    text = " ".join(parts)
    left = p.get("seconds_left")
    return text + (f", ~{duration(left)} left" if isinstance(left, (int, float)) and left > 0 else "")


def sections(cells: list) -> list[tuple[str, int, int]]:
    """Per cell: (the heading of its section, its number among the code cells from 1, the code cell count)."""
    heading, n, found = "", 0, []
    total = sum(c.get("cell_type") == "code" for c in cells)
    for cell in cells:
        source = "".join(cell.get("source", ""))
        if cell.get("cell_type") == "markdown":
            titles = [line.lstrip("#").strip() for line in source.splitlines() if line.startswith("#")]
            heading = titles[-1] if titles else heading
        else:
            n += cell.get("cell_type") == "code"
        found.append((heading, n, total))
    return found


class RunProgress:
    """The runner's progress line: notebook, section, cell, training, elapsed and estimated remaining time."""

    def __init__(self, notebooks: list[str], earlier: dict[str, float], progress_file: Path,
                 stream=None, every: float | None = None, tty: bool | None = None):
        self.notebooks, self.earlier, self.file = list(notebooks), dict(earlier), Path(progress_file)
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.every = float(os.environ.get(EVERY_ENV) or 30.0) if every is None else every
        self.started = time.perf_counter()
        self.current, self.current_started, self.cell = "", 0.0, ("", 0, 0)
        self.done: set[str] = set()
        self._lock, self._stop = threading.Lock(), threading.Event()
        self._thread: threading.Thread | None = None
        self._shown = False

    # --- events from the runner
    def start_notebook(self, name: str) -> None:
        """A notebook's kernel starts."""
        self.file.unlink(missing_ok=True)
        with self._lock:
            self.current, self.current_started, self.cell = name, time.perf_counter(), ("", 0, 0)

    def start_cell(self, heading: str, number: int, total: int) -> None:
        """A code cell starts (nbclient's on_cell_start)."""
        with self._lock:
            self.cell = (heading, number, total)

    def end_notebook(self, name: str) -> None:
        """A notebook finished (or was skipped)."""
        with self._lock:
            self.done.add(name)
            self.current = ""

    # --- what is shown
    def remaining(self) -> float | None:
        """Seconds left by the earlier runs' stage times (None while a notebook left has no earlier time)."""
        left = [nb for nb in self.notebooks if nb not in self.done]
        if not left or any(nb not in self.earlier for nb in left):
            return None
        total = 0.0
        for nb in left:
            total += self.earlier[nb]
            if nb == self.current:
                total -= min(self.earlier[nb], time.perf_counter() - self.current_started)
        training_left = read_report(self.file).get("seconds_left") if self.current else None
        return max(total, float(training_left or 0.0))

    def line(self) -> str:
        """The progress line as it stands."""
        with self._lock:
            current, (heading, number, total) = self.current, self.cell
        parts = []
        if current:
            where = f"{current} cell {number}/{total}" if total else current
            parts.append(where + (f" ({heading})" if heading else ""))
            training = training_text(read_report(self.file))
            if training:
                parts.append(training)
        left = self.remaining()
        parts.append(f"run {duration(time.perf_counter() - self.started)}, "
                     + (f"~{duration(left)} left" if left is not None else "time left unknown (no earlier run)"))
        return " | ".join(parts)

    def message(self, text: str) -> None:
        """Print a line of the runner's own (clearing the progress line first on a terminal)."""
        with self._lock:
            if self.tty and self._shown:
                self.stream.write("\r\033[K")
                self._shown = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def _show(self) -> None:
        text = self.line()
        with self._lock:
            if self.tty:
                width = shutil.get_terminal_size((120, 20)).columns - 1
                self.stream.write("\r\033[K" + text[:width])
                self._shown = True
            else:
                self.stream.write(f"   {text}\n")
            self.stream.flush()

    def _loop(self) -> None:
        wait = 1.0 if self.tty else self.every
        while not self._stop.wait(wait):
            self._show()

    def __enter__(self) -> RunProgress:
        self._thread = threading.Thread(target=self._loop, name="run-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        if self.tty and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
        self.file.unlink(missing_ok=True)
