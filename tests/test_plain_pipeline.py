"""benchmarks/plain_pipeline.py: a finished stage is taken back from OUT instead of trained again."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
from torch import nn

_path = Path(__file__).resolve().parents[1] / "benchmarks" / "plain_pipeline.py"
_spec = importlib.util.spec_from_file_location("plain_pipeline", _path)
plain_pipeline = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(plain_pipeline)


def test_a_finished_stage_is_taken_back_with_its_time(tmp_path):
    trained = []

    def train():
        trained.append(1)
        torch.manual_seed(3)
        return nn.Linear(4, 2)

    times = {}
    first = plain_pipeline._stage(tmp_path, "teacher", times, lambda: nn.Linear(4, 2), train)
    assert trained == [1] and (tmp_path / "teacher.pt").is_file() and not (tmp_path / "teacher.pt.tmp").exists()
    assert json.loads((tmp_path / "stage_seconds.json").read_text()) == {"teacher": times["teacher"]}

    again = {}
    second = plain_pipeline._stage(tmp_path, "teacher", again, lambda: nn.Linear(4, 2), train)
    assert trained == [1], "the finished stage was trained again"
    assert again == times and not second.training
    assert torch.equal(first.weight, second.weight) and torch.equal(first.bias, second.bias)

    # a stage whose time was never written (killed between the weights and the record) trains again
    (tmp_path / "student.pt").write_bytes((tmp_path / "teacher.pt").read_bytes())
    plain_pipeline._stage(tmp_path, "student", {}, lambda: nn.Linear(4, 2), train)
    assert trained == [1, 1]
