"""The repository as users meet it: clean notebooks (GitHub renders them), and the Colab/Kaggle first cell
(`pip install -e .` over a preinstalled torch) keeps that torch."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("clean_notebooks", REPO / "scripts" / "clean_notebooks.py")
clean_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(clean_notebooks)
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebooks_are_clean(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert clean_notebooks.problems(nb) == [], f"run: python scripts/clean_notebooks.py {path.relative_to(REPO)}"
    assert "widgets" not in nb["metadata"]


def test_cleaning_keeps_only_the_checked_outputs():
    checked = {"cell_type": "code", "execution_count": 3, "id": "a1", "metadata": {}, "source": ["# NBVAL_CHECK_OUTPUT\n", "1"],
               "outputs": [{"output_type": "stream", "name": "stdout", "text": ["1\n"]}]}
    plain = {**checked, "source": ["print(2)"], "execution_count": 4,
             "metadata": {"execution": {"iopub.status.busy": "2026-01-01"}}}
    del plain["id"]  # a cell added by hand
    nb = {"cells": [checked, plain], "metadata": {"widgets": {"application/vnd.jupyter.widget-state+json": {}}},
          "nbformat": 4, "nbformat_minor": 5}
    found = clean_notebooks.problems(nb)
    assert found == ["widget state in metadata.widgets", "cell 1: no id", "cell 1: outputs or an execution count "
                     "outside a # NBVAL_CHECK_OUTPUT cell"]
    cleaned = clean_notebooks.clean(nb)
    assert clean_notebooks.problems(cleaned) == []
    assert cleaned["cells"][0] == checked  # nbval's expected output stays
    assert cleaned["cells"][1]["outputs"] == [] and cleaned["cells"][1]["execution_count"] is None
    assert cleaned["cells"][1]["metadata"] == {} and "widgets" not in cleaned["metadata"]
    assert cleaned["cells"][1]["id"]  # given one


def test_colab_first_cell_keeps_the_preinstalled_torch(tmp_path):
    """`pip install -e .` where torch is installed (as on Colab and Kaggle) installs no torch or torchvision."""
    report = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "-q", "-e", str(REPO),
                           "--report", str(report)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert not planned & {"torch", "torchvision"}, f"pip would replace the installed torch: {sorted(planned)}"
    assert planned <= {"imagenet-subset-course"}, f"more than the project itself would be installed: {planned}"
    imported = subprocess.run([sys.executable, "-c", "import helpers, torch; print(torch.__version__)"],
                              capture_output=True, text=True, cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr[-2000:]
