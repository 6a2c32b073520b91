"""Small file-system helpers: process liveness, a folder lock, and clear errors for failed writes."""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: the lock falls back to the pid in the file
    fcntl = None

LOCK_NAME = "run.lock"
_TORCH_PREFIX = re.compile(r"^\[enforce fail at [^]]*\]\s*\.?\s*")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running on this machine (True when it cannot be told)."""
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


class FolderInUseError(RuntimeError):
    """Another process holds the lock of a folder."""


class WriteError(OSError):
    """A file could not be written (disk full, read-only folder, ...); the previous file is unchanged."""


def write_error(path: str | os.PathLike, exc: BaseException, what: str, elsewhere: str) -> WriteError:
    """A WriteError naming `path`, the reason, the free space there, and where else to write (`elsewhere`)."""
    path = Path(path)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    else:  # torch's own writer: "[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"
        reason = f"the write failed ({_TORCH_PREFIX.sub('', str(exc).strip())})"
    code = exc.errno if isinstance(exc, OSError) else None
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), None)
    try:
        free = f"; {shutil.disk_usage(folder).free / 2**20:.0f} MB free there now" if folder else ""
    except OSError:
        free = ""
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        remedy = f"Write elsewhere: {elsewhere}."
    else:
        remedy = f"Free disk space, or write elsewhere: {elsewhere}."
    message = (f"cannot write {what} {path}: {reason}{free}. Nothing was replaced: the previous "
               f"{path.name} (if any) is unchanged. {remedy}")
    return WriteError(code, message) if code is not None else WriteError(message)


class RecordingWriter:
    """Wraps a binary file for torch.save, which reports a failed write only as "unexpected pos":
    `error` keeps the OSError (disk full, ...) so that the caller can report the real reason."""

    def __init__(self, file) -> None:
        self.file, self.error = file, None

    def write(self, data) -> int:
        """Write through, remembering the first OSError."""
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def flush(self) -> None:
        """Flush the wrapped file."""
        self.file.flush()


def _holder(path: Path) -> dict:
    """What a lock file says about its holder ({} if unreadable)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def _in_use(path: Path, what: str, info: dict) -> FolderInUseError:
    since = time.strftime("%H:%M:%S", time.localtime(info["started"])) if "started" in info else "?"
    return FolderInUseError(
        f"{path.parent}: this {what} is in use by process {info.get('pid', '?')} on "
        f"{info.get('host', '?')} (started {since}: {info.get('command', '?')}). Two runs must not share "
        f"one {what}: wait for that run to end, stop it, or choose another folder (--out). "
        f"The lock is {path}.")


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: held by another process; None: this file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def _acquire(path: Path, what: str) -> tuple[int, dict]:
    """Lock `path` once (FolderInUseError if held); returns the fd and what a dead holder wrote there."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644) if fcntl is not None else None
        locked = _try_flock(fd) if fd is not None else None
        if locked is False:
            info = _holder(path)
            os.close(fd)
            raise _in_use(path, what, info)
        if locked is None:
            if fd is not None:
                os.close(fd)
            stale = _holder(path)
            return _acquire_pid_lock(path, what), stale
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd, _holder(path)
        os.close(fd)  # the holder deleted the file between our open and flock: try again


def _acquire_pid_lock(path: Path, what: str) -> int:
    """Create the lock file exclusively; take it over when its process is gone (no flock here)."""
    for _ in range(3):
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            info = _holder(path)
            pid = info.get("pid")
            if info.get("host") == socket.gethostname() and isinstance(pid, int) and pid_alive(pid):
                raise _in_use(path, what, info) from None
            path.unlink(missing_ok=True)  # its process is gone: folder_lock warns that it takes it over
    raise _in_use(path, what, _holder(path))


@contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "run folder", name: str = LOCK_NAME,
                wait_seconds: float = 0.0) -> Iterator[Path]:
    """Hold `folder/name` while the block runs; FolderInUseError if another live process holds it.

    The file records the holder's pid, host, start time and command. With flock (Linux, macOS) the
    operating system releases the lock when its process dies, however it dies, so a stale file
    left by a killed run is simply taken over; elsewhere a file whose process is gone is taken over.
    `wait_seconds`: how long to wait for a live holder before giving up.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fd, stale = _acquire(path, what)
            break
        except FolderInUseError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    if stale.get("pid") not in (None, os.getpid()):
        warnings.warn(f"{path}: taking over the lock left by process {stale['pid']} on {stale.get('host')}, "
                      "which ended without releasing it (an interrupted run)", stacklevel=3)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200]}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)
