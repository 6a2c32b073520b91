"""Tests for helpers.fileops: the folder lock (live holder, stale lock, no flock) and write errors."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import helpers.fileops as fileops
from helpers.fileops import FolderInUseError, WriteError, folder_lock, write_error

REPO = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from helpers.fileops import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()  # hold until the test closes stdin (or kills us)
""")


@pytest.fixture
def holder(tmp_path):
    """Another process holding tmp_path/run's lock; yields the Popen."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def test_a_second_holder_is_told_who_holds_it(tmp_path, holder):
    with pytest.raises(FolderInUseError, match=rf"run: this run folder is in use by process {holder.pid} on .*"
                                               r"wait for that run to end.*The lock is .*run\.lock"):
        with folder_lock(tmp_path / "run"):
            pass
    holder.stdin.close()
    assert holder.wait(10) == 0
    assert not (tmp_path / "run" / "run.lock").exists()  # released and removed
    with folder_lock(tmp_path / "run") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, holder):
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(10)
    assert (tmp_path / "run" / "run.lock").exists()  # a kill leaves the file behind
    with pytest.warns(UserWarning, match=rf"taking over the lock left by process {holder.pid}"):
        with folder_lock(tmp_path / "run") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()


def test_the_same_folder_twice_in_one_process(tmp_path):
    with folder_lock(tmp_path):
        with pytest.raises(FolderInUseError, match=f"process {os.getpid()}"):
            with folder_lock(tmp_path):
                pass
    with folder_lock(tmp_path):  # released
        pass


def test_without_flock_the_pid_decides(tmp_path, holder, monkeypatch):
    monkeypatch.setattr(fileops, "fcntl", None)
    with pytest.raises(FolderInUseError, match=f"process {holder.pid}"):
        with folder_lock(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait(10)
    with pytest.warns(UserWarning, match=f"left by process {holder.pid}"):
        with folder_lock(tmp_path / "run") as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()


def test_write_error_names_path_reason_and_remedy(tmp_path):
    exc = OSError(errno.ENOSPC, "No space left on device")
    err = write_error(tmp_path / "a" / "x.pt", exc, "checkpoint", "IMSUB_RUN_DIR")
    assert isinstance(err, WriteError) and isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(err).startswith(f"[Errno 28] cannot write checkpoint {tmp_path / 'a' / 'x.pt'}: "
                               "No space left on device; ")
    assert ("MB free there now. Nothing was replaced: the previous x.pt (if any) is unchanged. Free disk space, "
            "or write elsewhere: IMSUB_RUN_DIR." in str(err))
    read_only = write_error(tmp_path / "x.pt", OSError(errno.EROFS, "Read-only file system"), "checkpoint", "D")
    assert str(read_only).endswith("is unchanged. Write elsewhere: D.")
    torch_style = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    err = write_error(tmp_path / "x.pt", torch_style, "checkpoint", "")
    assert str(err).startswith(f"cannot write checkpoint {tmp_path / 'x.pt'}: the write failed (unexpected pos "
                               "704 vs 598); ") and err.errno is None


def test_waiting_for_a_live_holder(tmp_path, holder):
    import threading
    import time

    threading.Timer(0.5, holder.stdin.close).start()  # the holder finishes after half a second
    start = time.monotonic()
    with folder_lock(tmp_path / "run", wait_seconds=20) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert 0.4 < time.monotonic() - start < 20
