"""Tests for the headless run's live progress (helpers.progress) and its quiet kernels (helpers.runner)."""
from __future__ import annotations

import io
import json
import time

import nbformat

from helpers import progress, runner


class TimedStream(io.StringIO):
    """Records when each write happened, to tell lines shown while a notebook runs from those at its end."""

    def __init__(self, tty: bool = False):
        super().__init__()
        self.tty, self.times = tty, []

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        self.times.append((time.perf_counter(), text))
        return super().write(text)


def _notebook(path, cells):
    nb = nbformat.v4.new_notebook(cells=cells)
    nbformat.write(nb, path)
    return path


def test_report_writes_nothing_outside_a_headless_run(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    progress.report(run="x", epoch=1, epochs=2)
    assert list(tmp_path.iterdir()) == []


def test_a_training_reports_every_epoch(tmp_path, monkeypatch):
    import torch

    from helpers import classification
    from helpers.cache import CachedImages
    from helpers.config import Config
    from helpers.models import build_classifier

    file = tmp_path / "progress.json"
    monkeypatch.setenv(progress.PROGRESS_ENV, str(file))
    g = torch.Generator().manual_seed(0)
    data = CachedImages(images=torch.randint(0, 255, (16, 3, 16, 16), dtype=torch.uint8, generator=g), masks=None,
                        labels=torch.arange(16) % 2, keys=[str(i) for i in range(16)], sizes=[(16, 16)] * 16,
                        files=[""] * 16)
    cfg = Config(preset="smoke", image_size=16, epochs=3, batch_size=8, warmup_epochs=0, device="cpu",
                 run_dir=tmp_path / "runs", tensorboard="off")
    seen = []
    real_report = progress.report
    monkeypatch.setattr("helpers.engine.progress_report", lambda **f: (seen.append(dict(f)), real_report(**f)))
    classification.fit(build_classifier("resnet18", 2, small_stem=False), data, data, cfg, run_name="tiny",
                       progress=False)
    assert [s["epoch"] for s in seen] == [1, 2, 3] and all(s["epochs"] == 3 and s["run"] == "tiny" for s in seen)
    assert seen[0]["seconds_left"] > 0 and seen[-1]["seconds_left"] == 0
    last = json.loads(file.read_text())
    assert last["run"] == "tiny" and last["epoch"] == 3 and 0 <= last["val"] <= 1 and last["loss"] > 0
    assert "tiny epoch 3/3 loss" in progress.training_text(last)


def test_progress_lines_appear_while_a_notebook_runs_and_no_kernel_warning(tmp_path, monkeypatch, capfd):
    file = tmp_path / "progress.json"
    monkeypatch.setenv(progress.PROGRESS_ENV, str(file))
    nb = _notebook(tmp_path / "07_demo.ipynb", [
        nbformat.v4.new_markdown_cell("# 07 · A demo\n## Training"),
        nbformat.v4.new_code_cell("from helpers import progress\nimport time"),
        nbformat.v4.new_code_cell("progress.report(run='demo_run', epoch=1, epochs=3, loss=0.5, seconds_left=4)\n"
                                  "time.sleep(3)"),
    ])
    stream = TimedStream()
    with progress.RunProgress(["07_demo"], {"07_demo": 100.0}, file, stream=stream, every=0.3, tty=False) as shown:
        shown.start_notebook("07_demo")
        runner.execute_notebook(nb, tmp_path / "executed", progress=shown)
        ended = time.perf_counter()
        shown.end_notebook("07_demo")
    while_running = [text for t, text in stream.times if t < ended - 1.0 and "demo_run epoch 1/3" in text]
    assert while_running, stream.getvalue()  # seen during the notebook, seconds before its end
    assert "07_demo cell 2/2 (Training)" in while_running[-1] and "loss 0.500" in while_running[-1]
    assert "left" in while_running[-1]
    captured = capfd.readouterr()
    assert "without encryption" not in captured.out + captured.err  # the kernel talks over local sockets
    assert not file.exists()  # the run's progress file is removed at the end


def test_a_terminal_gets_one_updating_line(tmp_path):
    stream = TimedStream(tty=True)
    with progress.RunProgress(["01_x"], {}, tmp_path / "p.json", stream=stream, tty=True) as shown:
        shown.start_notebook("01_x")
        time.sleep(1.5)
        shown.message("== done")
    text = stream.getvalue()
    assert "\r\033[K01_x" in text and "\n" not in text.split("== done")[0]  # rewritten in place, no new lines
    assert "time left unknown (no earlier run)" in text


def test_the_remaining_time_comes_from_the_earlier_runs_stage_times(tmp_path):
    shown = progress.RunProgress(["00_a", "01_b", "02_c"], {"00_a": 10.0, "01_b": 600.0, "02_c": 300.0},
                                 tmp_path / "p.json", stream=io.StringIO(), tty=False)
    assert shown.remaining() == 910.0
    shown.end_notebook("00_a")
    shown.start_notebook("01_b")
    shown.current_started -= 100  # 100 s into 01
    assert 799 <= shown.remaining() <= 800.5
    assert progress.RunProgress(["00_a", "09_new"], {"00_a": 1.0}, tmp_path / "p.json",
                                stream=io.StringIO()).remaining() is None  # no earlier time for 09


def test_sections_and_durations():
    cells = [nbformat.v4.new_markdown_cell("# Title"), nbformat.v4.new_code_cell("1"),
             nbformat.v4.new_markdown_cell("text\n## Part two"), nbformat.v4.new_code_cell("2"),
             nbformat.v4.new_code_cell("3")]
    assert progress.sections(cells)[1] == ("Title", 1, 3) and progress.sections(cells)[4] == ("Part two", 3, 3)
    assert [progress.duration(s) for s in (5, 65, 3725)] == ["5 s", "1 min 05 s", "1 h 02 min"]
