"""Loads the fault-injection hooks into every Python process of a run (see scripts/fault_injection.py).

Python imports `sitecustomize` at start-up from sys.path; scripts/fault_injection.py puts this
folder on PYTHONPATH and sets IMSUB_FAULT_DIR, so the runner and each notebook kernel load the
hooks. Without IMSUB_FAULT_DIR nothing happens.
"""
import os
import sys

if os.environ.get("IMSUB_FAULT_DIR"):
    try:
        import imsub_faults

        imsub_faults.install()
    except Exception as exc:  # noqa: BLE001 - never stop a process from starting
        print(f"fault hooks not installed: {type(exc).__name__}: {exc}", file=sys.stderr)
