"""Tests for helpers.runner's guards: one run per run folder, and what a killed run leaves behind."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import runner

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "IMSUB_ROOT": str(REPO)}


def _sleeper(run_dir: Path, parent_pid: int) -> subprocess.Popen:
    """A stand-in kernel: a process with the run folder and a JPY_PARENT_PID in its environment."""
    env = {**ENV, "IMSUB_RUN_DIR": str(run_dir), "JPY_PARENT_PID": str(parent_pid)}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_clean_up_ends_orphaned_kernels_and_removes_partial_files(tmp_path, capsys):
    pytest.importorskip("psutil")
    run_dir = tmp_path / "runs" / "smoke"
    run_dir.mkdir(parents=True)
    (run_dir / "classifier_baseline.pt.tmp").write_bytes(b"half a checkpoint")
    (run_dir / "classifier_baseline.pt").write_bytes(b"the previous checkpoint")
    orphan = _sleeper(run_dir, _dead_pid())  # its runner is gone
    attached = _sleeper(run_dir, os.getpid())  # its runner (this test) is alive
    other = _sleeper(tmp_path / "elsewhere", _dead_pid())  # another run folder's orphan
    try:
        time.sleep(0.5)
        runner._clean_up_after_kill(run_dir)
        assert orphan.wait(10) is not None
        assert attached.poll() is None and other.poll() is None
    finally:
        for proc in (orphan, attached, other):
            proc.kill()
            proc.wait(10)
    out = capsys.readouterr().out
    assert f"ending kernel {orphan.pid} left running by an interrupted run" in out
    assert "removing classifier_baseline.pt.tmp, a partial file left by an interrupted run" in out
    assert sorted(p.name for p in run_dir.iterdir()) == ["classifier_baseline.pt"]


def test_a_second_run_on_the_same_run_folder_stops_and_changes_nothing(tmp_path, monkeypatch):
    from helpers.config import get_config

    monkeypatch.setenv("IMSUB_ROOT", str(REPO))
    run_dir = get_config("smoke", runs_dir=tmp_path / "out" / "runs").run_dir  # out/runs/<dataset>/smoke
    folders = ["out", "out/runs", f"out/runs/{run_dir.parent.name}", f"out/runs/{run_dir.parent.name}/smoke"]
    hold = textwrap.dedent("""
        import sys
        from helpers.fileops import folder_lock
        with folder_lock(sys.argv[1]):
            (__import__("pathlib").Path(sys.argv[1]) / "classifier_baseline.pt").write_bytes(b"first run's")
            print("locked", flush=True)
            sys.stdin.read()
    """)
    first = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert first.stdout.readline().strip() == "locked"
        second = subprocess.run([sys.executable, "-m", "helpers", "run", "--preset", "smoke", "--out",
                                 str(tmp_path / "out")], capture_output=True, text=True, env=ENV, timeout=120)
        assert second.returncode == 3, second.stderr
        assert f"{run_dir}: this run folder is in use by process {first.pid}" in second.stderr
        assert "Two runs must not share one run folder" in second.stderr
        assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == folders + [
            f"{folders[-1]}/classifier_baseline.pt", f"{folders[-1]}/run.lock"]
        assert (run_dir / "classifier_baseline.pt").read_bytes() == b"first run's"
        assert first.poll() is None  # the first run goes on
    finally:
        first.stdin.close()
        first.wait(10)
    assert first.returncode == 0 and not (run_dir / "run.lock").exists()


def test_a_dataset_without_unlabeled_images_runs_end_to_end(tmp_path, small_demo):
    """No train-unlabeled/: the runner skips 03 (its metadata needs unlabeled images), 04 and 05 go on.

    With the final fit as a retrain (IMSUB_FINAL_FIT_FRACTION=1; the notebooks' smoke runs take the
    cpu preset's continue mode), so that notebook 05's retrain runs too: it retrains 02's classifier
    and the chosen U-Net on all labeled images and submits them.
    """
    import json
    import shutil

    data = tmp_path / "ImageNet-Subset"
    shutil.copytree(small_demo, data, ignore=shutil.ignore_patterns("train-unlabeled"))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "helpers", "run", "--preset", "smoke", "--data-root", str(data),
                           "--out", str(out)], env={**ENV, "IMSUB_INIT": "ssl", "IMSUB_FINAL_FIT": "1", "IMSUB_FINAL_FIT_FRACTION": "1"},
                          capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "skipped: the dataset has no unlabeled images" in done.stdout
    summary = json.loads(next(out.glob("runs/*/*/summary.json")).read_text())  # runs/<dataset>/<preset>
    assert list(summary["skipped"]) == ["03_pseudo_labeling"]
    assert "03_pseudo_labeling" not in summary["stage_seconds"] and "05_submission" in summary["stage_seconds"]
    assert "classifier" not in summary  # 04 and 05 used the labeled-only classifier (02's, init "ssl")
    assert (out / "submission" / "classification.json").is_file()
    executed = json.loads((out / "notebooks" / "05_submission.ipynb").read_text())
    assert "classifier_ssl" in json.dumps(executed["cells"])
    assert summary["final_classifier"] == "final_classifier_ssl"
    assert summary["final_segmenter"] == "final_" + summary["segmenter"]
    assert "submitted: final fit on all labeled images" in done.stdout
    saved = summary["checkpoints"]  # helpers.checkpoints' log of every training's saves, totalled
    assert saved["trainings"] >= 6 and saved["saves"] >= saved["trainings"] and saved["mb_local"] > 0
    assert "checkpoints written (this run folder)" in done.stdout
    assert "submitting the final fits on all" in json.dumps(executed["cells"])
    # the main job leaves out 01's comparison without augmentation (IMSUB_SIDE_RUNS=0): no later step uses it
    first = json.dumps(json.loads((out / "notebooks" / "01_classifier_baseline.ipynb").read_text())["cells"])
    assert "skipped in the main job" in first
    assert not list(out.glob("runs/*/*/classifier_no_augmentation*"))


def test_the_first_run_on_a_fresh_checkout_uses_the_run_folder_of_every_later_run(tmp_path, monkeypatch):
    """The demo is generated before the run folder is named: a first run killed midway resumes."""
    from .conftest import SMALL_DEMO
    from helpers import demo
    from helpers.config import get_config

    monkeypatch.setenv("IMSUB_ROOT", str(tmp_path))  # no demo data yet
    real_ensure_demo = demo.ensure_demo  # generated small here: its size does not matter to the order
    monkeypatch.setattr(demo, "ensure_demo", lambda out, **params: real_ensure_demo(out, **{**params, **SMALL_DEMO}))
    for name in ("IMSUB_RUN_DIR", "IMSUB_RUNS_DIR", "IMSUB_DATA_ROOT", "IMSUB_INIT"):
        monkeypatch.delenv(name, raising=False)
    seen = []
    monkeypatch.setattr(runner, "list_notebooks", lambda only=None: [REPO / "notebooks" / "00_data_exploration.ipynb"])
    monkeypatch.setattr(runner, "execute_notebook", lambda nb, executed, timeout=None, progress=None: seen.append(
        os.environ["IMSUB_RUN_DIR"]) or 0.0)
    runner.run("smoke", out=str(tmp_path / "out"))
    later = get_config("smoke", runs_dir=tmp_path / "out" / "runs").run_dir  # the demo exists now
    assert seen == [str(later.resolve())] and later.parent.name.startswith("demo-")


def test_the_summary_leaves_out_rows_without_a_value_and_says_n_a_for_missing_masks():
    text = runner.format_summary({"baseline_val_acc": 0.5, "pseudo_precision": float("nan"),
                                  "test_accuracy": 0.61, "test_miou": None})
    assert "pseudo-label precision" not in text and "nan" not in text  # no truth for it: no row
    assert "TEST accuracy (truth)" in text and "0.610" in text
    assert "TEST mIoU (truth)" in text and "n/a (no masks in the truth)" in text
    assert "TEST mIoU" not in runner.format_summary({"baseline_val_acc": 0.5})  # not scored at all: no row


def test_the_runner_starts_without_compiling_rfc3987_grammars():
    """nbformat's jsonschema would import rfc3987_syntax (1-2 s of Lark grammars per start); the runner blocks it."""
    code = ("import sys, helpers.runner, nbclient, nbformat; "
            "nbformat.validate(nbformat.read(sys.argv[1], as_version=4)); "
            "print(sorted(m for m in ('rfc3987_syntax', 'lark') if sys.modules.get(m)))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO / "notebooks" / "03_pseudo_labeling.ipynb")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_a_stopped_run_continues_at_the_notebook_it_stopped_in(tmp_path, monkeypatch, small_demo):
    """Notebooks finished before a stop are not executed again, unless their cells, the code or a setting changed."""
    for name in ("IMSUB_RUN_DIR", "IMSUB_RUNS_DIR", "IMSUB_INIT", "IMSUB_EPOCHS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IMSUB_ROOT", str(REPO))
    notebooks = sorted((REPO / "notebooks").glob("0[0-3]_*.ipynb"))  # 00-03: enough for the order
    monkeypatch.setattr(runner, "list_notebooks", lambda only=None: notebooks)
    seen, fail_at = [], {"02_self_supervised"}

    def execute(nb, executed, timeout=None, progress=None):
        seen.append(nb.stem[:2])
        if nb.stem in fail_at:
            fail_at.discard(nb.stem)
            raise RuntimeError("the kernel died")
        executed.mkdir(parents=True, exist_ok=True)
        (executed / nb.name).write_text("{}")
        return 0.0

    monkeypatch.setattr(runner, "execute_notebook", execute)
    start = lambda **kw: runner.run("smoke", str(small_demo), str(tmp_path / "out"), **kw)  # noqa: E731
    with pytest.raises(RuntimeError, match="02_self_supervised.ipynb failed"):
        start()
    assert seen == ["00", "01", "02"]
    start()  # continues at 02
    assert seen[3:] == ["02", "03"]
    start()  # a finished run runs in full again
    assert seen[5:] == ["00", "01", "02", "03"]
    fail_at.add("01_classifier_baseline")
    with pytest.raises(RuntimeError):
        start()
    monkeypatch.setenv("IMSUB_EPOCHS", "3")  # another setting: nothing counts as finished
    start()
    assert seen[9:] == ["00", "01", "00", "01", "02", "03"]
    fail_at.add("03_pseudo_labeling")
    with pytest.raises(RuntimeError):
        start()
    start(again=True)  # --again: every notebook
    assert seen[15:] == ["00", "01", "02", "03", "00", "01", "02", "03"]


def test_socket_folders_of_killed_runners_are_removed(monkeypatch):
    import shutil
    import tempfile

    import nbformat

    # A short temp folder: a Unix socket's path must stay under ~107 characters (tmp_path under xdist is longer).
    short = Path(tempfile.mkdtemp(prefix="sk-"))
    monkeypatch.setattr(tempfile, "tempdir", str(short))
    try:
        stale = short / f"{runner.SOCKETS_PREFIX}{_dead_pid()}-x1"  # its runner was killed
        live = short / f"{runner.SOCKETS_PREFIX}{os.getppid()}-x2"  # a runner still running
        other = short / "imsub-kernel-notes"
        for folder in (stale, live, other):
            folder.mkdir()
            (folder / "kernel-1").write_text("")
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), short / "01_x.ipynb")
        runner.execute_notebook(short / "01_x.ipynb", short / "executed")  # a run's next notebook
        assert not stale.exists() and live.is_dir() and other.is_dir()
        assert not list(short.glob(f"{runner.SOCKETS_PREFIX}{os.getpid()}-*"))  # its own folder is gone too
    finally:
        shutil.rmtree(short, ignore_errors=True)


def test_a_deep_temp_folder_falls_back_to_tcp(monkeypatch, tmp_path):
    import tempfile

    import nbformat

    # $TMPDIR so deep that a Unix socket's path in it would not open (sun_path holds ~104 bytes).
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    assert not runner.ipc_path_fits(deep / f"{runner.SOCKETS_PREFIX}123-abcdefgh")
    assert runner.kernel_transport(deep).KernelManager.get("transport") != "ipc"
    assert runner.kernel_transport("/tmp/sk").KernelManager.transport == "ipc"
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6 * 7)")]), deep / "01_x.ipynb")
    runner.execute_notebook(deep / "01_x.ipynb", deep / "executed")
    assert "42" in str(nbformat.read(deep / "executed" / "01_x.ipynb", as_version=4).cells[0].outputs)
