"""Fault injection in CI (scripts/fault_injection.py runs the long version): the headless job,
SIGKILLed inside a cache build, a checkpoint write and the submission write, restarted each time,
ends with the submission of an uninterrupted run, no partial file and no orphan kernel; a second
run started on the same folder meanwhile stops at once."""
from __future__ import annotations

import importlib.util
import re
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("psutil")
pytest.importorskip("nbclient")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fault_injection.py"
spec = importlib.util.spec_from_file_location("fault_injection", SCRIPT)
fi = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fi
spec.loader.exec_module(fi)


def test_killed_three_times_the_job_ends_as_if_never_killed(tmp_path, small_demo):
    # On the session's small demo (made before two jobs start at once): the same notebooks, cells and
    # files as on the default demo, in about half the time.
    reference, job = fi.Job(tmp_path / "reference", data_root=small_demo), fi.Job(tmp_path / "killed", data_root=small_demo)
    done = {}
    uninterrupted = threading.Thread(target=lambda: done.update(attempt=reference.attempt()))
    uninterrupted.start()  # alongside: the jobs share nothing but the demo data
    plan = [("cache-build@labeled", "runner", None),
            ("checkpoint-write@classifier_pseudo", "tree", None),
            ("submission-write", "runner", None)]
    result = fi.run_until_done(job, plan, during_first_pause=fi.second_run_refused)
    uninterrupted.join()

    assert done["attempt"].code == 0, done["attempt"].output[-10:]
    assert result["problems"] == []  # exit code 0 at the end, no orphan kernel, the second run stopped
    assert any("a second run on the same folder stopped: exit 3" in n for n in result["notes"]), result["notes"]
    kills = result["kills"]
    landed = [r"\d\d_classifier_baseline: inside cache-build \(labeled\)",  # notebook numbers may change
              r"\d\d_pseudo_labeling: inside checkpoint-write \(classifier_pseudo\S*\)",
              r"\d\d_submission: inside submission-write"]
    assert len(kills) == 3 and all(re.fullmatch(p, k.landed) for p, k in zip(landed, kills)), [k.landed for k in kills]
    assert [k.mode for k in kills] == ["runner", "tree", "runner"]
    assert all(k.kernels_gone < 15 for k in kills)
    assert "labeled cache built again" in kills[0].resumed
    assert re.search(r"removing classifier_pseudo\S*\.tmp", kills[1].resumed), kills[1].resumed
    assert fi.verify(job.out, reference.out) == []  # same submission bytes, nothing left over
