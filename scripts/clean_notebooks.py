"""Keep the committed notebooks clean: no outputs except the ones nbval checks, no widget state.

    python scripts/clean_notebooks.py notebooks/*.ipynb          # clean in place
    python scripts/clean_notebooks.py --check notebooks/*.ipynb  # exit 1 naming what is not clean

The policy: a code cell keeps its outputs and execution count only when its source starts with
`# NBVAL_CHECK_OUTPUT` (nbval compares those outputs); every other cell is stripped. The
notebook-level `widgets` metadata is removed: JupyterLab saves widget state there, and GitHub
refuses to render a notebook whose `metadata.widgets` lacks `state`. Every cell carries an `id`
(nbformat 4.5 requires one; a cell added by hand without it draws a warning on every run). The pre-commit hook
(.pre-commit-config.yaml) runs the cleaning mode; tests/test_notebook_hygiene.py the check.
"""
from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path

CHECKED = "# NBVAL_CHECK_OUTPUT"


def clean(nb: dict) -> dict:
    """The notebook as it should be committed (a new dict; the input is not changed)."""
    nb = json.loads(json.dumps(nb))
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb.get("cells", []):
        cell.setdefault("id", uuid.uuid4().hex[:8])
        if cell.get("cell_type") != "code":
            continue
        if not "".join(cell.get("source", [])).lstrip().startswith(CHECKED):
            cell["outputs"], cell["execution_count"] = [], None
        cell.get("metadata", {}).pop("execution", None)  # timings JupyterLab may record
    return nb


def problems(nb: dict) -> list[str]:
    """What keeps a notebook from being clean, in words ([] when clean)."""
    found = []
    if "widgets" in nb.get("metadata", {}):
        found.append("widget state in metadata.widgets")
    for i, cell in enumerate(nb.get("cells", [])):
        if "id" not in cell:
            found.append(f"cell {i}: no id")
        if cell.get("cell_type") == "code" and not "".join(cell.get("source", [])).lstrip().startswith(CHECKED):
            if cell.get("outputs") or cell.get("execution_count") is not None:
                found.append(f"cell {i}: outputs or an execution count outside a {CHECKED} cell")
    return found


def main(argv: list[str] | None = None) -> int:
    """Clean (or with --check, only inspect) the given notebooks; 1 when any is not clean."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="change nothing; list what is not clean")
    parser.add_argument("paths", nargs="+", type=Path)
    args = parser.parse_args(argv)
    dirty = 0
    for path in args.paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        found = problems(nb)
        if not found:
            continue
        dirty += 1
        if args.check:
            print(f"{path}: " + "; ".join(found))
        else:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(clean(nb), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            tmp.replace(path)
            print(f"cleaned {path}")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main())
