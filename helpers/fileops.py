"""Small file-system helpers shared by the writers that swap folders into place."""
from __future__ import annotations

import os


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
