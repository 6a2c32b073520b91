"""benchmarks/real_photos.py: skips cleanly without the photos; its table (n/a mIoU, differences to plain)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

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

