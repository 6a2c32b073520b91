"""benchmarks/real_photos.py: skips cleanly without the photos; its table (n/a mIoU, differences to plain)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "real_photos.py"
_spec = importlib.util.spec_from_file_location("real_photos", _path)
real_photos = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(real_photos)


def test_without_the_photos_it_says_so_and_exits_0(tmp_path, capsys):
    assert real_photos.main(["--set", "tiny10", "--realdata", str(tmp_path / "none"), "--out", str(tmp_path)]) == 0
    assert "skipped: no real photos" in capsys.readouterr().out
    assert not (tmp_path / "tiny10").exists()


def _result(folder: Path, acc, miou, seconds=60.0, seed=0):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"seed": seed, "threads": 1, "seconds": seconds,
                                                    "test_accuracy": acc, "test_miou": miou}))


def test_the_table_gives_means_differences_and_n_a(tmp_path):
    for seed, (ours, plain) in enumerate([(0.5, 0.4), (0.7, 0.4)]):
        _result(tmp_path / "nette10" / "main" / f"s{seed}", ours, None, seed=seed)
        _result(tmp_path / "nette10" / "plain" / f"s{seed}", plain, None, 30.0, seed=seed)
    found = real_photos.collect(tmp_path, "nette10", ["main", "plain"], [0, 1])
    table = real_photos.report("nette10", found, [0, 1])
    main_row = next(line for line in table.splitlines() if line.startswith("| main"))
    assert "0.500 / 0.700" in main_row and "**0.600**" in main_row and "+0.200" in main_row
    assert "n/a / n/a" in main_row and "**n/a**" in main_row  # no masks in the truth: no mIoU, no 0
    assert "1.0 / 1.0" in main_row


def test_a_finished_run_is_read_back_not_run_again(tmp_path):
    _result(tmp_path / "out" / "tiny10" / "main" / "s0", 0.3, 0.2)
    args = real_photos.argparse.Namespace(out=str(tmp_path / "out"), jobs=1, preset="cpu", threads=0)
    result = real_photos.run_one(tmp_path / "tiny10", "main", {}, 0, args)  # no photos there: it would fail if run
    assert result["test_accuracy"] == 0.3


def test_the_difference_to_plain_uses_only_the_seeds_both_have(tmp_path):
    _result(tmp_path / "t" / "main" / "s0", 0.5, 0.3)
    for seed, acc in enumerate([0.4, 0.1]):  # plain's seed 1 alone would drag its mean down
        _result(tmp_path / "t" / "plain" / f"s{seed}", acc, 0.2, seed=seed)
    table = real_photos.report("t", real_photos.collect(tmp_path, "t", ["main", "plain"], [0, 1]), [0, 1])
    main_row = next(line for line in table.splitlines() if line.startswith("| main"))
    assert "+0.100 (on 1 of 2 seeds)" in main_row and "+0.250" not in main_row



def test_reuse_starts_from_a_copy_of_the_finished_variant(tmp_path, monkeypatch):
    source = tmp_path / "out" / "tiny10" / "main" / "s1"
    _result(source, 0.3, 0.2, seed=1)
    (source / "runs" / "tag" / "cpu").mkdir(parents=True)
    (source / "runs" / "tag" / "cpu" / "classifier_baseline.pt").write_text("weights")
    (source / "cache").mkdir()
    (source / "cache" / "labeled_64.pt").write_text("images")
    seen = {}

    class FakeRun:  # stands in for `python -m helpers run`
        def __init__(self, command, env, stdout, stderr, cwd):
            out = Path(command[command.index("--out") + 1])
            seen["copied"] = (out / "runs" / "tag" / "cpu" / "classifier_baseline.pt").read_text()
            seen["cache"] = env.get("IMSUB_SEED"), (out / "cache" / "labeled_64.pt").is_file()
            (out / "runs" / "tag" / "cpu" / "classifier_baseline.pt").write_text("changed")
            (out / "runs" / "tag" / "cpu" / "summary.json").write_text(
                json.dumps({"test_accuracy": 0.4, "test_miou": 0.25}))

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(real_photos.subprocess, "Popen", FakeRun)
    args = real_photos.argparse.Namespace(out=str(tmp_path / "out"), jobs=1, preset="cpu", threads=1, reuse="main")
    result = real_photos.run_one(tmp_path / "tiny10", "fusion", {}, 1, args)
    assert seen == {"copied": "weights", "cache": ("1", True)}
    assert result["reused"] == "main" and result["test_accuracy"] == 0.4
    assert (source / "runs" / "tag" / "cpu" / "classifier_baseline.pt").read_text() == "weights"  # a copy, not a link
    row = next(line for line in real_photos.report("tiny10", {"fusion": {1: result}}, [1]).splitlines()
               if line.startswith("| fusion"))
    assert "reusing main's runs" in row
    # a seed the reused variant has not finished is refused, naming the folder
    with pytest.raises(SystemExit, match="main/s2 holds no finished run"):
        real_photos.run_one(tmp_path / "tiny10", "fusion", {}, 2, args)


def test_an_interrupted_run_adds_its_earlier_minutes(tmp_path):
    elapsed, log = tmp_path / "elapsed_seconds.txt", tmp_path / "run.log"
    elapsed.write_text("600.0")  # an earlier try, killed with its session
    code, seconds = real_photos.run_timed([real_photos.sys.executable, "-c", "import time; time.sleep(0.3); print('x')"],
                                          {}, log, elapsed, every=0.1)
    assert code == 0 and 600.3 <= seconds < 605
    assert float(elapsed.read_text()) == round(seconds, 1) and log.read_text() == "x\n"
    code, _ = real_photos.run_timed([real_photos.sys.executable, "-c", "raise SystemExit(3)"], {}, log, elapsed)
    assert code == 3 and log.read_text() == "x\n"  # the log is appended to, not overwritten
