"""A full disk or a read-only folder: checkpoint and submission writes fail with the path and the
reason, and leave the previous file as it was (no partial file, no temporary file)."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import helpers.checkpoints as checkpoints
import helpers.submission as submission
from helpers.checkpoints import load_checkpoint, save_checkpoint
from helpers.fileops import WriteError
from helpers.submission import write_submission

BIG = {"w": torch.zeros(1_000_000)}  # 4 MB: more than the small file system below holds


def _entries(test_dir: Path, value: int = 1) -> list:
    return [(p.name, 0, np.full((4, 6), value)) for p in sorted(test_dir.iterdir())]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def test_dir(tmp_path):
    folder = tmp_path / "test"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (6, 4)).save(folder / f"{i:05d}.JPEG")
    return folder


@pytest.fixture
def small_fs(tmp_path):
    """A real 2 MB tmpfs (root only, where mount is allowed): real ENOSPC, and EROFS after a remount."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root and mount for a real small file system")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _read_only(mnt: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)


# ---------------------------------------------------------------------------------- checkpoints
def test_checkpoint_on_a_full_disk(small_fs):
    path = small_fs / "runs" / "classifier_baseline.pt"
    save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()
    with pytest.raises(WriteError, match=rf"cannot write checkpoint {path}: No space left on device; \d+ MB free "
                                         r"there now\. Nothing was replaced: the previous classifier_baseline\.pt .*"
                                         r"Free disk space, or write elsewhere: IMSUB_RUN_DIR") as info:
        save_checkpoint(path, BIG)
    assert info.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))


def test_checkpoint_in_a_read_only_folder(small_fs):
    path = small_fs / "classifier_baseline.pt"
    save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()
    _read_only(small_fs)
    with pytest.raises(WriteError, match=rf"cannot write checkpoint {path}: Read-only file system.*unchanged\. "
                                         r"Write elsewhere: IMSUB_RUN_DIR") as info:
        save_checkpoint(path, {"w": torch.zeros(3)})
    assert info.value.errno == errno.EROFS and path.read_bytes() == before
    with pytest.raises(WriteError, match=r"new/x\.pt: Read-only file system"):  # its folder cannot be made
        save_checkpoint(small_fs / "new" / "x.pt", {"w": torch.zeros(3)})


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file permissions")
def test_checkpoint_in_a_folder_without_write_permission(tmp_path):
    path = tmp_path / "runs" / "classifier_baseline.pt"
    save_checkpoint(path, {"w": torch.ones(3)})
    path.parent.chmod(0o555)
    try:
        with pytest.raises(WriteError, match=rf"cannot write checkpoint {path}: Permission denied"):
            save_checkpoint(path, {"w": torch.zeros(3)})
    finally:
        path.parent.chmod(0o755)
    assert torch.equal(load_checkpoint(path)["w"], torch.ones(3))


def test_checkpoint_disk_full_mid_write_simulated(tmp_path, monkeypatch):
    """Anywhere: the disk fills up after part of the file is written."""
    path = tmp_path / "unet_scratch.pt"
    save_checkpoint(path, {"w": torch.ones(3)})
    before = path.read_bytes()
    real_save = torch.save

    def save_then_fill(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(10)}, f)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", save_then_fill)
    with pytest.raises(WriteError, match=rf"cannot write checkpoint {path}: No space left on device"):
        save_checkpoint(path, {"w": torch.zeros(3)})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == [path.name]


# ---------------------------------------------------------------------------------- submission
def _check_untouched(folder: Path, before: dict[str, bytes]) -> None:
    assert _snapshot(folder) == before
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}")] == []  # .tmp-*, .lock


def test_submission_on_a_full_disk(small_fs, test_dir):
    folder = small_fs / "submission"
    write_submission(folder, _entries(test_dir), test_dir=test_dir, num_classes=3)
    before = _snapshot(folder)
    (small_fs / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_fs).free - 4096))  # one page left
    with pytest.raises(WriteError, match=rf"cannot write the submission {folder}: No space left on device; "
                                         r"0 MB free there now\. Nothing was replaced.*IMSUB_SUBMISSION_DIR") as info:
        write_submission(folder, _entries(test_dir, 2), test_dir=test_dir, num_classes=3)
    assert info.value.errno == errno.ENOSPC
    (small_fs / "filler").unlink()
    _check_untouched(folder, before)


def test_submission_in_a_read_only_folder(small_fs, test_dir):
    folder = small_fs / "submission"
    write_submission(folder, _entries(test_dir), test_dir=test_dir, num_classes=3)
    before = _snapshot(folder)
    _read_only(small_fs)
    with pytest.raises(WriteError, match=rf"cannot write the submission {folder}: Read-only file system"):
        write_submission(folder, _entries(test_dir, 2), test_dir=test_dir, num_classes=3)
    _check_untouched(folder, before)


def test_submission_disk_full_mid_write_simulated(tmp_path, test_dir, monkeypatch):
    folder = tmp_path / "sub"
    write_submission(folder, _entries(test_dir), test_dir=test_dir, num_classes=3)
    before = _snapshot(folder)
    real_write, calls = submission.write_mask, []

    def fill_up(path, ids):
        calls.append(path)  # list.append is atomic: the writer threads count once each
        if len(calls) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, ids)

    monkeypatch.setattr(submission, "write_mask", fill_up)
    with pytest.raises(WriteError, match=rf"cannot write the submission {folder}: No space left on device"):
        write_submission(folder, _entries(test_dir, 2), test_dir=test_dir, num_classes=3)
    _check_untouched(folder, before)


def test_submission_swap_failing_halfway_restores_the_previous_one(tmp_path, test_dir, monkeypatch):
    """The previous folder was moved aside, then moving the new one in fails: the previous comes back."""
    folder = tmp_path / "sub"
    write_submission(folder, _entries(test_dir), test_dir=test_dir, num_classes=3)
    before = _snapshot(folder)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".sub.tmp-"):
            raise OSError(errno.EROFS, "Read-only file system")
        real_rename(src, dst)

    monkeypatch.setattr(submission.os, "rename", rename)
    with pytest.raises(WriteError, match=rf"cannot write the submission {folder}: Read-only file system"):
        write_submission(folder, _entries(test_dir, 2), test_dir=test_dir, num_classes=3)
    monkeypatch.undo()
    _check_untouched(folder, before)
